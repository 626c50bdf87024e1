"""Specialists (paper section 5): clustering, specialist construction, dustbin correction, KL solver."""
import math

import numpy as np
import pytest
import torch

from distill.methods import specialists as S
from distill.data.synthetic import make_synthetic, planted_groups
from distill.errors import DistillError
from distill.models.classifiers import MLP


def _rand_probs(n, c, seed, sharp=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharp * torch.randn(n, c, generator=g, dtype=torch.float64), 1)


# ---------------------------------------------------------------- solver


def test_no_active_specialist_keeps_generalist():
    p_g = _rand_probs(5, 6, 0)
    subsets = [(0, 1), (2, 3, 4)]
    spec = [_rand_probs(5, 3, 1), _rand_probs(5, 4, 2)]
    active = torch.zeros(5, 2, dtype=torch.bool)
    res = S.combine(p_g, spec, subsets, active)
    assert torch.equal(res.q, p_g)
    # a mix: only row 2 active; the others stay exactly p_g
    active[2, 0] = True
    res = S.combine(p_g, spec, subsets, active)
    keep = [0, 1, 3, 4]
    assert torch.equal(res.q[keep], p_g[keep])
    assert not torch.allclose(res.q[2], p_g[2])


def test_full_coverage_optimum_is_arithmetic_mean():
    """If every model covered all classes, grad = sum_k (q - p_k) -> q* = mean_k p_k. A specialist whose
    subset is all classes but one has a dustbin of one class, i.e. it covers all classes."""
    C = 5
    p_g = _rand_probs(7, C, 3)
    subsets = [(0, 1, 2, 3), (1, 2, 3, 4)]  # dustbins {4} and {0}: both full-coverage
    spec = [_rand_probs(7, 5, 4), _rand_probs(7, 5, 5)]
    full = [spec[0], spec[1][:, [4, 0, 1, 2, 3]]]  # reorder to class order
    active = torch.ones(7, 2, dtype=torch.bool)
    res = S.combine(p_g, spec, subsets, active, tol=1e-10)
    assert res.converged
    expected = (p_g + full[0] + full[1]) / 3
    torch.testing.assert_close(res.q, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(S.mean_of_full_coverage([p_g, *full]), expected, atol=1e-12, rtol=0)
    # the closed form is a stationary point of the objective: zero gradient
    T, pD, k, notB = S._pack(p_g, spec, subsets, active)
    assert S.combine_gradient(expected, p_g, T, pD, k, notB).abs().max() < 1e-12


def test_dustbin_aggregation_hand_made():
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    agg = S.aggregate_probs(q, (2, 0))
    torch.testing.assert_close(agg, torch.tensor([[0.3, 0.1, 0.6]], dtype=torch.float64))
    # logits: the dustbin logit is LSE of the rest, so softmax(aggregated) = aggregated softmax
    z = torch.log(q)
    torch.testing.assert_close(torch.softmax(S.aggregate_logits(z, (2, 0)), 1), agg)
    # the objective on a hand-made case: KL(p_g||q) + KL(p_m || A q)
    p_g = torch.tensor([[0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    p_m = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    val = S.combine_objective(q, p_g, [p_m], [(2, 0)], torch.ones(1, 1, dtype=torch.bool))
    hand = sum(0.25 * math.log(0.25 / v) for v in (0.1, 0.2, 0.3, 0.4)) + \
        0.5 * math.log(0.5 / 0.3) + 0.25 * math.log(0.25 / 0.1) + 0.25 * math.log(0.25 / 0.6)
    assert float(val) == pytest.approx(hand, abs=1e-12)


def test_gradient_matches_autograd_and_solver_converges_to_tolerance():
    C, n = 8, 6
    p_g = _rand_probs(n, C, 6, sharp=2.0)
    subsets = [(0, 1, 2), (2, 3), (5, 6, 7)]
    spec = [_rand_probs(n, len(s) + 1, 10 + i, sharp=2.0) for i, s in enumerate(subsets)]
    active = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    z = torch.randn(n, C, dtype=torch.float64, requires_grad=True)
    S.combine_objective(torch.softmax(z, 1), p_g, spec, subsets, active).sum().backward()
    T, pD, k, notB = S._pack(p_g, spec, subsets, active)
    closed = S.combine_gradient(torch.softmax(z.detach(), 1), p_g, T, pD, k, notB)
    torch.testing.assert_close(closed, z.grad, atol=1e-10, rtol=1e-8)

    res = S.combine(p_g, spec, subsets, active, tol=1e-8)
    assert res.converged and res.max_grad <= 1e-8 and res.iterations > 0
    torch.testing.assert_close(res.q.sum(1), torch.ones(n, dtype=torch.float64))
    # it is a minimum: an independent optimiser (L-BFGS on z with autograd) finds no lower objective
    z2 = torch.log(p_g).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z2], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = S.combine_objective(torch.softmax(z2, 1), p_g, spec, subsets, active).sum()
        loss.backward()
        return loss

    opt.step(closure)
    ours = S.combine_objective(res.q, p_g, spec, subsets, active)
    other = S.combine_objective(torch.softmax(z2.detach(), 1), p_g, spec, subsets, active)
    assert torch.all(ours <= other + 1e-9)
    torch.testing.assert_close(res.q, torch.softmax(z2.detach(), 1), atol=1e-5, rtol=0)


def test_combine_rejects_bad_shapes():
    p_g = _rand_probs(3, 4, 0)
    with pytest.raises(ValueError):
        S.combine(p_g, [_rand_probs(3, 2, 1)], [(0, 1)], torch.ones(3, 1, dtype=torch.bool))
    with pytest.raises(ValueError):
        S.combine(p_g, [_rand_probs(3, 3, 1)], [(0, 1)], torch.ones(3, 2, dtype=torch.bool))


def test_active_specialists_top_n():
    p_g = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]])
    subsets = [(0, 2), (1,), (3, 2)]
    assert S.active_specialists(p_g, subsets, 1).tolist() == [[True, False, False], [False, False, True]]
    assert S.active_specialists(p_g, subsets, 2).tolist() == [[True, True, False], [True, False, True]]


