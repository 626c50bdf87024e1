"""Issue 17, beyond the paper: DKD, logit standardization, consistent teaching (augmentation applied
once per batch, the same view to teacher and student; fixed views with a stored teacher), the
methods experiment and the `beyond` presets (at a tiny size)."""
import json
from dataclasses import dataclass, replace

import pytest

from distill.losses.objectives import Objective
import torch
import torch.nn.functional as F
from torch import nn

import distill
from distill import losses
from distill.data.augment import Augment, jitter, translate
from distill.losses import DKD, Distillation, HardLabels, Standardized, dkd_loss, dkd_terms, standardize_logits
from distill.models.classifiers import MLP
from distill.train.augmenter import Augmenter

# ---------------------------------------------------------------- DKD


def _batch(b=6, n=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = (scale * torch.randn(b, n, generator=g, dtype=torch.float64)).requires_grad_()
    v = scale * torch.randn(b, n, generator=g, dtype=torch.float64)
    y = torch.randint(0, n, (b,), generator=g)
    return z, v, y


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_dkd_terms_sum_to_the_kl_with_the_one_minus_pt_weight(T):
    """T² KL(p||q) = TCKD + (1 - p_t) NCKD per example; dkd_loss(alpha=beta=1) drops the weight."""
    z, v, y = _batch()
    tckd, nckd, p_t = dkd_terms(z, v, y, T)
    p, log_q = torch.softmax(v / T, 1), torch.log_softmax(z / T, 1)
    kl = T * T * (p * (p.log() - log_q)).sum(1)
    assert torch.allclose(tckd + (1 - p_t) * nckd, kl, atol=1e-10)
    assert torch.allclose(p_t, p.gather(1, y[:, None])[:, 0])
    full = dkd_loss(z, v, y, T, alpha=1.0, beta=1.0)
    assert torch.allclose(full, (tckd + nckd).mean())
    # what alpha = beta = 1 adds to Hinton's KL: exactly the p_t-weighted non-target term
    assert torch.allclose(full - kl.mean(), (p_t * nckd).mean(), atol=1e-10)
    assert (p_t * nckd).mean() > 1e-6


def _mdistiller_dkd(zs, zt, target, alpha, beta, T):
    """mdistiller's dkd_loss (mdistiller/distillers/DKD.py), transcribed."""
    gt = torch.zeros_like(zs).scatter_(1, target.unsqueeze(1), 1).bool()
    ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
    cat = lambda t: torch.cat([(t * gt).sum(1, keepdim=True), (t * ~gt).sum(1, keepdim=True)], 1)  # noqa: E731
    tckd = F.kl_div(torch.log(cat(ps)), cat(pt), reduction="sum") * T ** 2 / target.shape[0]
    nckd = F.kl_div(F.log_softmax(zs / T - 1000.0 * gt, 1), F.softmax(zt / T - 1000.0 * gt, 1),
                    reduction="sum") * T ** 2 / target.shape[0]
    return alpha * tckd + beta * nckd


def test_dkd_matches_the_reference_implementation():
    z, v, y = _batch(seed=3)
    for a, b, T in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 8.0)):
        assert torch.allclose(dkd_loss(z, v, y, T, a, b), _mdistiller_dkd(z, v, y, a, b, T), atol=1e-8)


def test_non_target_term_ignores_the_target_logit():
    z, v, y = _batch(seed=1)
    _, nckd, _ = dkd_terms(z, v, y, 4.0)
    (g,) = torch.autograd.grad(nckd.sum(), z)
    assert torch.all(g.gather(1, y[:, None]) == 0)          # no gradient to the target logit
    assert g.abs().sum() > 0
    z2, v2 = z.detach().clone(), v.clone()
    rows = torch.arange(len(y))
    z2[rows, y] += 7.0
    v2[rows, y] -= 5.0
    assert torch.equal(dkd_terms(z2, v2, y, 4.0)[1], nckd.detach())  # unchanged, bit for bit


