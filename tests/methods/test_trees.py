"""distill.methods.trees.SoftTargetClassifier and the `distill reproduce trees` experiment (2-D part)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from sklearn.utils.estimator_checks import parametrize_with_checks

from distill.methods.trees import SoftTargetClassifier, count_nodes, normalize_rows, teacher_targets


@pytest.fixture(scope="module")
def moons():
    X, y = make_moons(300, noise=0.3, random_state=0)
    return X, y


def _soft(X, seed=0, k=3):
    """Smooth soft targets (a fixed random linear softmax) for ``X``."""
    w = np.random.default_rng(seed).normal(size=(X.shape[1], k))
    z = X @ w
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


# -- scikit-learn's own checks ------------------------------------------------------------------
# Every check passes for these regressors, so nothing is marked as an expected failure. Checks
# that scikit-learn itself skips here (pandas input when pandas is absent, array-API input
# without SCIPY_ARRAY_API) show up as skipped, not failed.
@parametrize_with_checks([
    SoftTargetClassifier(),
    SoftTargetClassifier(RandomForestRegressor(n_estimators=5, random_state=0)),
    SoftTargetClassifier(GradientBoostingRegressor(n_estimators=10, random_state=0)),
])
def test_sklearn_checks(estimator, check):
    check(estimator)


# -- targets ------------------------------------------------------------------------------------
def test_labels_and_one_hot_give_identical_trees(moons):
    X, y = moons
    a = SoftTargetClassifier().fit(X, y)
    b = SoftTargetClassifier().fit(X, np.eye(2)[y])
    ta, tb = a.regressor_.tree_, b.regressor_.tree_
    assert ta.node_count == tb.node_count
    np.testing.assert_array_equal(ta.feature, tb.feature)
    np.testing.assert_array_equal(ta.threshold, tb.threshold)
    np.testing.assert_array_equal(ta.value, tb.value)
    Xq = np.random.default_rng(1).normal(size=(200, 2))
    np.testing.assert_array_equal(a.predict_proba(Xq), b.predict_proba(Xq))
    np.testing.assert_array_equal(a.predict(Xq), b.predict(Xq))
    np.testing.assert_array_equal(a.classes_, [0, 1])


@pytest.mark.parametrize("k", [2, 4])
def test_tree_on_one_hot_labels_is_the_gini_classification_tree(k):
    """Squared error of one-hot targets in a node is n(1 - sum p_j^2), the Gini impurity."""
    from sklearn.datasets import make_classification

    X, y = make_classification(400, n_features=5, n_informative=3, n_classes=k, random_state=k)
    soft = SoftTargetClassifier().fit(X, y).regressor_.tree_
    hard = DecisionTreeClassifier(random_state=0).fit(X, y).tree_
    assert soft.node_count == hard.node_count
    np.testing.assert_array_equal(soft.feature, hard.feature)
    np.testing.assert_allclose(soft.threshold, hard.threshold)


def test_string_labels_round_trip(moons):
    X, y = moons
    names = np.array(["cat", "dog"])[y]
    clf = SoftTargetClassifier().fit(X, names)
    assert list(clf.classes_) == ["cat", "dog"]
    # an unpruned tree reproduces its (distinct) training points' labels exactly
    np.testing.assert_array_equal(clf.predict(X), names)
    assert clf.predict(X).dtype == names.dtype


def test_soft_targets_classes_are_column_indices(moons):
    X, _ = moons
    P = _soft(X, k=4)
    clf = SoftTargetClassifier().fit(X, P)
    np.testing.assert_array_equal(clf.classes_, np.arange(4))
    # an unpruned tree reproduces distinct training targets exactly
    np.testing.assert_allclose(clf.predict_proba(X), P, atol=1e-12)
    assert count_nodes(clf.regressor_) == clf.regressor_.tree_.node_count


def test_predict_proba_is_a_distribution_with_negative_raw_outputs(moons):
    X, y = moons
    clf = SoftTargetClassifier(LinearRegression()).fit(X, y)
    far = np.array([[10.0, -10.0], [-10.0, 10.0], [30.0, 30.0], [0.5, 0.2]])
    raw = clf.regressor_.predict(far)
    assert (raw < 0).any()  # the linear fit leaves [0, 1] far from the data
    p = clf.predict_proba(far)
    assert (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(clf.predict(far), clf.classes_[p.argmax(1)])
    assert np.isfinite(clf.predict_log_proba(far)).any()


def test_normalize_rows_formula():
    raw = np.array([[0.2, 0.6], [-0.5, 1.5], [-1.0, -2.0], [2.0, 2.0]])
    np.testing.assert_allclose(normalize_rows(raw), [[0.25, 0.75], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])


def test_gradient_boosting_is_wrapped_per_class(moons):
    X, y = moons
    clf = SoftTargetClassifier(GradientBoostingRegressor(n_estimators=20, random_state=0)).fit(X, _soft(X))
    assert isinstance(clf.regressor_, MultiOutputRegressor)
    assert len(clf.regressor_.estimators_) == 3
    rf = SoftTargetClassifier(RandomForestRegressor(n_estimators=5, random_state=0)).fit(X, _soft(X))
    assert isinstance(rf.regressor_, RandomForestRegressor)  # native multi-output: not wrapped
    for c in (clf, rf):
        p = c.predict_proba(X)
        np.testing.assert_allclose(p.sum(1), 1.0)
        assert count_nodes(c.regressor_) > 0


def test_regressor_param_is_not_modified(moons):
    X, y = moons
    reg = DecisionTreeRegressor(max_depth=3)
    clf = SoftTargetClassifier(reg).fit(X, y)
    assert clf.regressor is reg and not hasattr(reg, "tree_")
    assert clf.regressor_.get_depth() <= 3
    assert clf.get_params()["regressor__max_depth"] == 3
    clf.set_params(regressor__max_depth=5, temperature=2.0)
    assert reg.max_depth == 5 and clf.temperature == 2.0


# -- teachers -----------------------------------------------------------------------------------
def _teacher(k=3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, k))


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_teacher_module_equals_softmax_at_temperature(moons, T):
    X, _ = moons
    net = _teacher()
    with torch.no_grad():
        logits = net(torch.as_tensor(X, dtype=torch.float32)).double().numpy()
    # softmax(logits / T) in float64 the way distill.methods.trees computes it (torch's softmax, via
    # distill.losses.soften): an unpruned tree's splits can flip on 1e-16 differences in its
    # targets, so the comparison is exact; the formula itself is checked against NumPy
    P = torch.softmax(torch.as_tensor(logits) / T, 1).numpy()
    z = logits / T
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(P, e / e.sum(1, keepdims=True), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(teacher_targets(net, X, T), P)
    a = SoftTargetClassifier(temperature=T).fit(X, teacher=net)
    b = SoftTargetClassifier().fit(X, P)
    np.testing.assert_array_equal(a.classes_, np.arange(3))
    np.testing.assert_array_equal(a.regressor_.tree_.value, b.regressor_.tree_.value)
    np.testing.assert_array_equal(a.regressor_.tree_.threshold, b.regressor_.tree_.threshold)
    Xq = np.random.default_rng(3).normal(size=(100, 2))
    np.testing.assert_array_equal(a.predict_proba(Xq), b.predict_proba(Xq))
    assert net.training  # the teacher's train/eval mode is restored


def test_temperature_softens_teacher_targets(moons):
    X, _ = moons
    net = _teacher()
    sharp = SoftTargetClassifier(temperature=1.0).fit(X, teacher=net).predict_proba(X).max(1)
    soft = SoftTargetClassifier(temperature=10.0).fit(X, teacher=net).predict_proba(X).max(1)
    assert (soft <= sharp + 1e-12).all() and soft.mean() < sharp.mean()


def test_teacher_callable_and_tensor(moons):
    X, _ = moons
    P = _soft(X)
    a = SoftTargetClassifier().fit(X, P)
    b = SoftTargetClassifier(temperature=5.0).fit(X, teacher=lambda Z: _soft(Z))  # T unused: probabilities
    c = SoftTargetClassifier().fit(X, teacher=torch.tensor(P))
    for other in (b, c):
        np.testing.assert_allclose(other.predict_proba(X), a.predict_proba(X), atol=1e-12)


def test_teacher_logits_array_and_store(moons, tmp_path):
    from distill.teachers.store import key_parts, write_store

    X, _ = moons
    logits = torch.as_tensor(np.random.default_rng(4).normal(size=(len(X), 3)) * 3, dtype=torch.float32)
    P = torch.softmax(logits.double() / 2.0, 1).numpy()
    ref = SoftTargetClassifier().fit(X, P).predict_proba(X)
    a = SoftTargetClassifier(temperature=2.0).fit(X, teacher=logits, teacher_kind="logits")
    store = write_store(tmp_path / "store", logits, key_parts("t", "toy"))
    b = SoftTargetClassifier(temperature=2.0).fit(X, teacher=store)
    for c in (a, b):
        np.testing.assert_allclose(c.predict_proba(X), ref, atol=1e-12)
    with pytest.raises(ValueError, match="negative"):  # logits read as probabilities
        SoftTargetClassifier().fit(X, teacher=logits)
    with pytest.raises(ValueError, match="teacher_kind"):
        SoftTargetClassifier().fit(X, teacher=logits, teacher_kind="soft")


def _linear_teacher(X, y):
    """A 2-class torch teacher whose logit difference is a logistic regression fit to (X, y)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression().fit(X, y)
    net = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        net.weight.copy_(torch.as_tensor(np.vstack([np.zeros(2), lr.coef_[0]])))
        net.bias.copy_(torch.as_tensor([0.0, lr.intercept_[0]]))
    return net.float(), lr