# ---------------------------------------------------------------- dustbin correction


def test_dustbin_correction_arithmetic():
    # 3 of 10 balanced classes, trained half/half: odds of "rest" 7/3 naturally, 1 in training
    assert S.dustbin_correction(0.3, 0.5) == pytest.approx(math.log(7 / 3))
    assert S.dustbin_correction(0.2, 0.2) == pytest.approx(0.0)  # no re-balancing, no correction
    # = paper's factor (S over-sampled by f'/f) times the dustbin's under-sampling (1-f)/(1-f')
    f, ft = 0.05, 0.4
    assert S.dustbin_correction(f, ft) == pytest.approx(math.log((ft / f) * ((1 - f) / (1 - ft))))
    with pytest.raises(ValueError):
        S.dustbin_correction(0.0, 0.5)
    with pytest.raises(ValueError):
        S.dustbin_correction(0.3, 1.0)


def test_dustbin_correction_recovers_natural_posterior():
    """Exact Bayes check: class likelihoods p(x|y) at one input, a 'perfect' specialist trained under the
    re-balanced prior, corrected -> the natural posterior aggregated to S + dustbin."""
    lik = torch.tensor([0.9, 0.5, 0.2, 0.3, 0.1, 0.05], dtype=torch.float64)  # p(x|y), 6 classes
    prior = torch.tensor([0.1, 0.2, 0.15, 0.25, 0.2, 0.1], dtype=torch.float64)
    subset = (0, 2)
    fs = float(prior[list(subset)].sum())
    train_prior = prior.clone()  # half/half: S scaled to 1/2 in total, rest scaled to 1/2
    train_prior[list(subset)] *= 0.5 / fs
    rest = [1, 3, 4, 5]
    train_prior[rest] *= 0.5 / (1 - fs)
    natural = lik * prior / (lik * prior).sum()
    trained = lik * train_prior / (lik * train_prior).sum()
    z = S.aggregate_logits(torch.log(trained)[None], subset)
    z[:, -1] += S.dustbin_correction(fs, 0.5)
    torch.testing.assert_close(torch.softmax(z, 1), S.aggregate_probs(natural[None], subset))


# ---------------------------------------------------------------- specialist construction