def test_dkd_gradient_matches_the_formula():
    """d/dz_j (1/B) sum_b [a TCKD + b NCKD] with q^ = q_j / (1 - q_t) (j != t):
    TCKD: T (q_t - p_t) at the target, T q^_j (p_t - q_t) elsewhere; NCKD: T (q^_j - p^_j), 0 at t."""
    z, v, y = _batch(seed=2)
    T, a, b = 4.0, 1.5, 8.0
    (g,) = torch.autograd.grad(dkd_loss(z, v, y, T, a, b), z)
    q, p = torch.softmax(z.detach() / T, 1), torch.softmax(v / T, 1)
    t = F.one_hot(y, 10).bool()
    q_t, p_t = q[t][:, None], p[t][:, None]
    q_hat, p_hat = q / (1 - q_t), p / (1 - p_t)
    g_tckd = torch.where(t, T * (q_t - p_t), T * q_hat * (p_t - q_t))
    g_nckd = torch.where(t, torch.zeros_like(q), T * (q_hat - p_hat))
    assert torch.allclose(g, (a * g_tckd + b * g_nckd) / len(y), atol=1e-10)


def test_dkd_is_stable_for_confident_logits_and_checks_its_input():
    z = torch.tensor([[80.0, 0.0, 0.0], [0.0, 0.0, -90.0]], requires_grad=True)
    v = torch.tensor([[90.0, 0.0, 0.0], [0.0, 95.0, 0.0]])
    loss = dkd_loss(z, v, torch.tensor([0, 1]), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="labels"):
        dkd_loss(z, v, torch.tensor([0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="0..2"):
        dkd_loss(z, v, torch.tensor([0, 3]), 1.0)
    with pytest.raises(ValueError, match="both 0"):
        DKD(alpha=0, beta=0)


def test_dkd_objective_warm_up_and_hard_term():
    z, v, y = _batch(seed=4)
    z = z.detach().float()
    v = v.float()
    obj = DKD(temperature=4.0, beta=8.0, hard_weight=0.5, warmup_epochs=4)
    kd, ce = dkd_loss(z, v, y, 4.0, 1.0, 8.0), F.cross_entropy(z, y)
    assert torch.allclose(obj(z, v, y), 0.5 * ce + kd)              # called without an epoch: w = 1
    for epoch, w in ((1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):  # the epoch comes with every call
        assert torch.allclose(obj(z, v, y, epoch=epoch), 0.5 * ce + w * kd)
    assert torch.allclose(obj(z, v, y), 0.5 * ce + kd)              # no state was kept between calls
    assert losses.objective_spec(obj) == dict(objective="distill.losses.DKD", temperature=4.0, alpha=1.0, beta=8.0,
                                              hard_weight=0.5, warmup_epochs=4)
    assert DKD().needs_labels and DKD().needs_teacher


# ---------------------------------------------------------------- standardization


def test_standardize_is_invariant_to_shift_and_positive_scale():
    z, _, _ = _batch(seed=5)
    z = z.detach()
    s = standardize_logits(z)
    assert torch.allclose(s.mean(1), torch.zeros(len(z), dtype=z.dtype), atol=1e-12)
    assert torch.allclose(s.std(1), torch.ones(len(z), dtype=z.dtype), atol=1e-6)
    for a, c in ((3.0, 0.0), (0.2, -5.0), (1.0, 100.0), (17.0, 3.0)):
        assert torch.allclose(standardize_logits(a * z + c), s, atol=1e-6)
    assert not torch.allclose(standardize_logits(-z), s)        # a negative scale is not a symmetry
    assert torch.allclose(standardize_logits(z, base_temperature=2.0), s / 2)
    assert torch.equal(standardize_logits(torch.full((2, 5), 3.0)), torch.zeros(2, 5))


def test_standardize_jacobian_matches_the_formula():
    """dZ_i/dz_j = (delta_ij - 1/N - Z_i Z_j / (N - 1)) / sigma (sample std, eps -> 0)."""
    z = torch.randn(7, dtype=torch.float64) * 2
    n = len(z)
    jac = torch.autograd.functional.jacobian(lambda x: standardize_logits(x[None], eps=1e-30)[0], z)
    zs = (z - z.mean()) / z.std()
    formula = (torch.eye(n, dtype=z.dtype) - 1.0 / n - torch.outer(zs, zs) / (n - 1)) / z.std()
    assert torch.allclose(jac, formula, atol=1e-10)


def test_standardized_wraps_hinton_and_dkd():
    z, v, y = _batch(seed=6)
    z, v = z.detach().float(), v.float()
    sz, sv = standardize_logits(z), standardize_logits(v)
    kd = Standardized(Distillation(4.0, hard_weight=0.1))
    # the teacher term on standardized logits, the hard term on the raw ones (Sun et al.'s code)
    expect = Distillation(4.0, hard_weight=0.0)(sz, sv, y) + 0.1 * F.cross_entropy(z, y)
    assert torch.allclose(kd(z, v, y), expect)
    # a teacher whose logits are 5x larger and shifted teaches the same thing
    assert torch.allclose(kd(z, 5 * v + 2, y), kd(z, v, y), atol=1e-5)
    assert not torch.allclose(Distillation(4.0)(z, 5 * v + 2, y), Distillation(4.0)(z, v, y))
    d = Standardized(DKD(beta=8.0, hard_weight=1.0, warmup_epochs=2))
    # the epoch reaches the inner DKD's warm-up
    assert torch.allclose(d(z, v, y, epoch=1), 0.5 * dkd_loss(sz, sv, y, 4.0, 1.0, 8.0) + F.cross_entropy(z, y))
    assert d.temperature == 4.0 and d.needs_labels and kd.needs_labels
    assert not Standardized(Distillation(2.0, hard_weight=0.0)).needs_labels
    spec = losses.objective_spec(d)
    assert spec["inner_class"] == "distill.losses.DKD" and spec["inner"]["beta"] == 8.0
    with pytest.raises(ValueError, match="does not use a teacher"):
        Standardized(HardLabels())
    with pytest.raises(ValueError, match="dataclass"):
        Standardized(lambda s, t, y: s.sum())


# ---------------------------------------------------------------- augmentation


def test_translate_crop_flip_and_mix_do_what_they_say():
    x = torch.arange(2 * 25, dtype=torch.float32).reshape(2, 25)
    out = translate(x, (5, 5), torch.tensor([[1, 0], [0, -2]])).reshape(2, 5, 5)
    img = x.reshape(2, 5, 5)
    assert torch.equal(out[0, 1:], img[0, :-1]) and torch.equal(out[0, 0], torch.zeros(5))
    assert torch.equal(out[1, :, :3], img[1, :, 2:]) and torch.equal(out[1, :, 3:], torch.zeros(5, 2))
    aug = Augment(crop_pad=2)
    p = aug.draw(2, torch.Generator().manual_seed(0))
    assert p["crop"].abs().max() <= 2
    got = aug.apply(x, (5, 5), p).reshape(2, 5, 5)
    padded = F.pad(img, (2, 2, 2, 2))
    for b in range(2):  # the reference: pad by 2, crop the window at offset (2 - dy, 2 - dx)
        oy, ox = (2 - p["crop"][b]).tolist()
        assert torch.equal(got[b], padded[b, oy:oy + 5, ox:ox + 5])
    flipped = Augment(flip=True).apply(x, (5, 5), dict(flip=torch.tensor([True, False]))).reshape(2, 5, 5)
    assert torch.equal(flipped[0], img[0].flip(-1)) and torch.equal(flipped[1], img[1])
    mixed = Augment(mixup=0.2).apply(x, (5, 5), dict(lam=torch.tensor([0.25, 0.25]), partner=torch.tensor([1, 0])),
                                     partner_x=x.flip(0))
    assert torch.allclose(mixed[0], 0.25 * x[0] + 0.75 * x[1])


def test_augment_refuses_what_it_cannot_do(toy, blobs):
    with pytest.raises(ValueError, match="does nothing"):
        Augment()
    with pytest.raises(ValueError, match="shorthand"):
        distill.TrainConfig(jitter=2, augment=Augment(shift=2))
    with pytest.raises(ValueError, match="Augment"):
        distill.TrainConfig(augment=dict(shift=2))
    with pytest.raises(ValueError, match="image data"):
        distill.fit(MLP(10, (8,), 3), blobs(), distill.TrainConfig(epochs=1, augment=Augment(shift=1)), progress=False)
    with pytest.raises(ValueError, match="without labels"):  # per-example lam cannot weight a batch mean
        distill.fit(MLP(64, (8,), 10), toy, distill.TrainConfig(epochs=1, augment=Augment(mixup=0.2, views=2)),
                    progress=False)
    with pytest.raises(ValueError, match="augmentation"):  # stored outputs belong to unaugmented inputs
        distill.fit(MLP(64, (8,), 10), toy, distill.TrainConfig(epochs=1, augment=Augment(shift=1)),
                    teacher=torch.zeros(len(toy.y_train), 10), progress=False)


def test_config_key_without_augment_is_unchanged():
    cfg = distill.TrainConfig(epochs=3)
    assert "augment" not in cfg.to_dict()  # runs keyed before augment existed keep their keys
    d = replace(cfg, augment=Augment(shift=2, mixup=0.2)).to_dict()
    assert d["augment"]["shift"] == 2 and d["augment"]["mixup"] == 0.2


def test_augment_shift_is_the_jitter_shorthand(toy):
    hist = []
    for cfg in (distill.TrainConfig(epochs=2, jitter=2), distill.TrainConfig(epochs=2, augment=Augment(shift=2))):
        distill.seed_everything(0)
        hist.append([h["train_loss"] for h in distill.fit(MLP(64, (16,), 10), toy, cfg, progress=False).history])
    assert hist[0] == hist[1]
    x = torch.rand(5, 64)
    assert torch.equal(jitter(x, (8, 8), 2, torch.Generator().manual_seed(1)),
                       Augment(shift=2).apply(x, (8, 8), Augment(shift=2).draw(5, torch.Generator().manual_seed(1))))


class Recorder(nn.Module):
    """A model that logs every input batch it sees (training mode only, for the student)."""

    def __init__(self, inner, log, training_only=True):
        super().__init__()
        self.inner, self.log, self.training_only = inner, log, training_only

    def forward(self, x):
        if self.training or not self.training_only:
            self.log.append(x.detach().clone())
        return self.inner(x)


@pytest.fixture(scope="module")
def toy_teacher(toy):
    distill.seed_everything(0)
    return distill.fit(MLP(64, (32,), 10), toy, distill.TrainConfig(epochs=3, lr=0.1), progress=False).model


def test_teacher_and_student_see_the_same_augmented_batch(toy, toy_teacher):
    seen_s, seen_t = [], []
    teacher = Recorder(toy_teacher, seen_t, training_only=False)
    distill.seed_everything(0)
    student = Recorder(MLP(64, (16,), 10), seen_s)
    cfg = distill.TrainConfig(epochs=2, temperature=1.0, hard_weight=0.0,
                              augment=Augment(shift=2, crop_pad=1, flip=True, mixup=0.4))
    distill.fit(student, toy, cfg, teacher=teacher, progress=False)
    held_out = [t for t in seen_t if t.shape == toy.x_test.shape and torch.equal(t, toy.x_test)]
    seen_t = [t for t in seen_t if not (t.shape == toy.x_test.shape and torch.equal(t, toy.x_test))]
    assert len(held_out) == 1  # the test split, once, for the records' agreement with the teacher
    assert len(seen_s) == len(seen_t) == 2 * 5  # 600 examples, batches of 128
    for s, t in zip(seen_s, seen_t):
        assert torch.equal(s, t)
    raw = set(map(tuple, toy.x_train.tolist()))
    assert not any(tuple(r) in raw for r in seen_s[0].tolist()[:20])  # the batches really are augmented


def test_augmented_runs_are_reproducible_and_resume_exactly(toy, toy_teacher, tmp_path):
    cfg = distill.TrainConfig(epochs=3, temperature=2.0, hard_weight=0.1, augment=Augment(shift=1, mixup=0.3))

    def run(obj_cfg, run_dir=None):
        distill.seed_everything(0)
        return distill.fit(MLP(64, (16,), 10), toy, obj_cfg, teacher=toy_teacher, run_dir=run_dir, progress=False,
                           log=lambda m: None)

    a, b = run(cfg), run(cfg)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]

    # interrupted after epoch 2 (the objective is told epoch 3 and stops the run), then resumed
    stopping = replace(cfg, temperature=1.0, objective=Stopper())
    Stopper.armed = True
    with pytest.raises(Interrupted):
        run(stopping, tmp_path / "r")
    Stopper.armed = False
    resumed = run(stopping, tmp_path / "r")
    whole = run(stopping)
    assert resumed.resumed_from == 2
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]


class Interrupted(Exception):
    """Stands for a killed process."""


@dataclass(frozen=True)
class Stopper(Objective):
    """Hinton's loss at T = 2 (hard weight 0.1) that raises Interrupted in epoch 3, once armed."""

    armed = False
    needs_teacher = True
    needs_labels = True
    temperature = 2.0

    def __call__(self, s, t, y, *, mask=None, epoch=None):
        if epoch == 3 and Stopper.armed:
            raise Interrupted
        return Distillation(2.0, 0.1)(s, t, y)


def test_fit_tells_the_objective_each_epoch(toy, toy_teacher, tmp_path):
    told = []

    @dataclass(frozen=True)
    class Watch(Objective):
        needs_teacher = True
        needs_labels = True
        temperature = 4.0

        def __call__(self, s, t, y, *, mask=None, epoch=None):
            if not told or told[-1] != epoch:
                told.append(epoch)
            return DKD(warmup_epochs=2)(s, t, y, epoch=epoch)

    distill.seed_everything(0)
    distill.fit(MLP(64, (16,), 10), toy, distill.TrainConfig(epochs=3, objective=Watch()), teacher=toy_teacher,
                progress=False)
    assert told == [1, 2, 3]
    # a warming-up DKD trains without being mistaken for a diverging run (its loss scale grows)
    distill.seed_everything(0)
    res = distill.fit(MLP(64, (16,), 10), toy, distill.TrainConfig(epochs=4, objective=DKD(warmup_epochs=4)),
                      teacher=toy_teacher, progress=False)
    assert len(res.history) == 4


def test_mixup_with_hard_labels_mixes_the_labels(toy):
    src = distill.as_source(toy)
    aug = Augment(mixup=0.5)
    x, y, idx = next(iter(src.batches(32, None)))
    x2, mixed, rows = Augmenter(aug, src, HardLabels())(x, y, idx, torch.Generator().manual_seed(3))
    p = aug.draw(32, torch.Generator().manual_seed(3))
    lam = float(p["lam"][0])
    assert rows is None and mixed is not None and mixed[1] == lam
    assert torch.equal(mixed[0], y[p["partner"]])
    assert torch.allclose(x2, lam * x + (1 - lam) * x[p["partner"]])
    out = torch.randn(32, 10)
    from distill.train.augmenter import mixup_loss

    assert torch.allclose(mixup_loss(HardLabels(), out, None, y, mixed[0], lam),
                          lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, mixed[0]))
    # a teacher objective without labels: the student just matches the teacher on the mixed input
    assert Augmenter(aug, src, Distillation(1.0, hard_weight=0.0))(x, y, idx, torch.Generator())[1] is None


