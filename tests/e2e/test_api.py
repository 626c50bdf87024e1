"""The public API end to end: what a user hands ``distill.fit`` (NumPy, Datasets, DataLoaders,
streams, unlabeled sets, their own modules) and what comes back (checkpoints they can reload)."""
import importlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import distill
from distill.metrics import evaluate, predict_logits
from distill.train.config import seed_everything
from conftest import quiet




# ---------------------------------------------------------------- a user's own model (not from distill)

class TinyNet(nn.Module):
    """A model distill knows nothing about: tanh hidden layer, and a buffer."""

    def __init__(self, d_in: int = 10, width: int = 16, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.Tanh())
        self.head = nn.Linear(width, classes)
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x):
        return self.head(self.body(x * self.scale))


def make_net(d_in: int = 10, width: int = 16, classes: int = 3) -> TinyNet:
    """The factory a checkpoint records, by import path (this module's name under pytest)."""
    return TinyNet(d_in, width, classes)


FACTORY = f"{__name__}:make_net"


def _net(seed=0, **kw):
    seed_everything(seed)
    return make_net(**kw)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values()])


@pytest.fixture()
def data(blobs):
    """Separable blobs: 300 training, 150 test examples of 3 classes in 10 dimensions."""
    x, y = blobs(450, 10, 3, seed=0)
    return (x[:300], y[:300]), (x[300:], y[300:])


CFG = distill.TrainConfig(epochs=4, lr=0.1, batch_size=32, seed=1)


# ---------------------------------------------------------------- the package surface

def test_all_lists_the_public_names_and_each_is_importable():
    names = distill.__all__
    assert len(names) == len(set(names))
    for name in ("fit", "TrainConfig", "FitResult", "TrainingDiverged", "HardLabels", "Distillation",
                 "LogitMatching", "Teacher", "Ensemble", "as_source", "evaluate", "predict_logits", "get_store",
                 "SoftTargetStore", "save_checkpoint", "load_checkpoint", "DistillError"):
        assert name in names
    for name in names:
        assert getattr(distill, name) is not None
        ns = {}
        exec(f"from distill import {name} as obj", ns)  # the spelling users write
        assert ns["obj"] is getattr(importlib.import_module("distill"), name)
    assert distill.fit is importlib.import_module("distill.train.fit").fit
    assert distill.Teacher is importlib.import_module("distill.teachers.teacher").Teacher
    assert issubclass(distill.TrainingDiverged, distill.DistillError)
    # the old API is gone
    assert not hasattr(distill.FitResult(nn.Linear(1, 2)), "metrics")
    assert "loss" not in {f for f in distill.TrainConfig.__dataclass_fields__}


# ---------------------------------------------------------------- inputs coerced like scikit-learn

def test_numpy_float64_and_int32_inputs_train_like_float32_int64_tensors(data):
    (x, y), (xt, yt) = data
    a = distill.fit(_net(), (x, y), CFG, test=(xt, yt), progress=False, log=quiet)
    b = distill.fit(_net(), (x.double().numpy(), y.int().numpy()), CFG,
                    test={"x": xt.numpy().astype(np.float64), "y": yt.numpy().astype(np.int32)},
                    progress=False, log=quiet)
    c = distill.fit(_net(), (x.double(), y.int()), CFG, test=(xt, yt), progress=False, log=quiet)
    assert torch.equal(_weights(a.model), _weights(b.model)) and torch.equal(_weights(a.model), _weights(c.model))
    assert a.test == b.test and a.test["accuracy"] > 0.95
    src = distill.as_source((x.double().numpy(), y.numpy().astype(np.uint8)))
    assert src.x.dtype == torch.float32 and src.y.dtype == torch.int64 and torch.equal(src.y, y)


@pytest.mark.parametrize("bad, msg", [
    (lambda x, y: (x, y.float()), "integer class labels, got dtype torch.float32"),
    (lambda x, y: (x.numpy(), y.numpy().astype(np.float64)), "integer class labels, got dtype float64"),
    (lambda x, y: (torch.where(torch.arange(len(x))[:, None] == 5, float("nan"), x), y), "NaN or infinity"),
    (lambda x, y: (np.array([["a"] * 10] * len(x)), y), "must hold numbers"),
    (lambda x, y: (x, np.array(["cat"] * len(y))), "integer class labels"),
    (lambda x, y: (x, y[:-1]), "299 labels for 300 examples"),
    (lambda x, y: (x, -y), "negative labels"),
    (lambda x, y: (x[:0], y[:0]), "no examples"),
    (lambda x, y: "data.csv", "cannot use a str as data"),
])
def test_bad_inputs_are_value_errors_that_say_what(data, bad, msg):
    (x, y), _ = data
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        distill.fit(_net(), bad(x, y), CFG, progress=False, log=quiet)