def test_build_specialist_copies_generalist():
    torch.manual_seed(0)
    g = MLP(12, [9, 7], 6, dropout_input=0.1, dropout_hidden=0.2, max_norm=3.0)
    subset = (4, 1)
    sp = S.build_specialist_model(g, subset)
    assert sp.arch["num_classes"] == 3 and sp.arch["hidden"] == [9, 7] and sp.arch["max_norm"] == 3.0
    for a, b in zip(g.hidden_layers, sp.hidden_layers):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    W, b = g.output_layer.weight, g.output_layer.bias
    assert torch.equal(sp.output_layer.weight[:2], W[[4, 1]])
    rest = [0, 2, 3, 5]
    torch.testing.assert_close(sp.output_layer.weight[2], W[rest].mean(0))
    torch.testing.assert_close(sp.output_layer.bias[2], b[rest].mean() + math.log(4))
    # with equal logits outside S the init reproduces the generalist's aggregated softmax exactly
    g2 = MLP(3, [4], 5)
    with torch.no_grad():
        g2.output_layer.weight[[1, 3, 4]] = g2.output_layer.weight[1].clone()
        g2.output_layer.bias[[1, 3, 4]] = g2.output_layer.bias[1].clone()
    x = torch.randn(4, 3)
    sp2 = S.build_specialist_model(g2.eval(), (0, 2))
    torch.testing.assert_close(torch.softmax(sp2.eval()(x), 1),
                               S.aggregate_probs(torch.softmax(g2(x), 1), (0, 2)), atol=1e-6, rtol=0)
    full = S.build_specialist_model(g, subset, full_softmax=True)
    assert full is not g and torch.equal(full.output_layer.weight, W)
    with pytest.raises(ValueError):
        S.build_specialist_model(g, (0, 1, 2, 3, 4, 5))  # nothing left for the dustbin
    with pytest.raises(ValueError):
        S.build_specialist_model(g, (1, 1))


def test_specialist_indices_half_and_half_and_dataset():
    y = torch.arange(10).repeat(20)  # 200 examples, 20 per class
    subset = (3, 7)
    idx = S.specialist_indices(y, subset, seed=1)
    inside = torch.isin(y[idx], torch.tensor(subset))
    assert int(inside.sum()) == 40 and int((~inside).sum()) == 40 and len(set(idx.tolist())) == 80
    assert torch.equal(idx, S.specialist_indices(y, subset, seed=1))  # seeded
    assert S.remap_labels(torch.tensor([3, 7, 0, 9]), subset, 10).tolist() == [0, 1, 2, 2]
    d = make_synthetic(num_classes=10, group_size=2, dim=4, modes=1, train_per_class=20, test_per_class=5)
    ds, idx2, corr = S.specialist_dataset(d, subset, seed=1)
    assert ds.classes[-1] == "dustbin" and ds.num_classes == 3 and len(ds.y_train) == 80
    assert corr == pytest.approx(math.log(0.8 / 0.2))  # f_S = 2/10 naturally, 1/2 in training
    assert ds.fingerprint != d.fingerprint
    assert set(ds.y_test.tolist()) == {0, 1, 2}


def test_specialist_logits_apply_correction_and_aggregate():
    torch.manual_seed(0)
    g = MLP(4, [5], 4)
    x = torch.randn(3, 4)
    sp = S.Specialist((1, 2), S.build_specialist_model(g, (1, 2), full_softmax=True), correction=0.7,
                      full_softmax=True)
    z = S.aggregate_logits(g.eval()(x).detach(), (1, 2))
    z[:, -1] += 0.7
    torch.testing.assert_close(sp.logits(x), z)


def test_predict_combined_in_batches_equals_one_combine_over_all():
    """predict_combined with batch_size < n: the same q, p_g and activations as computing the
    generalist, the active specialists (uniform where inactive) and combine() on the whole batch."""
    torch.manual_seed(0)
    C, n = 6, 23
    g = MLP(5, [8], C).eval()
    subsets = [(0, 1, 2), (2, 3), (4, 5)]
    specs = [S.Specialist(s, S.build_specialist_model(g, s).eval(), correction=0.3 * m)
             for m, s in enumerate(subsets)]
    with torch.no_grad():  # specialists that differ from the generalist
        for sp in specs:
            sp.model.output_layer.weight.add_(torch.randn_like(sp.model.output_layer.weight))
    x = torch.randn(n, 5)
    # (float32 probabilities sum to 1 only within ~1e-7, which bounds the reachable gradient)
    q, p_g, active, info = S.predict_combined(g, specs, x, top_n=2, tol=1e-6, max_iter=2000, batch_size=7)

    p_all = torch.softmax(g(x).detach(), 1)
    a_all = S.active_specialists(p_all, subsets, 2)
    probs = []
    for m, sp in enumerate(specs):
        pm = torch.full((n, len(sp.subset) + 1), 1.0 / (len(sp.subset) + 1))
        pm[a_all[:, m]] = sp.probs(x[a_all[:, m]])
        probs.append(pm)
    whole = S.combine(p_all, probs, subsets, a_all, tol=1e-6, max_iter=2000)
    assert whole.converged and info["converged"] and info["unconverged_rows"] == 0
    assert torch.equal(active, a_all) and a_all.any(1).all() and (a_all.sum(1) > 1).any()
    torch.testing.assert_close(p_g, p_all, atol=1e-7, rtol=0)
    torch.testing.assert_close(q, whole.q, atol=1e-6, rtol=0)
    assert not torch.allclose(q, p_all, atol=1e-3)  # the specialists did move the answer