def test_teacher_with_labels_for_grid_search(moons):
    X, y = moons
    teacher, _ = _linear_teacher(X, y)
    clf = SoftTargetClassifier().fit(X, y, teacher=teacher)  # y only for scoring (GridSearchCV passes it)
    # the unpruned tree reproduces the teacher's soft targets, so its training predictions are the
    # teacher's: its score is the teacher's accuracy, far above the majority-class baseline (0.5)
    with torch.no_grad():
        teacher_pred = teacher(torch.as_tensor(X, dtype=torch.float32)).argmax(1).numpy()
    np.testing.assert_array_equal(clf.predict(X), teacher_pred)
    majority = np.bincount(y).max() / len(y)
    assert clf.score(X, y) == pytest.approx((teacher_pred == y).mean())
    assert clf.score(X, y) >= majority + 0.25
    with pytest.raises(ValueError, match="0..1"):
        SoftTargetClassifier().fit(X, np.where(y == 1, "b", "a"), teacher=_teacher(2))


# -- errors -------------------------------------------------------------------------------------
def test_errors(moons):
    X, y = moons
    P = _soft(X)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        SoftTargetClassifier().fit(X, P[:-5])
    with pytest.raises(ValueError, match="rows but X has"):
        SoftTargetClassifier().fit(X, teacher=P[:-5])
    with pytest.raises(ValueError, match="negative"):
        SoftTargetClassifier().fit(X, P - 0.5)
    with pytest.raises(ValueError, match="do not sum to 1"):
        SoftTargetClassifier().fit(X, P * 2)
    with pytest.raises(ValueError, match="do not sum to 1"):
        SoftTargetClassifier().fit(X, teacher=lambda Z: np.ones((len(Z), 3)))
    with pytest.raises(ValueError, match="requires y"):
        SoftTargetClassifier().fit(X)
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetClassifier(temperature=0).fit(X, y)
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetClassifier(temperature=float("nan")).fit(X, teacher=_teacher())
    with pytest.raises(ValueError, match="Unknown label type"):
        SoftTargetClassifier().fit(X, np.linspace(0, 1, len(X)))
    clf = SoftTargetClassifier().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :1])
    with pytest.raises(ValueError, match="logits of shape"):
        SoftTargetClassifier().fit(X, teacher=torch.nn.Flatten(0))


