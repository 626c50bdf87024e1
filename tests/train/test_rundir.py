"""Run folders: the run key, skip/resume/refuse, the lock, leftovers, and refusing models that
could not be saved before any training happens."""
import os
import threading
import time

import pytest
import torch
from torch import nn

import distill
from distill.checkpoints import load_checkpoint, load_tensors
from distill.errors import DistillError
from distill.models.classifiers import MLP
from distill.digest import model_signature
from distill.train.rundir import RunDir, run_key
from distill.train.config import TrainConfig, seed_everything
from distill.train.fit import fit
from conftest import quiet




def _model(seed=0):
    seed_everything(seed)
    return MLP(10, [8], 3)


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


@pytest.fixture()
def two_sets(blobs):
    return blobs(200, 10, 3, seed=0), blobs(200, 10, 3, seed=1)


CFG = TrainConfig(epochs=2, lr=0.1, batch_size=50)


def test_run_key_is_canonical_and_signature_is_structure_not_values():
    assert run_key({"a": 1, "b": [1, 2]}) == run_key({"b": [1, 2], "a": 1})
    assert run_key({"a": 1}) != run_key({"a": 2}) and len(run_key({})) == 16
    assert model_signature(_model(0)) == model_signature(_model(1))  # the seed decides the values
    assert model_signature(_model(0)) != model_signature(MLP(10, [9], 3))
    assert model_signature(MLP(10, [8], 3)) != model_signature(MLP(10, [8], 3, dropout_hidden=0.5))  # factory