# ---------------------------------------------------------------- training the specialists (library)


def _tiny_data():
    return make_synthetic(num_classes=6, group_size=3, dim=4, train_per_class=30, test_per_class=10)


def _no_training(calls):
    """A fit_fn hook that records its arguments and returns the built model untrained."""
    from distill.train.fit import FitResult
    def fit_fn(name, data, build, config, teacher, extra):
        calls.append(dict(name=name, data=data, config=config, teacher=teacher, extra=extra))
        return FitResult(build())
    return fit_fn


def test_train_specialists_hard_variant_wiring():
    from distill.teachers.teacher import module_id
    from distill.train.config import TrainConfig
    data = _tiny_data()
    torch.manual_seed(0)
    g = MLP(4, [8], 6)
    cfg = TrainConfig(epochs=1, lr=0.05, seed=3)
    calls = []
    specs, results = S.train_specialists(g, data, [(0, 1, 2), (3, 4)], cfg, fit_fn=_no_training(calls))
    gid = module_id(g)
    assert [c["name"] for c in calls] == [f"specialist-hard-0-{gid[:8]}", f"specialist-hard-1-{gid[:8]}"]
    for m, (c, sp, subset) in enumerate(zip(calls, specs, [(0, 1, 2), (3, 4)])):
        ds, _, corr = S.specialist_dataset(data, subset, seed=3 + m)
        assert c["teacher"] is None and c["config"] == cfg  # hard labels: no teacher, config as given
        assert c["data"].fingerprint == ds.fingerprint and torch.equal(c["data"].y_train, ds.y_train)
        assert sp.subset == subset and not sp.full_softmax and sp.correction == pytest.approx(corr)
        assert c["extra"] == dict(subset=list(subset), variant="hard", dustbin_correction=sp.correction,
                                  generalist=gid)
        assert sp.model.output_layer.out_features == len(subset) + 1
    assert len(results) == 2
    # another generalist (same structure, other weights) never shares a run name, so never a run folder
    torch.manual_seed(1)
    calls2 = []
    S.train_specialists(MLP(4, [8], 6), data, [(0, 1, 2)], cfg, fit_fn=_no_training(calls2))
    assert calls2[0]["name"] != calls[0]["name"]
    with pytest.raises(ValueError, match="variant"):
        S.train_specialists(g, data, [(0, 1)], cfg, variant="medium")


def test_train_specialists_soft_variant_teacher_and_correction():
    from distill.teachers.teacher import Teacher
    from distill.train.config import TrainConfig
    data = _tiny_data()
    torch.manual_seed(0)
    g = MLP(4, [8], 6).eval()
    calls = []
    h = 0.5
    specs, _ = S.train_specialists(g, data, [(1, 2)], TrainConfig(epochs=1, lr=0.05), variant="soft",
                                   soft_temperature=2.0, soft_hard_weight=h, fit_fn=_no_training(calls))
    c, sp = calls[0], specs[0]
    _, idx, corr = S.specialist_dataset(data, (1, 2), seed=0, relabel=False)
    assert sp.full_softmax and sp.correction == pytest.approx(corr * h / (h + 1))  # hard share only
    assert c["config"].temperature == 2.0 and c["config"].hard_weight == h and c["config"].soft_weight == 1.0
    assert torch.equal(c["data"].y_train, data.y_train[idx])  # full labels (no dustbin relabelling)
    t = c["teacher"]
    assert isinstance(t, Teacher) and t.kind == "probs"
    p_g = torch.softmax(g(data.x_train).detach(), 1)
    torch.testing.assert_close(t.table, S.specialist_soft_targets(p_g[idx], data.y_train[idx], (1, 2)))
    assert t.id.startswith("generalist-nonspecial:")


def test_train_specialists_default_fit_trains():
    """With the default hook every specialist is a real distill.fit from the generalist's weights."""
    from distill.train.config import TrainConfig
    data = _tiny_data()
    torch.manual_seed(0)
    g = MLP(4, [8], 6)
    before = [p.detach().clone() for p in g.parameters()]
    specs, results = S.train_specialists(g, data, [(0, 1, 2)], TrainConfig(epochs=2, lr=0.05))
    assert all(torch.equal(a, b) for a, b in zip(before, g.parameters()))  # the generalist is untouched
    assert len(results[0].history) == 2 and results[0].test["n"] == len(data.y_test)
    start = S.build_specialist_model(g, (0, 1, 2))
    assert not torch.equal(specs[0].model.output_layer.weight, start.output_layer.weight)


