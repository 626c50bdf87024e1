"""Feature distillation inside fit (distill.train.features): hooks that capture and leave no
trace, projectors made from a probe batch, trained, saved in the run state and resumed, never in
the saved student; the teacher run on every batch in eval mode under no_grad; the loss of a step
written out by hand; bf16; and a two-process DDP run that ends where one process does."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from distill import distributed
from distill.checkpoints import load_checkpoint, load_tensors
from distill.errors import DistillError
from distill.losses import Distillation, FeatureDistillation, HardLabels, attention_transfer_loss, hint_loss, \
    relational_loss
from distill.models.classifiers import ResNet
from distill.train.config import TrainConfig, seed_everything
from distill.train.features import FeatureTaps, Resize, feature_of, make_projector
from distill.train.fit import fit
from distill.train.setup import make_plan
from conftest import leave_group_and_exit, quiet


class Net(nn.Module):
    """A tiny CNN over 8x8 grey images: ``body`` (conv, ReLU, conv, ReLU), mean pooling, ``head``."""

    def __init__(self, width=4, stride=1, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=stride, padding=1), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.body(x.view(-1, 1, 8, 8)).mean((2, 3)))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(3, 64, generator=g) > 0.5).float()
    y = torch.arange(n) % 3
    return (templates[y] + 0.3 * torch.randn(n, 64, generator=g)).clamp(0, 1), y


def _nets(student_width=4, teacher_width=8, teacher_stride=1, seed=0):
    seed_everything(seed + 100)
    teacher = Net(teacher_width, teacher_stride)
    seed_everything(seed)
    return Net(student_width), teacher


def _hooks(*models):
    return [(type(m).__name__, len(m._forward_hooks)) for model in models for m in model.modules()
            if m._forward_hooks]


def _weights(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


PAIRS = [("body.3", "body.3", "hint", 1.0)]


# ---------------------------------------------------------------- the parts

def test_taps_capture_outputs_and_leave_no_hooks():
    student, _ = _nets()
    x = _data(4)[0]
    with FeatureTaps(student, ["body.1", "body", "body.1"]) as taps:
        assert taps.paths == ["body.1", "body"] and len(_hooks(student)) == 2
        student(x)
        assert torch.equal(taps["body.1"], torch.relu(student.body[0](x.view(-1, 1, 8, 8))))
        assert taps["body"].shape == (4, 4, 8, 8)
    assert _hooks(student) == [] and taps.outputs == {}
    with pytest.raises(RuntimeError):
        with FeatureTaps(student, ["head"]):
            assert len(_hooks(student)) == 1
            raise RuntimeError("boom")
    assert _hooks(student) == []
    # tuples, mappings and .last_hidden_state-like outputs give their tensor
    t = torch.ones(2)
    assert feature_of((t, "state")) is t and feature_of({"last_hidden_state": t, "x": 1}) is t
    assert feature_of(type("Out", (), {"last_hidden_state": t})()) is t
    with pytest.raises(DistillError, match="without a tensor"):
        feature_of(("a", 1))


def test_a_bad_path_is_one_line_naming_the_nearest_modules():
    student, _ = _nets()
    with pytest.raises(DistillError) as e:
        FeatureTaps(student, ["body.9"])
    msg = str(e.value)
    assert "\n" not in msg and "'body.9'" in msg and "'body.0'" in msg and "nearest" in msg
    with pytest.raises(DistillError, match="top-level modules are: 'body', 'head'"):
        FeatureTaps(student, ["zzzzzz"])
    # in fit: the teacher's path, before anything trains, and no hook stays behind
    student, teacher = _nets()
    with pytest.raises(DistillError) as e:
        fit(student, _data(), TrainConfig(epochs=1, objective=FeatureDistillation(
            HardLabels(), [("body.3", "bdy.3", "hint", 1.0)])), teacher=teacher, progress=False, log=quiet)
    assert "\n" not in str(e.value) and "the teacher" in str(e.value) and "'body.3'" in str(e.value)
    assert _hooks(student, teacher) == []


def test_projectors_by_shape():
    assert make_projector((2, 5), (2, 5)) is None
    lin = make_projector((2, 5), (2, 7))
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (5, 7)
    assert isinstance(make_projector((2, 3, 5), (2, 3, 7)), nn.Linear)  # sequences: the last axis
    conv = make_projector((2, 4, 8, 8), (2, 6, 8, 8))
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.out_channels == 6
    assert conv.size is None and set(conv.state_dict()) == {"weight", "bias"}
    down = make_projector((2, 4, 8, 8), (2, 4, 4, 4))  # same channels, other size: still learned
    assert isinstance(down, nn.Conv2d) and down.size == (4, 4)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(down(x), F.conv2d(F.avg_pool2d(x, 2), down.weight, down.bias), atol=1e-6)
    up = make_projector((2, 4, 4, 4), (2, 6, 8, 8))
    x = torch.randn(2, 4, 4, 4)
    want = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(up(x), F.conv2d(want, up.weight, up.bias), atol=1e-5)  # order: only the cost
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(Resize((4, 4))(x), F.avg_pool2d(x, 2))
    assert torch.allclose(Resize((16, 16))(x), F.interpolate(x, size=(16, 16), mode="bilinear",
                                                             align_corners=False))
    # attention transfer: a resize only, no parameters
    assert make_projector((2, 4, 8, 8), (2, 6, 8, 8), learned=False) is None
    assert isinstance(make_projector((2, 4, 8, 8), (2, 6, 4, 4), learned=False), Resize)
    with pytest.raises(ValueError, match="cannot project"):
        make_projector((2, 4, 8, 8), (2, 16))


def test_the_plan_makes_projectors_where_shapes_differ(tmp_path):
    student, teacher = _nets(teacher_stride=2)  # the teacher's map: 8 channels at 4x4
    obj = FeatureDistillation(Distillation(2.0), [("body.3", "body.3", "hint", 1.0), ("body.1", "body.1", "hint", 1.0),
                                                  ("body.3", "body.3", "attention", 1.0),
                                                  ("body.3", "body.3", "relational", 1.0)])
    plan = make_plan(student, _data(), TrainConfig(epochs=1, objective=obj), teacher=teacher,
                     run_dir=tmp_path / "r")
    hint, same_size, att, rel = plan.features.projectors
    assert isinstance(hint, nn.Conv2d) and hint.out_channels == 8 and hint.size == (4, 4)
    assert isinstance(same_size, nn.Conv2d) and same_size.out_channels == 8 and same_size.size is None
    assert isinstance(att, Resize) and isinstance(rel, nn.Identity)
    assert _hooks(student, teacher) == []  # the probe's hooks are gone
    # projectors start from config.seed, whatever the global RNG holds; the key covers the pairing
    torch.manual_seed(123)
    again = make_plan(student, _data(), TrainConfig(epochs=1, objective=obj), teacher=teacher,
                      run_dir=tmp_path / "r")
    assert torch.equal(hint.weight, again.features.projectors[0].weight) and again.key == plan.key
    other = FeatureDistillation(Distillation(2.0), [("body.3", "body.3", "hint", 2.0)])
    assert make_plan(student, _data(), TrainConfig(epochs=1, objective=other), teacher=teacher,
                     run_dir=tmp_path / "r").key != plan.key
    # shapes that cannot be projected, or that a loss cannot take, fail before training, naming the pair
    with pytest.raises(ValueError, match=r"^the feature pair \('head', 'body.1', 'hint'\): cannot project"):
        make_plan(student, _data(), TrainConfig(epochs=1, objective=FeatureDistillation(
            HardLabels(), [("body.3", "body.1", "relational", 1.0), ("body.3", "body.1", "hint", 1.0),
                           ("head", "body.1", "hint", 1.0)])), teacher=teacher)
    with pytest.raises(ValueError, match=r"^the feature pair \('head', 'head', 'attention'\): .*positions"):
        make_plan(student, _data(), TrainConfig(epochs=1, objective=FeatureDistillation(
            HardLabels(), [("head", "head", "attention", 1.0)])), teacher=teacher)
    with pytest.raises(ValueError, match="teacher as a module"):
        make_plan(student, _data(), TrainConfig(epochs=1, objective=obj), teacher=torch.zeros(96, 3))


# ---------------------------------------------------------------- fit

def test_fit_lowers_the_hint_loss_and_the_teacher_runs_every_batch_in_eval_without_grad():
    student, teacher = _nets(student_width=8)
    x, y = _data()

    def hint_now():
        with torch.no_grad(), FeatureTaps(student, ["body.3"]) as s, FeatureTaps(teacher, ["body.3"]) as t:
            student(x), teacher(x)
            return float(hint_loss(s["body.3"], t["body.3"]))

    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled(), len(i[0]))))
    before = hint_now()
    seen.clear()
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, objective=FeatureDistillation(HardLabels(), [
        ("body.3", "body.3", "hint", 50.0)]))
    res = fit(student, (x, y), cfg, teacher=teacher, progress=False, log=quiet)
    # the probe's 2 examples, then every batch of every epoch: no stored logits
    assert [n for *_, n in seen] == [2] + [16] * 6 * 4
    assert all(not training and not grad for training, grad, _ in seen)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher._forward_hooks.clear()
    after = hint_now()
    assert after < 0.5 * before, (before, after)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert _hooks(student, teacher) == []


def test_the_step_loss_is_the_objective_plus_the_weighted_feature_losses_by_hand():
    student, teacher = _nets(student_width=4, teacher_width=6)
    x, y = _data(48)
    obj = FeatureDistillation(Distillation(3.0, 0.2), [("body.1", "body.1", "attention", 40.0),
                                                       ("body", "body", "relational", 0.5),
                                                       ("body.3", "body.3", "hint", 2.0)])
    plan = make_plan(student, (x, y), TrainConfig(epochs=1, objective=obj), teacher=teacher)
    proj = plan.features.projectors[2]  # 4 -> 6 channels: a 1x1 convolution from config.seed
    assert isinstance(proj, nn.Conv2d)
    with torch.no_grad():
        img = x.view(-1, 1, 8, 8)
        s1, t1 = torch.relu(student.body[0](img)), torch.relu(teacher.body[0](img))
        s3, t3 = student.body(img), teacher.body(img)
        z, v = student(x), teacher(x)
        t = 3.0
        kd = t * t * -(torch.softmax(v / t, 1) * torch.log_softmax(z / t, 1)).sum(1).mean()
        want = (kd + 0.2 * F.cross_entropy(z, y) + 40.0 * attention_transfer_loss(s1, t1)
                + 0.5 * relational_loss(s3, t3) + 2.0 * ((F.conv2d(s3, proj.weight, proj.bias) - t3) ** 2).mean())
    # one step over the whole set (the losses are means, order-free): its loss, before the update
    res = fit(student, (x, y), TrainConfig(epochs=1, batch_size=48, objective=obj), teacher=teacher,
              progress=False, log=quiet)
    assert res.history[0]["train_loss"] == pytest.approx(float(want), rel=1e-5)


class Interrupt(Exception):
    pass


def _bomb(at, check=None):
    calls = {"n": 0}

    def bomb(module, inputs):
        if module.training:
            calls["n"] += 1
            if check is not None:
                check()
            if calls["n"] == at:
                raise Interrupt
    return bomb


def test_resume_restores_the_projectors_and_ends_as_the_uninterrupted_run(tmp_path):
    x, y = _data()
    obj = FeatureDistillation(Distillation(2.0), [("body.3", "body.3", "hint", 5.0)])  # 4 -> 8 channels: a projector
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=0.01, objective=obj)
    student, teacher = _nets()
    full = fit(student, (x, y), cfg, teacher=teacher, run_dir=tmp_path / "a", progress=False, log=quiet)

    student, teacher = _nets()
    installed = []
    h = student.register_forward_pre_hook(_bomb(3 * 2 + 2, check=lambda: installed.append(_hooks(student, teacher))))
    with pytest.raises(Interrupt):
        fit(student, (x, y), cfg, teacher=teacher, run_dir=tmp_path / "b", progress=False, log=quiet)
    h.remove()
    # during fit one hook on each tapped module; after it raised, none on either model
    assert installed[0] == [("ReLU", 1), ("ReLU", 1)]
    assert _hooks(student, teacher) == []
    tensors, side = load_tensors(tmp_path / "b" / "state")
    assert side["epoch"] == 2
    extra = sorted(k for k in tensors if k.startswith("extra."))
    assert extra == ["extra.0", "extra.1"] and tensors["extra.0"].shape == (8, 4, 1, 1)  # the projector's conv
    assert any(k.startswith("optim.") for k in tensors)

    fresh, _ = _nets(seed=7)  # other initial weights: the state decides
    _, teacher = _nets()
    resumed = fit(fresh, (x, y), cfg, teacher=teacher, run_dir=tmp_path / "b", progress=False, log=quiet)
    assert resumed.resumed_from == 2
    assert torch.equal(_weights(resumed.model), _weights(full.model))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_the_saved_student_holds_only_its_own_tensors(tmp_path):
    seed_everything(0)
    teacher = ResNet(1, 3, width=4, depth=1, image_shape=(8, 8))
    student = ResNet(1, 3, width=2, depth=1, image_shape=(8, 8))
    obj = FeatureDistillation(HardLabels(), [("layer3", "layer3", "hint", 1.0),
                                             ("layer2.0", "layer2.0", "attention", 1.0),
                                             ("pool", "pool", "relational", 1.0)])
    res = fit(student, _data(), TrainConfig(epochs=1, batch_size=32, objective=obj), teacher=teacher,
              run_dir=tmp_path / "r", progress=False, log=quiet)
    saved = load_file(tmp_path / "r" / "model.safetensors")
    assert set(saved) == set(student.state_dict())
    assert not (tmp_path / "r" / "state.safetensors").exists()
    loaded, side = load_checkpoint(tmp_path / "r" / "model")  # rebuilt from its factory
    assert type(loaded) is ResNet and loaded.arch == student.arch
    assert side["factory"]["target"] == "distill.models:ResNet"
    x = _data(5)[0]
    assert torch.equal(loaded(x), res.model(x))
    assert _hooks(student, teacher, loaded) == []
    assert res.test is None and res.history[0]["train_loss"] > 0


def test_bf16_autocast_casts_the_features_to_float32():
    student, teacher = _nets(teacher_stride=2)
    obj = FeatureDistillation(Distillation(2.0), [("body.3", "body.3", "hint", 1.0),
                                                  ("body.3", "body.3", "attention", 10.0)])
    res = fit(student, _data(32), TrainConfig(epochs=1, batch_size=16, precision="bf16", objective=obj),
              teacher=teacher, progress=False, log=quiet)
    assert torch.isfinite(torch.tensor(res.history[0]["train_loss"]))
    assert _hooks(student, teacher) == []


def test_terms_are_logged_per_pair(tmp_path):
    from distill.train.logs import read_metrics

    student, teacher = _nets()
    obj = FeatureDistillation(Distillation(2.0), PAIRS + [("body.1", "body.1", "attention", 3.0)])
    fit(student, _data(), TrainConfig(epochs=1, batch_size=32, log_every=1, objective=obj), teacher=teacher,
        run_dir=tmp_path / "r", progress=False, log=quiet)
    rows = [r for r in read_metrics(tmp_path / "r" / "metrics.csv") if r["kind"] == "step"]
    assert len(rows) == 3
    for r in rows:
        assert {"soft", "hard", "hint:body.3", "attention:body.1"} <= set(r)
        assert r["soft"] + r["hard"] + r["hint:body.3"] + r["attention:body.1"] == pytest.approx(r["loss"], rel=1e-5)


# ---------------------------------------------------------------- DDP

def _ddp_train(run_dir):
    x, y = _data(41)  # batch 10 over 41 rows: the last global batch has one row, so one process gets none
    student, teacher = _nets(teacher_stride=2)
    obj = FeatureDistillation(Distillation(2.0, 0.3), [("body.3", "body.3", "hint", 2.0),
                                                       ("body.1", "body.1", "attention", 10.0)])
    return fit(student, (x, y), TrainConfig(epochs=2, batch_size=10, lr=0.1, objective=obj), teacher=teacher,
               run_dir=run_dir, progress=False, log=quiet)


def _ddp_worker(rank, world_size, rdv, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world_size)
    try:
        res = _ddp_train(out if rank == 0 else None)
        save_file(res.model.state_dict(), f"{out}.rank{rank}.safetensors")
        Path(f"{out}.rank{rank}.json").write_text(json.dumps(dict(hooks=len(_hooks(res.model)))))
        leave_group_and_exit()
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_ddp_with_feature_distillation_ends_where_one_process_does(tmp_path):
    single = _ddp_train(None).model.state_dict()
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rdv"), str(out)), nprocs=2, join=True)
    for r in range(2):
        weights = load_file(f"{out}.rank{r}.safetensors")
        for k, v in single.items():
            assert torch.allclose(weights[k], v, atol=1e-5), (r, k)
        assert json.loads(Path(f"{out}.rank{r}.json").read_text())["hooks"] == 0


def test_a_channel_wise_pair_gets_a_learned_projector_and_trains(tmp_path):
    student, teacher = _nets(teacher_stride=2)  # 4 channels at 8x8 against 8 at 4x4
    obj = FeatureDistillation(HardLabels(), [("body.3", "body.3", "channel_wise", 1.0)])
    plan = make_plan(student, _data(), TrainConfig(epochs=1, objective=obj), teacher=teacher, run_dir=tmp_path / "r")
    (proj,) = plan.features.projectors
    assert isinstance(proj, nn.Conv2d) and proj.out_channels == 8 and proj.size == (4, 4)
    res = fit(student, _data(), TrainConfig(epochs=2, objective=obj), teacher=teacher, progress=False, log=quiet)
    assert all(math.isfinite(h["train_loss"]) for h in res.history) and _hooks(student, teacher) == []