def test_same_run_dir_with_other_data_is_refused_not_skipped(two_sets, tmp_path):
    a, b = two_sets
    first = fit(_model(), a, CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert not first.skipped and (tmp_path / "run" / "model.safetensors").is_file()
    with pytest.raises(DistillError, match=f"{tmp_path / 'run'} holds a different finished run"):
        fit(_model(), b, CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    # the same data and config again: skipped, the same weights, not retrained
    again = fit(_model(5), a, CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert again.skipped and torch.equal(_weights(again.model), _weights(first.model))


def test_key_placeholder_trains_other_data_into_another_folder(two_sets, tmp_path):
    a, b = two_sets
    logs = []
    ra = fit(_model(), a, CFG, run_dir=tmp_path / "s-{key}", progress=False, log=logs.append)
    rb = fit(_model(), b, CFG, run_dir=tmp_path / "s-{key}", progress=False, log=logs.append)
    assert ra.run_dir != rb.run_dir and not rb.skipped
    key = load_tensors(ra.run_dir / "model")[1]["run_key"]
    assert ra.run_dir.name == f"s-{key}" and "{key}" not in str(rb.run_dir)
    assert not torch.equal(_weights(ra.model), _weights(rb.model))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ra.run_dir.name, rb.run_dir.name])
    # the same run again lands in the same folder and is skipped
    ra2 = fit(_model(), a, CFG, run_dir=tmp_path / "s-{key}", progress=False, log=logs.append)
    assert ra2.skipped and ra2.run_dir == ra.run_dir and any("[skip]" in m for m in logs)
    # everything that decides the result changes the key: config, val set, teacher, objective
    x, y = a
    others = [
        fit(_model(), a, TrainConfig(epochs=2, lr=0.05, batch_size=50), run_dir=tmp_path / "s-{key}",
            progress=False, log=quiet),
        fit(_model(), a, CFG, val=(x[:50], y[:50]), run_dir=tmp_path / "s-{key}", progress=False, log=quiet),
        fit(_model(), a, CFG, teacher=ra.model, run_dir=tmp_path / "s-{key}", progress=False, log=quiet),
        fit(_model(), a, TrainConfig(epochs=2, lr=0.1, batch_size=50, temperature=3.0), teacher=ra.model,
            run_dir=tmp_path / "s-{key}", progress=False, log=quiet),
    ]
    dirs = {r.run_dir for r in others} | {ra.run_dir, rb.run_dir}
    assert len(dirs) == 6 and not any(r.skipped for r in others)


def test_skipped_run_reports_metrics_on_the_test_set_given_now(two_sets, tmp_path):
    a, b = two_sets
    first = fit(_model(), a, CFG, test=a, run_dir=tmp_path / "run", progress=False, log=quiet)
    again = fit(_model(), a, CFG, test=b, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert again.skipped and again.test == distill.evaluate(first.model, b) and first.test != again.test


def test_an_unfinished_run_of_something_else_is_refused(two_sets, tmp_path):
    a, b = two_sets
    m = _model()

    def stop_in_epoch_2(mod, inputs):  # the state of epoch 1 is on disk: stop as a kill would
        if mod.training and (tmp_path / "run" / "state.json").exists():
            raise KeyboardInterrupt

    m.register_forward_pre_hook(stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(m, a, CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    with pytest.raises(DistillError, match="holds an unfinished different run"):
        fit(_model(), b, CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    res = fit(_model(), a, CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert res.resumed_from == 1


# ---------------------------------------------------------------- the lock and leftovers

def test_a_held_run_folder_is_refused_naming_folder_and_pid(tmp_path):
    path = tmp_path / "run"
    with RunDir(path, "k1"):
        assert f"{os.getpid()}@" in (path / ".lock").read_text()
        with pytest.raises(DistillError, match=f"{path} is in use by process {os.getpid()}@"):
            with RunDir(path, "k1"):
                pass
        with pytest.raises(DistillError, match="in use"):  # fit itself, too
            fit(_model(), (torch.rand(20, 10), torch.arange(20) % 3), CFG, run_dir=path, progress=False, log=quiet)
    with RunDir(path, "k1") as second:  # released on exit
        assert second.path == path
    assert (path / ".lock").read_text() == ""  # nobody holds it now


def test_wait_takes_the_folder_when_the_holder_leaves(tmp_path):
    path = tmp_path / "run"
    first = RunDir(path, "k").__enter__()
    logs = []
    threading.Timer(0.3, first.__exit__, (None, None, None)).start()
    t0 = time.monotonic()
    with RunDir(path, "k", wait=True, log=logs.append):
        waited = time.monotonic() - t0
    assert waited >= 0.25 and len(logs) == 1 and "waiting" in logs[0] and str(os.getpid()) in logs[0]


def test_leftover_temporaries_are_removed_on_entry(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "state.safetensors.abc123.distill.tmp").write_bytes(b"half a file")
    (path / "model.json.x.distill.tmp").write_text("{")
    (path / "notes.tmp").write_text("the user's own")
    (path / "notes.txt").write_text("mine")
    with RunDir(path, "k"):
        assert not list(path.glob("*.distill.tmp")) and (path / "notes.txt").read_text() == "mine"
        assert (path / "notes.tmp").read_text() == "the user's own"
    (tmp_path / "afile").write_text("")
    with pytest.raises(DistillError, match="is a file, not a folder"):
        RunDir(tmp_path / "afile", "k").__enter__()


# ---------------------------------------------------------------- models that could not be saved

class Overlapping(nn.Module):
    """A weight that is a part of another one (not the same tensor, as tied weights are):
    safetensors refuses memory shared that way."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 10)
        self.b = nn.Linear(10, 3)
        self.c = nn.Linear(10, 5)
        self.c.weight = nn.Parameter(self.a.weight.data[:5])

    def forward(self, x):
        return self.b(torch.cat([self.c(torch.relu(self.a(x))), x[:, :5]], 1))


class Tied(nn.Module):
    """Two layers sharing one weight tensor (as a language model's output layer and its token
    embedding do): saved once, tied again when loaded."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 10)
        self.b = nn.Linear(10, 3)
        self.c = nn.Linear(10, 10)
        self.c.weight = self.a.weight

    def forward(self, x):
        return self.b(self.c(torch.relu(self.a(x))))


def test_tied_weights_are_saved_once_and_tied_again(tmp_path):
    torch.manual_seed(0)
    res = fit(Tied(), (torch.rand(40, 10), torch.arange(40) % 3), CFG, run_dir=tmp_path / "run", progress=False,
              log=quiet)
    fresh = Tied()
    loaded, _ = load_checkpoint(tmp_path / "run" / "model", model=fresh)
    assert loaded.c.weight is loaded.a.weight
    torch.testing.assert_close(loaded.a.weight, res.model.a.weight)
    x = torch.rand(4, 10)
    torch.testing.assert_close(loaded(x), res.model(x))


@pytest.mark.parametrize("make, factory, msg", [
    (lambda: _model(), ("distill.models:MLP", {"in_features": 10, "hidden": [8], "num_classes": 3,
                                              "init": torch.zeros(1)}), "must be JSON"),
    (lambda: _model(), "no_such_package.models:MLP", "cannot import the model factory"),
    (lambda: _model(), "distill.models:NoSuchThing", "cannot import the model factory"),
    (lambda: _model(), "distill.models.classifiers.MLP", "'package.module:callable'"),
    (lambda: _model(), ("distill.models:MLP", [10, [8], 3]), "must be a dict"),
    (Overlapping, None, "cannot be checkpointed as safetensors"),
])
def test_a_model_that_cannot_be_checkpointed_is_refused_before_epoch_1(tmp_path, make, factory, msg):
    m = make()
    steps = []
    m.register_forward_pre_hook(lambda mod, i: steps.append(1) if mod.training else None)
    with pytest.raises(DistillError, match=msg):
        fit(m, (torch.rand(40, 10), torch.arange(40) % 3), CFG, run_dir=tmp_path / "run", factory=factory,
            progress=False, log=quiet)
    assert steps == []  # not one training batch ran
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*.safetensors"))


# ---------------------------------------------------------------- identity of the data and the model

def _loader_of(x, y, shuffle=False):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle)


def test_a_loader_with_other_labels_after_its_first_batch_is_not_skipped(two_sets, tmp_path):
    (x, y), _ = two_sets
    fit(_model(), _loader_of(x, y), CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    y2 = y.clone()
    y2[16:] = 0  # the first batch is the same
    with pytest.raises(DistillError, match="holds a different finished run"):
        fit(_model(), _loader_of(x, y2), CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    r = fit(_model(), _loader_of(x, y2), CFG, run_dir=tmp_path / "r-{key}", progress=False, log=quiet)
    assert not r.skipped


def test_a_shuffled_loader_without_a_seed_reruns_as_the_same_run(two_sets, tmp_path):
    (x, y), _ = two_sets
    first = fit(_model(), _loader_of(x, y, shuffle=True), CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    torch.manual_seed(12345)  # another global RNG state: another shuffle order
    again = fit(_model(), _loader_of(x, y, shuffle=True), CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert again.skipped and torch.equal(_weights(again.model), _weights(first.model))


def test_an_array_dataset_with_one_row_changed_is_another_run_and_another_store(two_sets, tmp_path):
    import numpy as np

    from distill.data.sources import ArrayDataset

    (x, y), _ = two_sets
    xs, ys = x.numpy().copy(), y.numpy().copy()
    np.save(tmp_path / "x.npy", xs)
    np.save(tmp_path / "y.npy", ys)
    torch.manual_seed(0)
    teacher = distill.Teacher(MLP(10, [6], 3), store=tmp_path / "store")
    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=50, temperature=2.0)
    a = fit(_model(), ArrayDataset(tmp_path / "x.npy", tmp_path / "y.npy"), cfg, teacher=teacher,
            run_dir=tmp_path / "r-{key}", progress=False, log=quiet)
    xs[101, 3] += 0.5  # a row that no sample of a few hundred would have to include
    np.save(tmp_path / "x.npy", xs)
    teacher = distill.Teacher(teacher.module, store=tmp_path / "store")
    b = fit(_model(), ArrayDataset(tmp_path / "x.npy", tmp_path / "y.npy"), cfg, teacher=teacher,
            run_dir=tmp_path / "r-{key}", progress=False, log=quiet)
    assert not b.skipped and b.run_dir != a.run_dir
    from distill.teachers.store import SoftTargetStore

    stores = sorted(p for p in (tmp_path / "store").iterdir() if p.is_dir())
    assert len(stores) == 2  # the teacher's outputs were computed again for the changed data
    with torch.no_grad():
        want = teacher.module(torch.from_numpy(xs[101:102]))
    rows = [SoftTargetStore.open(p)[torch.tensor([101])] for p in stores]
    assert sum(torch.allclose(r, want, atol=1e-5) for r in rows) == 1  # one store holds the new row's own outputs


class _Jittered(torch.utils.data.Dataset):
    """Examples with fresh noise on every read, as a random transform in __getitem__ gives."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.01 * torch.randn(self.x.shape[1]), int(self.y[i])


def test_data_that_change_between_passes_need_a_data_id_for_a_run_folder(two_sets, tmp_path):
    (x, y), _ = two_sets
    with pytest.raises(DistillError, match=r"other examples in epoch 1 .* pass data_id="):
        fit(_model(), _Jittered(x, y), CFG, run_dir=tmp_path / "run", progress=False, log=quiet)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    fit(_model(), _Jittered(x, y), CFG, progress=False, log=quiet)  # without a run folder nothing is keyed
    a = fit(_model(), _Jittered(x, y), CFG, run_dir=tmp_path / "named", data_id="blobs-v1", progress=False, log=quiet)
    b = fit(_model(), _Jittered(x, y), CFG, run_dir=tmp_path / "named", data_id="blobs-v1", progress=False, log=quiet)
    assert b.skipped and not a.skipped
    with pytest.raises(ValueError, match="data_id must be a non-empty string"):
        fit(_model(), (x, y), CFG, data_id="", progress=False, log=quiet)


def test_the_run_key_covers_factory_arguments_and_the_module_tree(two_sets, tmp_path):
    (x, y), _ = two_sets

    def net(act):
        seed_everything(0)
        return nn.Sequential(nn.Linear(10, 8), act(), nn.Linear(8, 3))

    a = fit(net(nn.ReLU), (x, y), CFG, run_dir=tmp_path / "r-{key}", progress=False, log=quiet)
    b = fit(net(nn.Tanh), (x, y), CFG, run_dir=tmp_path / "r-{key}", progress=False, log=quiet)
    assert b.run_dir != a.run_dir and not b.skipped  # same parameter shapes, another activation
    sig = [model_signature(net(nn.ReLU), ("pkg.mod:make", {"act": act})) for act in ("relu", "gelu")]
    assert sig[0] != sig[1]