# ---------------------------------------------------------------- clustering


def test_clustering_recovers_planted_groups():
    """Predictions confused only within planted groups -> K-means on the correlation columns finds them."""
    groups = planted_groups(12, 3)
    g = torch.Generator().manual_seed(0)
    n = 3000
    y = torch.randint(0, 12, (n,), generator=g)
    logits = 4.0 * torch.nn.functional.one_hot(y, 12).float()
    # mass leaks to same-group classes at random strengths
    same = (groups[None, :] == groups[y][:, None]).float()
    logits = logits + same * 3.0 * torch.rand(n, 12, generator=g)
    probs = torch.softmax(logits, 1)
    cl = S.cluster_classes(probs, 4, seed=0)
    assert S.adjusted_rand(groups.numpy(), cl.labels) == pytest.approx(1.0)
    assert sorted(cl.subsets) == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)]
    assert S.cluster_classes(probs, target_size=3, seed=0).n_clusters == 4
    # overlap: a huge ratio puts every class in its two nearest clusters
    ov = S.cluster_classes(probs, 4, overlap_ratio=1e9, seed=0)
    assert len(ov.overlap_added) == 12 and sum(len(s) for s in ov.subsets) == 24
    lines = S.format_subsets(cl.subsets, [f"c{i}" for i in range(12)])
    assert lines[0] == "S_0 = {c0, c1, c2}"
    with pytest.raises(ValueError):
        S.cluster_classes(probs, 13)
    with pytest.raises(ValueError):
        S.cluster_classes(probs)


def test_prediction_covariance_matches_numpy():
    p = _rand_probs(50, 4, 9)
    np.testing.assert_allclose(S.prediction_covariance(p).numpy(), np.cov(p.numpy().T), atol=1e-12)


def test_coverage_table():
    y = torch.tensor([0, 1, 2, 3, 3])
    subsets = [(0, 1), (1, 2)]
    assert S.coverage_counts(y, subsets, 4).tolist() == [1, 2, 1, 0, 0]
    rows = S.accuracy_by_coverage(y, torch.tensor([0, 0, 2, 3, 0]), torch.tensor([0, 1, 1, 3, 3]), subsets, 4)
    assert [(r["covering"], r["n"], r["correct_generalist"], r["correct_combined"]) for r in rows] == \
        [(0, 2, 1, 2), (1, 2, 2, 1), (2, 1, 0, 1)]


# ---------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_and_grouped():
    a = make_synthetic(num_classes=20, group_size=4, dim=6, train_per_class=10, test_per_class=3, seed=2)
    b = make_synthetic(num_classes=20, group_size=4, dim=6, train_per_class=10, test_per_class=3, seed=2)
    assert torch.equal(a.x_train, b.x_train) and a.fingerprint == b.fingerprint
    assert a.image_shape is None and a.num_classes == 20 and a.x_train.shape == (200, 6)
    assert torch.bincount(a.y_test).tolist() == [3] * 20
    assert planted_groups(20, 4).tolist()[:9] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert make_synthetic(num_classes=20, group_size=4, dim=6, train_per_class=10, test_per_class=3,
                          seed=3).fingerprint != a.fingerprint
    with pytest.raises(DistillError):
        make_synthetic(num_classes=10, group_size=3)


# ---------------------------------------------------------------- experiment, end to end (tiny preset)


def test_experiment_tiny_end_to_end(tmp_path):
    import json

    from distill.experiments import specialists as E

    # the preset's own setting (the held-out selection has its own tests below)
    recs = E.run(dataset="synthetic", preset="tiny", out=tmp_path / "out", progress=False, distill_back=True, select=False,
                 log=lambda m: None)
    names = [r["model"] for r in recs]
    for name in ("generalist", "generalist+specialists", "generalist+extra", "distilled-back"):
        assert name in names
    combos = [r for r in recs if r["model"] == "generalist+specialists"]
    ctrl = next(r for r in recs if r["model"] == "generalist+extra")
    assert [c["variant"] for c in combos] == ["hard", "soft"]
    for c in combos:
        assert c["solver_converged"]
        assert c["gain_beyond_control"] == pytest.approx((ctrl["test_errors"] - c["test_errors"]) / ctrl["test_errors"])
        assert sum(row["n"] for row in c["by_coverage"]) == 240
    gen = recs[0]
    assert gen["model"] == "generalist" and 0.0 <= gen["clustering_ari"] <= 1.0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["model"] for r in saved] == names
    assert (tmp_path / "out" / "gain_vs_covering.png").stat().st_size > 0
    assert "relative accuracy change" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(DistillError):
        E.run(dataset="mnist", preset="tiny", out=tmp_path / "x", progress=False, log=lambda m: None)