# ---------------------------------------------------------------- datasets, loaders, streams

class Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        for i in range(len(self.x)):
            yield self.x[i], self.y[i]


class Unlabeled(Dataset):
    """A map-style dataset of inputs only: items ``(x,)``."""

    def __init__(self, x, bare=False):
        self.x, self.bare = x, bare

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] if self.bare else (self.x[i],)


def test_tensor_dataset_trains_exactly_like_the_tensors(data):
    (x, y), test = data
    # dropout too: the Dataset path must not draw from torch's RNG where the tensor path does not
    a = distill.fit(nn.Sequential(_net(), nn.Dropout(0.2)), (x, y), CFG, test=test, progress=False, log=quiet)
    b = distill.fit(nn.Sequential(_net(), nn.Dropout(0.2)), TensorDataset(x, y), CFG, test=TensorDataset(*test),
                    progress=False, log=quiet)
    assert torch.equal(_weights(a.model), _weights(b.model))
    assert a.test == b.test and a.test["accuracy"] > 0.95
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_dataloader_and_iterable_dataset_train(data):
    (x, y), test = data
    loader = DataLoader(TensorDataset(x, y), batch_size=25, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = []
    m = _net()
    m.register_forward_hook(lambda mod, i, o: seen.append(len(i[0])) if mod.training else None)
    res = distill.fit(m, loader, CFG, test=test, progress=False, log=quiet)
    assert res.test["accuracy"] > 0.95 and seen == [25] * 12 * CFG.epochs  # the loader's own batch size
    res = distill.fit(_net(), Stream(x, y), CFG, test=test, progress=False, log=quiet)
    assert res.test["accuracy"] > 0.95 and len(res.history) == CFG.epochs
    # a teacher with a stream: no indices, so it runs on every batch
    calls = []
    res.model.register_forward_hook(lambda mod, i, o: calls.append(len(i[0])))
    st = distill.fit(_net(2), Stream(x, y), distill.TrainConfig(epochs=2, batch_size=50, temperature=2.0),
                     teacher=res.model, test=test, progress=False, log=quiet)
    # every training batch, and once over the test split (the records' agreement with the teacher)
    assert calls == [50] * 6 + [len(test[0])] + [50] * 6 and st.test["accuracy"] > 0.9


def test_unlabeled_dataset_with_a_teacher_and_no_hard_term(data):
    (x, y), test = data
    teacher = distill.fit(_net(), (x, y), CFG, progress=False, log=quiet).model
    cfg = distill.TrainConfig(epochs=5, lr=0.1, batch_size=32, temperature=2.0, hard_weight=0.0)
    for unlabeled in (Unlabeled(x), Unlabeled(x, bare=True)):
        res = distill.fit(_net(3), unlabeled, cfg, teacher=teacher, test=test, progress=False, log=quiet)
        agree = (predict_logits(res.model, test[0]).argmax(1) == predict_logits(teacher, test[0]).argmax(1))
        assert res.test["accuracy"] > 0.95 and agree.float().mean() > 0.95
    with pytest.raises(ValueError, match="no labels: use a teacher with hard_weight=0"):
        distill.fit(_net(3), Unlabeled(x), distill.TrainConfig(epochs=1, hard_weight=0.1), teacher=teacher,
                    progress=False, log=quiet)
    with pytest.raises(ValueError, match="no labels"):
        distill.fit(_net(3), x, distill.TrainConfig(epochs=1), progress=False, log=quiet)  # hard labels, no labels
    with pytest.raises(ValueError, match="val needs labels"):
        distill.fit(_net(3), (x, y), CFG, val=Unlabeled(x), progress=False, log=quiet)


# ---------------------------------------------------------------- the model probe

def test_a_model_that_cannot_take_the_inputs_is_refused_before_training():
    x, y = torch.rand(64, 784), torch.arange(64) % 10
    from distill.models.classifiers import MLP

    m = MLP(100, [8], 10)
    calls = []
    m.register_forward_pre_hook(lambda mod, i: calls.append(1) if mod.training else None)
    with pytest.raises(ValueError, match=r"cannot take the training inputs of shape \(784,\)"):
        distill.fit(m, (x, y), distill.TrainConfig(epochs=1), progress=False, log=quiet)
    assert calls == []
    with pytest.raises(ValueError, match="labels go up to 9 but the model predicts 3 classes"):
        distill.fit(MLP(784, [8], 3), (x, y), distill.TrainConfig(epochs=1), progress=False, log=quiet)

    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(784, 1)

        def forward(self, x):
            return self.w(x).squeeze(1)

    with pytest.raises(ValueError, match=r"class logits of shape \(batch, classes\); it returned \(2,\)"):
        distill.fit(Scalar(), (x, y), distill.TrainConfig(epochs=1), progress=False, log=quiet)
    with pytest.raises(ValueError, match="must be a torch.nn.Module"):
        distill.fit(lambda x: x, (x, y), progress=False, log=quiet)


# ---------------------------------------------------------------- a user's model, checkpointed

def test_users_model_with_a_factory_reloads_from_the_checkpoint_alone(data, tmp_path):
    train, test = data
    res = distill.fit(_net(width=12), train, CFG, test=test, run_dir=tmp_path / "run",
                      factory=(FACTORY, dict(d_in=10, width=12, classes=3)), progress=False, log=quiet)
    with pytest.raises(distill.DistillError, match=r"names code outside distill .*nothing was imported.*trust_factory=True"):
        distill.load_checkpoint(tmp_path / "run" / "model")  # the user's own code runs only when trusted
    model, side = distill.load_checkpoint(tmp_path / "run" / "model", trust_factory=True)
    assert type(model).__name__ == "TinyNet" and model.head.in_features == 12 and not model.training
    assert side["factory"] == {"target": FACTORY, "kwargs": {"d_in": 10, "width": 12, "classes": 3}}
    assert side["num_classes"] == 3 and side["input_shape"] == [10] and side["test"] == res.test
    assert torch.equal(predict_logits(model, test[0]), predict_logits(res.model, test[0]))
    assert evaluate(model, test) == res.test
    # the factory without arguments (its defaults)
    r2 = distill.fit(_net(), train, CFG, run_dir=tmp_path / "run2", factory=FACTORY, progress=False, log=quiet)
    again, _ = distill.load_checkpoint(tmp_path / "run2" / "model", trust_factory=True)
    assert torch.equal(predict_logits(again, test[0]), predict_logits(r2.model, test[0]))


def test_users_model_without_a_factory_reloads_into_a_model_they_build(data, tmp_path):
    train, test = data
    res = distill.fit(_net(), train, CFG, test=test, run_dir=tmp_path / "run", progress=False, log=quiet)
    with pytest.raises(distill.DistillError, match=r"records no model factory; .*load_checkpoint\(path, model="):
        distill.load_checkpoint(tmp_path / "run" / "model")
    fresh = _net(seed=123)
    assert not torch.equal(_weights(fresh), _weights(res.model))
    model, side = distill.load_checkpoint(tmp_path / "run" / "model", model=fresh)
    assert model is fresh and side["factory"] is None
    assert torch.equal(predict_logits(model, test[0]), predict_logits(res.model, test[0]))
    with pytest.raises(distill.DistillError, match="do not fit this model"):
        distill.load_checkpoint(tmp_path / "run" / "model", model=make_net(width=8))
    # save_checkpoint / load_checkpoint directly, with a factory attached to the model itself
    m = _net(4)
    m.distill_factory = (FACTORY, dict(d_in=10, width=16, classes=3))
    distill.save_checkpoint(tmp_path / "direct", m, {"note": "mine"})
    back, side = distill.load_checkpoint(tmp_path / "direct.safetensors", trust_factory=True)
    assert side["note"] == "mine" and torch.equal(_weights(back), _weights(m))


def test_a_factory_that_fails_or_does_not_import_is_a_distill_error(tmp_path):
    m = _net()
    distill.save_checkpoint(tmp_path / "ck", m, factory=(FACTORY, {"width": 16}))
    side_path = tmp_path / "ck"
    model, _ = distill.load_checkpoint(side_path, trust_factory=True)
    assert torch.equal(_weights(model), _weights(m))
    with pytest.raises(distill.DistillError, match="cannot import the model factory"):
        distill.save_checkpoint(tmp_path / "x", m, factory="no_such_module_xyz:make")
    distill.save_checkpoint(tmp_path / "bad", m, factory=(FACTORY, {"width": -1}))
    with pytest.raises(distill.DistillError, match=f"the factory {FACTORY} failed"):
        distill.load_checkpoint(tmp_path / "bad", trust_factory=True)