# ---------------------------------------------------------------- fixed views and their store


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_view_store_gives_the_same_batches_and_targets_as_the_teacher_on_the_fly(toy, toy_teacher, tmp_path):
    aug = Augment(shift=2, flip=True, mixup=0.3, views=3, view_dtype="float32")
    cfg = distill.TrainConfig(epochs=2, augment=aug)
    runs = {}
    for name, store in (("fly", None), ("store", tmp_path), ("replay", tmp_path)):
        counting = Counting(toy_teacher)
        seen, targets = [], []
        distill.seed_everything(0)
        res = distill.fit(Recorder(MLP(64, (16,), 10), seen), toy,
                          replace(cfg, objective=Spy(targets)),  # Hinton at T = 2, its targets logged
                          teacher=distill.Teacher(counting, store=store), progress=False, log=lambda m: None)
        runs[name] = (seen, res.history, counting.calls, targets)
    (s_fly, h_fly, calls_fly, t_fly), (s_st, h_st, calls_st, t_st) = runs["fly"], runs["store"]
    assert all(torch.equal(a, b) for a, b in zip(s_fly, s_st)) and len(s_fly) == len(s_st) == 10
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(t_fly, t_st)) and len(t_fly) == 10
    assert [h["train_loss"] for h in h_fly] == pytest.approx([h["train_loss"] for h in h_st], rel=1e-5)
    # (each run also shows the teacher its test split once, for the records' agreement with it)
    assert calls_fly == 10 + 1                  # the teacher on every batch
    assert calls_st == 1 + 1                    # once, over all 600 x 3 views (batches of 2000)
    assert runs["replay"][2] == 0 + 1           # the store is reused: the teacher never runs on training data
    stores = list(tmp_path.glob("soft-*/meta.json"))
    assert len(stores) == 1 and json.loads(stores[0].read_text())["rows"] == 3 * len(toy.y_train)