def test_specialist_soft_targets_hand_made():
    p_g = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    y = torch.tensor([3, 0])
    t = S.specialist_soft_targets(p_g, y, (1, 3))
    # row 0: y = 3 in S: S mass 0.6 to class 3, class 1 gets 0; rest kept
    torch.testing.assert_close(t[0], torch.tensor([0.1, 0.0, 0.3, 0.6]))
    # row 1: y = 0 not in S: the generalist's distribution unchanged
    torch.testing.assert_close(t[1], p_g[1])


def test_accelerated_and_plain_em_agree():
    C, n = 12, 40
    p_g = _rand_probs(n, C, 21, sharp=3.0)
    subsets = [(0, 1, 2, 3), (2, 3, 4, 5, 6, 7, 8), (8, 9), (0, 5, 10, 11)]
    spec = [_rand_probs(n, len(s) + 1, 30 + i, sharp=3.0) for i, s in enumerate(subsets)]
    active = S.active_specialists(p_g, subsets, top_n=3)
    fast = S.combine(p_g, spec, subsets, active, tol=1e-9, max_iter=20000)
    slow = S.combine(p_g, spec, subsets, active, tol=1e-9, max_iter=20000, accelerate=False)
    assert fast.converged and slow.converged and fast.iterations <= slow.iterations
    torch.testing.assert_close(fast.q, slow.q, atol=1e-6, rtol=0)


def test_error_coverage_counts_errors_inside_one_subset():
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    pred = torch.tensor([1, 1, 0, 4, 0, 0])  # errors: 0->1 (in S_0), 2->0 (in S_1), 3->4 (in S_2), 4->0 (none)
    subsets = [(0, 1), (0, 2), (3, 4)]
    assert S.error_coverage(y, pred, subsets, 5) == pytest.approx(3 / 4)
    assert S.error_coverage(y, pred, [(0, 1)], 5) == pytest.approx(1 / 4)
    assert S.error_coverage(y, pred, [], 5) == 0.0
    assert math.isnan(S.error_coverage(y, y, subsets, 5))


# ---------------------------------------------------------------- held-out selection, seeds