def test_column_vector_labels_warn_and_match(moons):
    X, y = moons
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = SoftTargetClassifier().fit(X, y[:, None])
    assert any("column-vector y" in str(x.message) for x in w)
    np.testing.assert_array_equal(a.predict(X), SoftTargetClassifier().fit(X, y).predict(X))


# -- composition --------------------------------------------------------------------------------
def test_pipeline_and_grid_search(moons):
    X, y = moons
    pipe = make_pipeline(StandardScaler(), SoftTargetClassifier())
    pipe.fit(X, y)
    assert pipe.score(X, y) == 1.0
    grid = GridSearchCV(pipe, {"softtargetclassifier__regressor": [DecisionTreeRegressor(random_state=0),
                                                                   DecisionTreeRegressor(max_depth=3,
                                                                                         random_state=0)]},
                        cv=3)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 2 and np.isfinite(grid.cv_results_["mean_test_score"]).all()
    assert grid.best_params_["softtargetclassifier__regressor"].max_depth in (None, 3)
    assert grid.predict_proba(X).shape == (len(X), 2)
    # a grid over the inner regressor's own parameters, with soft targets from a teacher module
    g2 = GridSearchCV(SoftTargetClassifier(), {"regressor": [DecisionTreeRegressor(random_state=0)],
                                               "regressor__min_samples_leaf": [1, 20]}, cv=3)
    g2.fit(X, y, teacher=_teacher(2))
    assert set(g2.cv_results_["param_regressor__min_samples_leaf"]) == {1, 20}