@dataclass(frozen=True)
class Spy:
    """Hinton's loss at T = 2 (no hard term) that records its teacher targets."""

    log: list
    needs_teacher = True
    needs_labels = False
    temperature = 2.0

    def __call__(self, s, t, y):
        if s.requires_grad:  # a training step (not fit's no-grad divergence reference)
            self.log.append(t.detach().clone())
        return Distillation(2.0, hard_weight=0.0)(s, t, y)


def test_view_table_is_seeded_and_float16_store_is_close(toy, toy_teacher, tmp_path):
    aug = Augment(shift=1, crop_pad=1, views=4, view_seed=7)
    t1, t2 = aug.table(50), aug.table(50)
    assert all(torch.equal(t1[k], t2[k]) for k in t1) and t1["shift"].shape == (50, 4, 2)
    assert not torch.equal(t1["shift"], replace(aug, view_seed=8).table(50)["shift"])
    src = distill.as_source(toy)
    teacher = distill.Teacher(toy_teacher, store=tmp_path)
    a = Augmenter(aug, src, Distillation(1.0, hard_weight=0.0))
    a.prepare(teacher, progress=False, log=lambda m: None)
    rows = torch.tensor([0, 5, 7, 2399])
    x = a.views.view(src.take(rows // 4)[0], rows)
    assert torch.allclose(a.targets(rows, "cpu"), toy_teacher(x), atol=0.05)  # float16 logits


# ---------------------------------------------------------------- experiments


def test_methods_experiment_tiny(toy, tmp_path):
    from distill.experiments import methods

    out = tmp_path / "m"
    logs = []
    recs = methods.run("mnist", "tiny", out=out, progress=False, log=logs.append, data=toy)
    final = [r for r in recs if r.get("role") == "final"]
    assert [r["method"] for r in final] == list(methods.METHODS)
    select = [r for r in recs if r.get("role") == "select"]
    assert {r["seed"] for r in select} == {0} and {r["seed"] for r in final} == {1}
    cons = [r for r in select if r["method"] == "consistent"]
    best = min(cons, key=lambda r: r["val_errors"])  # first of equals, as the experiment chooses
    chosen = next(r for r in final if r["method"] == "consistent")
    assert chosen["setting"] == best["setting"]
    aug = next(r for r in final if r["method"] == "hard-aug")
    assert aug["choice"] == dict(lr=next(r for r in final if r["method"] == "hard")["choice"]["lr"],
                                 mixup=chosen["choice"]["mixup"])  # hard's lr, consistent teaching's augmentation
    md = (out / "results.md").read_text()
    assert "consistent teaching" in md and "Validation choices" in md and (out / "methods.png").stat().st_size
    again = methods.run("mnist", "tiny", out=tmp_path / "m2", cache=out / "stages", progress=False,
                        log=logs.append, data=toy)
    assert [r["test_errors"] for r in again] == [r["test_errors"] for r in recs]
    assert sum("(cached)" in m for m in logs) == len(recs)


def test_methods_validation_split_is_unseen(toy):
    from distill.experiments.common import holdout_sets
    from distill.experiments.methods import PRESETS, method_config

    p = PRESETS["tiny"]
    rest, (xv, yv), students = holdout_sets(toy, p)
    assert len(yv) == p.val_size and len(rest.y_train) == len(toy.y_train) - p.val_size
    rows = lambda x: {tuple(r) for r in x.tolist()}  # noqa: E731
    assert not rows(xv) & rows(rest.x_train) and torch.equal(rest.x_test, toy.x_test)
    cfg = method_config(p, "consistent", dict(T=1.0, mixup=0.2, lr=0.1))
    assert cfg.objective == Distillation(1.0, hard_weight=0.0) and cfg.augment == Augment(shift=2, mixup=0.2)
    assert cfg.lr == 0.1 and method_config(p, "kd", dict(T=4.0)).lr == p.distill_lr
    std = method_config(p, "std-kd", dict(T=2.0, w=9.0)).objective
    assert std.inner == Distillation(2.0, hard_weight=0.1, soft_weight=9.0)
    assert method_config(p, "hard-aug", dict(lr=0.1, mixup=0.2)).augment == cfg.augment
    assert isinstance(method_config(p, "dkd", dict(beta=8.0)).objective, DKD)
    assert isinstance(method_config(p, "std-kd", dict(T=2.0)).objective, Standardized)


def _tiny_beyond():
    from distill.experiments.common import MNIST_PRESETS

    tiny, b = MNIST_PRESETS["tiny"], MNIST_PRESETS["beyond"]
    return replace(tiny, train_size=600, student=replace(tiny.student, augment=b.student.augment),
                   temperature=1.0, hard_weight=0.0)


def test_beyond_presets_are_the_paper_teacher_with_augmented_students_and_controls():
    from distill.experiments import regularizer
    from distill.experiments.common import MNIST_PRESETS

    b, paper = MNIST_PRESETS["beyond"], MNIST_PRESETS["paper"]
    assert b.teacher == paper.teacher and b.teacher_hidden == paper.teacher_hidden  # the same cached stage
    assert b.student.augment is not None and b.distilled().augment == b.student.augment  # control: same augment
    assert b.distilled().hard_weight == 0.0 and b.distilled().temperature == 1.0
    assert b.distilled().epochs == b.student.epochs and b.distilled().lr == b.student.lr  # and schedule
    rb = regularizer.PRESETS["beyond"]
    assert rb.teacher == paper and rb.augment is not None and not rb.plain


def test_mnist_beyond_preset_runs_tiny(tmp_path, monkeypatch, mnist):
    """`reproduce mnist --preset beyond`'s code path at a tiny size (its full run needs the paper teacher)."""
    from distill.experiments import mnist as experiment
    from distill.experiments.common import MNIST_PRESETS

    monkeypatch.setitem(MNIST_PRESETS, "tiny-beyond", _tiny_beyond())
    recs = experiment.run("tiny-beyond", out=tmp_path / "mn", progress=False, log=lambda m: None)
    assert [r["model"] for r in recs] == ["teacher", "student-hard", "student-distilled"]
    side = json.loads((tmp_path / "mn" / "results.json").read_text())
    assert len(side) == 3


def test_regularizer_beyond_preset_runs_tiny(tmp_path, monkeypatch, mnist):
    """`reproduce regularizer --preset beyond` at a tiny size: the 100 % reference, the 3 % control and
    the 3 % consistent-teaching student, all with the same augmentation."""
    from distill.experiments import regularizer

    monkeypatch.setitem(regularizer.PRESETS, "tiny-beyond",
                        replace(regularizer.PRESETS["tiny"], teacher=_tiny_beyond(),
                                augment=regularizer.PRESETS["beyond"].augment, plain=False))
    recs = regularizer.run("tiny-beyond", out=tmp_path / "rg", progress=False, log=lambda m: None)
    assert [r["model"] for r in recs] == ["teacher", "student-hard-aug", "student-hard-3pct-aug",
                                          "student-soft-3pct-aug"]
    assert all(r.get("augment") for r in recs[1:])
    assert "Consistent teaching" in (tmp_path / "rg" / "results.md").read_text()


def test_beyond_table_holds_consistent_teaching_to_the_control():
    from distill.experiments import mnist

    def recs(control, student):
        return ([dict(model="teacher", test_errors=72, params=1, wall_seconds=1)]
                + [dict(model="student-hard", test_errors=e, params=1, wall_seconds=1) for e in control]
                + [dict(model="student-distilled", test_errors=e, params=1, wall_seconds=1) for e in student])

    met = mnist.summarize(recs([75, 77, 76], [66, 67, 68]), augmented=True)
    assert "control: the same augmentation" in met and "**met**" in met and "Gap closed" not in met
    assert "+9.0 errors saved" in met
    assert "**not met**" in mnist.summarize(recs([74, 61, 68], [69, 71, 70]), augmented=True)  # within the spread
    assert "**not met**" in mnist.summarize(recs([90, 91, 92], [71, 72, 71]), augmented=True)  # above 70
    assert "Gap closed" in mnist.summarize(recs([140, 141], [90, 91]))  # the paper's rows keep their measure