class _Poison(torch.Tensor):
    """A tensor that fails any use: stands for a test split that must never be read."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"the test split was read ({getattr(func, '__name__', func)})")


def _poisoned(data):
    from dataclasses import replace

    return replace(data, x_test=torch.zeros(3, data.num_features).as_subclass(_Poison),
                   y_test=torch.zeros(3, dtype=torch.long).as_subclass(_Poison))


def test_selection_never_reads_the_test_split_and_picks_the_argmin(tmp_path):
    from distill.data.synthetic import make_synthetic
    from distill.experiments import specialists as E
    from distill.experiments.common import Runner

    p = E.PRESETS[("synthetic", "tiny")]
    data = make_synthetic(**p.synthetic)
    cands = E.candidates(p)
    assert len(cands) == 3 and cands[0] == E.setting_of(p)
    assert cands[1]["n_clusters"] == 3 and cands[1]["overlap_ratio"] is None and cands[2]["specialist_epochs"] == 1
    runner = Runner(tmp_path / "out", progress=False, log=lambda m: None)
    best, rows = E.select_setting(runner, p, data=_poisoned(data), dataset="synthetic", cands=cands, variant="hard",
                                  progress=False, log=lambda m: None)
    errs = [r["heldout_errors"] for r in rows]
    assert all(isinstance(e, int) and 0 <= e <= p.holdout for e in errs) and all(r["n"] == p.holdout for r in rows)
    assert best == errs.index(min(errs)) and [r["chosen"] for r in rows] == [i == best for i in range(3)]
    assert all(r["control_heldout_errors"] is not None for r in rows)
    # the stages it trained are on the tune split: held-out metrics only, never test ones
    import json

    saved = json.loads((tmp_path / "out" / "selection" / "results.json").read_text())
    assert saved and all(r["split"] == "heldout" and "test_errors" not in r and "heldout_errors" in r for r in saved)
    assert "held-out errors" in (tmp_path / "out" / "selection" / "results.md").read_text()


def test_selection_tie_goes_to_the_first_candidate(tmp_path, monkeypatch):
    from dataclasses import replace

    from distill.data.synthetic import make_synthetic
    from distill.experiments import specialists as E
    from distill.experiments.common import Runner
    from distill.experiments.specialists import pipeline

    p = replace(E.PRESETS[("synthetic", "tiny")], select_control=False)
    data = make_synthetic(**p.synthetic)
    for fake, expected in (([7, 4, 4], 1), ([5, 5, 5], 0), ([9, 8, 2], 2)):
        it = iter(fake)
        monkeypatch.setattr(pipeline, "_errors", lambda q, y, it=it: next(it))
        best, rows = E.select_setting(Runner(tmp_path / "o", progress=False, log=lambda m: None), p, data=data,
                                      dataset="synthetic", cands=E.candidates(p), progress=False, log=lambda m: None)
        assert best == expected and [r["heldout_errors"] for r in rows] == fake


def test_explicit_settings_fix_the_grid():
    from distill.experiments import specialists as E

    p = E.PRESETS[("synthetic", "tiny")]
    # grid {}, {3 clusters, no overlap}, {1 epoch} over the preset's (4 clusters, overlap 1.2, 2 epochs, T 1)
    assert [c["n_clusters"] for c in E.candidates(p, dict(n_clusters=4))] == [4, 4, 4]  # all three still differ
    two = E.candidates(p, dict(specialist_epochs=2))  # the third candidate becomes the first
    assert [(c["n_clusters"], c["overlap_ratio"], c["specialist_epochs"]) for c in two] == [(4, 1.2, 2), (3, None, 2)]
    one = E.candidates(p, dict(n_clusters=4, overlap_ratio=None, specialist_epochs=2, cluster_temperature=1.0))
    assert one == [dict(n_clusters=4, overlap_ratio=None, specialist_epochs=2, cluster_temperature=1.0)]
    q = E.with_setting(p, dict(specialist_epochs=5, n_clusters=2))
    assert q.specialist.epochs == 5 and q.n_clusters == 2 and q.specialist.lr == p.specialist.lr
    with pytest.raises(DistillError, match="unknown setting"):
        E.with_setting(p, dict(lr=0.1))
    with pytest.raises(DistillError, match="holds out no"):
        E.run(dataset="synthetic", preset="quick", select=True, progress=False, log=lambda m: None)


def test_selection_then_full_run_uses_the_choice(tmp_path):
    import json

    from distill.experiments import specialists as E

    logs = []
    recs = E.run(dataset="synthetic", preset="tiny", out=tmp_path / "out", progress=False, variants=("hard",), log=logs.append)
    sel = recs[0]
    assert sel["model"] == "selection" and sel["split"] == "heldout" and sel["holdout"] == 96
    errs = [r["heldout_errors"] for r in sel["candidates"]]
    assert sel["chosen_index"] == errs.index(min(errs))
    chosen = sel["chosen"]
    gen = next(r for r in recs if r["model"] == "generalist")
    assert (gen["n_clusters"], gen["overlap_ratio"], gen["specialist_epochs"], gen["cluster_temperature"]) == \
        (chosen["n_clusters"], chosen["overlap_ratio"], chosen["specialist_epochs"], chosen["cluster_temperature"])
    ctrl = next(r for r in recs if r["model"] == "generalist+extra")
    assert ctrl["extra_epochs"] == chosen["specialist_epochs"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Held-out selection" in md and "chosen on 96 held-out TRAINING examples" in md
    assert json.loads((tmp_path / "out" / "results.json").read_text())[0]["model"] == "selection"
    # a rerun trains nothing: every stage comes from the cache, the same choice and numbers
    logs2 = []
    again = E.run(dataset="synthetic", preset="tiny", out=tmp_path / "out", progress=False, variants=("hard",), log=logs2.append)
    assert again[0]["chosen"] == chosen and [r.get("test_errors") for r in again] == [r.get("test_errors") for r in recs]
    assert not any("epoch 1/" in m for m in logs2) and any("(cached)" in m for m in logs2)


def test_seeds_summary_is_mean_and_std_of_the_records(tmp_path):
    import statistics

    from distill.experiments import specialists as E

    recs = E.run(dataset="synthetic", preset="tiny", out=tmp_path / "out", progress=False, seeds=(0, 1), select=False,
                 log=lambda m: None)
    sm = E.seed_summary(recs)
    assert sm["seeds"] == [0, 1]

    def hand(model, key, variant=None):
        vals = [next(r[key] for r in recs if r["model"] == model and r["seed"] == s
                     and (variant is None or r.get("variant") == variant)) for s in (0, 1)]
        return vals, statistics.mean(vals), statistics.stdev(vals)

    for got, (vals, m, s) in ((sm["generalist"], hand("generalist", "test_errors")),
                              (sm["control"], hand("generalist+extra", "test_errors"))):
        assert got["values"] == vals and got["mean"] == pytest.approx(m) and got["std"] == pytest.approx(s)
    for v in ("hard", "soft"):
        for key in ("test_errors", "relative_error_reduction", "gain_beyond_control", "inference_cases_per_second"):
            vals, m, s = hand("generalist+specialists", key, v)
            got = sm["variants"][v][key]
            assert got["values"] == vals and got["mean"] == pytest.approx(m) and got["std"] == pytest.approx(s)
        # Table 4 summed over the seeds
        combos = [r for r in recs if r["model"] == "generalist+specialists" and r["variant"] == v]
        summed = E.coverage_over_seeds(recs)[v]
        assert sum(r["n"] for r in summed) == 2 * 240
        for row in summed:
            k = row["covering"]
            parts = [x for c in combos for x in c["by_coverage"] if x["covering"] == k]
            assert row["n"] == sum(x["n"] for x in parts)
            assert row["correct_combined"] - row["correct_generalist"] == sum(x["delta_correct"] for x in parts)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Mean ± std over seeds 0, 1" in md and "summed over seeds 0, 1" in md
    assert (tmp_path / "out" / "gain_vs_covering.png").stat().st_size > 0
    import json

    subsets = json.loads((tmp_path / "out" / "subsets.json").read_text())
    assert sorted(subsets["by_seed"]) == ["0", "1"] and subsets["subsets"] == subsets["by_seed"]["0"]["subsets"]
    with pytest.raises(DistillError, match="seeds"):
        E.run(dataset="synthetic", preset="tiny", out=tmp_path / "x", progress=False, seeds=(1, 1), log=lambda m: None)


def test_double_mnist_tiny_on_a_fake_mnist(tmp_path, monkeypatch):
    """The double-mnist preset path (selection, specialists, control, distill-back) on 600 pairs
    built from a generated stand-in for MNIST."""
    import distill.data.mnist as M
    from distill.data import Dataset
    from distill.experiments import specialists as E

    g = torch.Generator().manual_seed(0)
    templates = torch.rand(10, 784, generator=g)

    def split(n):
        y = torch.arange(10).repeat(n)
        return (0.7 * templates[y] + 0.3 * torch.rand(len(y), 784, generator=g)), y

    xtr, ytr = split(20)
    xte, yte = split(5)
    fake = Dataset("mnist", xtr, ytr, xte, yte, tuple("0123456789"), "fake", (28, 28))
    monkeypatch.setattr(M, "load_mnist", lambda data_dir=None, log=print: fake)
    recs = E.run(dataset="double-mnist", preset="tiny", out=tmp_path / "out", progress=False, variants=("hard",),
                 distill_back=True, log=lambda m: None)
    names = [r["model"] for r in recs]
    assert names[0] == "selection" and {"generalist", "generalist+specialists", "generalist+extra",
                                        "distilled-back", "generalist-finetuned"} <= set(names)
    gen = next(r for r in recs if r["model"] == "generalist")
    assert gen["params"] == 1568 * 16 + 16 + 16 * 100 + 100 and len(gen["subsets_described"]) == len(gen["subsets"])
    combo = next(r for r in recs if r["model"] == "generalist+specialists")
    assert sum(row["n"] for row in combo["by_coverage"]) == 200


def test_cli_flags_of_selection_and_seeds():
    from distill.checks import check_number_flags
    from distill.cli import build_parser

    def parse(argv):  # as distill.cli.main does: numeric flags are checked and converted after parsing
        args = build_parser().parse_args(argv)
        check_number_flags(args)
        return args

    args = parse(["reproduce", "specialists", "--dataset", "double-mnist", "--preset", "paper",
                  "--seeds", "0", "1", "2", "--no-select", "--specialist-epochs", "3",
                  "--cluster-temperature", "2", "--holdout", "500"])
    assert args.dataset == "double-mnist" and args.seeds == [0, 1, 2] and args.seed is None
    assert args.select is False and args.specialist_epochs == 3 and args.cluster_temperature == 2.0
    assert args.holdout == 500
    args = parse(["specialists", "--select", "--seed", "4"])
    assert args.select is True and args.seed == 4 and args.seeds is None
    assert parse(["specialists"]).select is None
    for bad in (["--seed", "1", "--seeds", "2"], ["--select", "--no-select"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["specialists", *bad])
        assert e.value.code == 2