# -- the experiment -----------------------------------------------------------------------------
def _quiet(_msg):
    pass


def test_experiment_2d_tiny_writes_records_table_and_picture(tmp_path):
    from distill.experiments import trees as exp

    records = exp.run("tiny", parts=("2d",), out=tmp_path, progress=False, log=_quiet)
    assert [r["model"] for r in records] == ["teacher", "tree-hard", "tree-soft"] * 2
    assert [r["seed"] for r in records] == [0, 0, 0, 1, 1, 1]
    for r in records:
        assert r["part"] == "2d"
        for key in ("test_errors", "test_accuracy", "wall_seconds", "params", "temperature"):
            assert key in r
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["test_errors"] == round((1 - r["test_accuracy"]) * exp.PRESETS["tiny"].n_samples / 2)
    soft = [r for r in records if r["model"] == "tree-soft"]
    assert all(r["temperature"] == 1.0 for r in soft)
    # an unpruned regression tree on distinct soft targets puts every training point in its own leaf
    assert all(r["leaves"] == exp.PRESETS["tiny"].n_samples // 2 for r in soft)
    assert json.loads((tmp_path / "results.json").read_text()) == records
    md = (tmp_path / "results.md").read_text()
    assert "Noisy two-moons" in md and "tree-soft" in md and "Soft tree − teacher" in md
    assert (tmp_path / "decision_boundaries.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses the trained teachers and reproduces every number
    again = exp.run("tiny", parts=("2d",), out=tmp_path, progress=False, log=_quiet)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rs]  # noqa: E731
    assert strip(again) == strip(records)


def test_experiment_mnist_path_on_synthetic_images(tmp_path, monkeypatch):
    """The MNIST part's stages (CNN teacher, its logits in soft-target stores, temperature choice on
    held-out training examples, hard and distilled students) on a small synthetic 28x28 data set."""
    from distill.experiments import trees as exp

    g = torch.Generator().manual_seed(0)
    protos = torch.rand(10, 784, generator=g)

    def make(n):
        y = torch.arange(n) % 10
        return (protos[y] + 0.3 * torch.rand(n, 784, generator=g)).clamp(0, 1), y

    xtr, ytr = make(600)
    xte, yte = make(200)
    fake = exp.Dataset("synthetic", xtr, ytr, xte, yte, tuple("0123456789"), "synthetic-v1", (28, 28))
    monkeypatch.setattr(exp, "load_mnist_data", lambda p, data_dir=None, log=print: fake)
    records = exp.run("tiny", parts=("mnist",), seeds=2, out=tmp_path, progress=False, log=_quiet)
    assert [r["model"] for r in records] == ["cnn-teacher"] + ["student-hard", "student-distilled"] * 2
    assert [r["seed"] for r in records] == [0, 0, 0, 1, 1]
    assert all(r["part"] == "mnist" for r in records)
    chosen = records[-1]["temperature"]
    assert chosen in exp.PRESETS["tiny"].temperatures and records[1]["temperature"] is None
    for r in records[1:]:
        assert 0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["teacher_agreement"] <= 1.0
    tuning = json.loads((tmp_path / "tuning" / "results.json").read_text())
    assert sorted(r["temperature"] for r in tuning) == sorted(exp.PRESETS["tiny"].temperatures)
    assert all("held_out_errors" in r and "test_errors" not in r for r in tuning)
    # the teacher's logits: one soft-target store for the training set, one for the tuning split
    assert len(list((tmp_path / "stages" / "soft-targets").glob("soft-*/meta.json"))) == 2
    assert "Distilled − hard-label student" in (tmp_path / "results.md").read_text()
    # a fixed --temperature skips the choice
    fixed = exp.run("tiny", parts=("mnist",), out=tmp_path / "fixed", cache=tmp_path / "stages", progress=False,
                    log=_quiet, temperature=3.0)
    assert fixed[-1]["temperature"] == 3.0 and not (tmp_path / "fixed" / "tuning").exists()
    # the same teacher on the same training set: its stored logits are reused, not recomputed
    assert len(list((tmp_path / "stages" / "soft-targets").glob("soft-*/meta.json"))) == 2


# -- the library's tuning protocol (distill.methods.tuning) --------------------------------------------
def _tiny_dataset(n_train=50, n_test=20):
    from distill.data import Dataset

    g = torch.Generator().manual_seed(0)
    return Dataset("t", torch.randn(n_train, 3, generator=g), torch.arange(n_train) % 2,
                   torch.randn(n_test, 3, generator=g) + 100.0, torch.arange(n_test) % 2, ("a", "b"), "t-v1")


def test_holdout_split_never_touches_the_test_set():
    from distill.errors import DistillError
    from distill.methods.tuning import holdout_split

    data = _tiny_dataset()
    fit_idx, held, tune = holdout_split(data, 12, seed=3)
    assert len(held) == 12 and len(fit_idx) == 38
    assert sorted(fit_idx.tolist() + held.tolist()) == list(range(50))  # a partition of the training set
    assert torch.equal(tune.x_train, data.x_train[fit_idx]) and torch.equal(tune.y_train, data.y_train[fit_idx])
    assert torch.equal(tune.x_test, data.x_train[held]) and torch.equal(tune.y_test, data.y_train[held])
    assert (tune.x_test < 50).all()  # none of the test inputs (shifted by +100) is in it
    assert tune.fingerprint != data.fingerprint
    again = holdout_split(data, 12, seed=3)
    assert torch.equal(again[1], held) and again[2].fingerprint == tune.fingerprint
    assert not torch.equal(holdout_split(data, 12, seed=4)[1], held)
    for bad in (0, 50, 2.5, True):
        with pytest.raises((ValueError, DistillError)):
            holdout_split(data, bad)


def test_tune_temperature_picks_fewest_held_out_errors_lowest_t_on_ties():
    from distill.train.fit import FitResult
    from distill.train.config import TrainConfig
    from distill.methods.tuning import tune_temperature

    data = _tiny_dataset()
    errors = {1.0: 5, 2.0: 3, 4.0: 3, 8.0: 7}
    seen = []

    def fit_fn(name, d, build, config, teacher, extra):
        seen.append((name, config.temperature, d, teacher, extra))
        n = len(d.y_test)
        e = errors[config.temperature]
        return FitResult(build(), test=dict(errors=e, accuracy=1 - e / n, nll=0.0, n=n))

    cfg = TrainConfig(epochs=1, hard_weight=0.2, seed=0)
    choice = tune_temperature(lambda: torch.nn.Linear(3, 2), data, cfg, "the-teacher", [8.0, 4.0, 2.0, 1.0],
                              holdout=10, fit_fn=fit_fn, name="probe", extra=dict(part="x"))
    assert choice.temperature == 2.0  # 3 errors at T = 2 and T = 4: the lower T
    assert [c["temperature"] for c in choice.candidates] == [8.0, 4.0, 2.0, 1.0]
    assert [c["held_out_errors"] for c in choice.candidates] == [7, 3, 3, 5]
    assert all(c["n"] == 10 for c in choice.candidates) and len(choice.results) == 4
    for name, t, d, teacher, extra in seen:
        assert name == "probe" and teacher == "the-teacher" and extra == dict(part="x", held_out=10)
        assert len(d.y_train) == 40 and (d.x_test < 50).all()  # trained and scored on training rows only
    with pytest.raises(ValueError, match="teacher"):
        tune_temperature(lambda: None, data, cfg, None, [1.0], holdout=10, fit_fn=fit_fn)
    with pytest.raises(ValueError, match="temperature"):
        tune_temperature(lambda: None, data, cfg, "t", [1.0, 0.0], holdout=10, fit_fn=fit_fn)


def test_tune_temperature_default_fit_trains_real_students():
    """Without a hook, every candidate is a real distill.fit on the tune split, from a seeded build."""
    from distill.train.config import TrainConfig
    from distill.methods.tuning import tune_temperature

    x, y = make_moons(200, noise=0.2, random_state=0)
    from distill.data import Dataset

    data = Dataset("moons", torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y), torch.zeros(1, 2),
                   torch.zeros(1, dtype=torch.int64), ("0", "1"), "moons-test")
    teacher, _ = _linear_teacher(x, y)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, hard_weight=0.1)
    choice = tune_temperature(lambda: torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(),
                                                          torch.nn.Linear(8, 2)),
                              data, cfg, teacher, [1.0, 4.0], holdout=50)
    assert choice.temperature in (1.0, 4.0)
    assert [r.test["n"] for r in choice.results] == [50, 50]
    # the held-out errors are the students' real errors on the held-out training rows
    assert all(c["held_out_errors"] < 25 for c in choice.candidates)  # far better than chance on 50


def test_teacher_targets_accept_a_distill_teacher_and_an_ensemble(moons):
    from distill.teachers.teacher import Ensemble, Teacher

    X, _ = moons
    a, b = _teacher(), _teacher()
    with torch.no_grad():
        b[0].weight.mul_(-1.0)
    T = 3.0
    xt = torch.as_tensor(X, dtype=torch.float32)
    with torch.no_grad():
        mean = (torch.softmax(a(xt) / T, 1) + torch.softmax(b(xt) / T, 1)) / 2  # arithmetic mean at T
    got = teacher_targets(Ensemble([a, b]), X, T)
    np.testing.assert_allclose(got, mean.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(teacher_targets(Teacher(Ensemble([a, b])), X, T), got, atol=1e-12)
    probs = mean.double() / mean.double().sum(1, keepdim=True)
    np.testing.assert_allclose(teacher_targets(Teacher(probs.float(), kind="probs"), X, T), probs.numpy(),
                               atol=1e-6)


def test_cli_reproduce_trees_parses():
    from distill.cli import build_parser

    args = build_parser().parse_args(["reproduce", "trees", "--preset", "tiny", "--part", "2d", "--out", "x"])
    assert args.experiment == "trees" and args.part == "2d" and args.preset == "tiny"
