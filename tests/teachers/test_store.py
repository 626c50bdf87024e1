import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from distill.teachers import store as ST
from distill.data import transfer as TR
from distill.models.classifiers import MLP
from distill.data.sources import as_source
from distill.teachers.teacher import Ensemble, Teacher, module_id
from distill.train.config import TrainConfig
from distill.train.fit import fit
from conftest import quiet




@pytest.fixture()
def teacher():
    torch.manual_seed(0)
    return MLP(64, [32], 10)


def _store(tmp_path, teacher, data, name="s", **kw):
    return ST.get_store(tmp_path / name, Teacher(teacher), data, progress=False, log=quiet, **kw)


def test_lookup_is_correct_under_shuffling_and_subsetting(tmp_path, teacher, toy):
    # a transfer set that is itself a subset in shuffled order
    g = torch.Generator().manual_seed(3)
    sel = TR.without_classes(toy, [3])
    order = torch.randperm(len(sel.y_train), generator=g)
    tset = replace(sel, x_train=sel.x_train[order], y_train=sel.y_train[order])
    store = _store(tmp_path, teacher, tset)
    assert store.shape == (len(order), 10) and store.path.parent == tmp_path / "s"
    assert store.path.name == f"soft-{store.key}"
    # look rows up in several shuffled batches, as training does, and compare with a fresh forward
    perm = torch.randperm(len(order), generator=g)
    with torch.no_grad():
        for i in range(0, len(perm), 97):
            idx = perm[i:i + 97]
            assert torch.allclose(store[idx], teacher(tset.x_train[idx]), atol=1e-5)
        assert torch.allclose(store[5], teacher(tset.x_train[5:6])[0], atol=1e-5)
    assert torch.allclose(store[np.array([7, 2])], store[torch.tensor([7, 2])])


def test_float16_and_top_k(tmp_path, teacher, toy):
    with torch.no_grad():
        full = teacher(toy.x_train)
    s16 = _store(tmp_path, teacher, toy, "f16", dtype="float16")
    assert s16.meta["dtype"] == "float16" and (s16.path / "values.npy").stat().st_size < 4 * full.numel()
    assert torch.allclose(s16.all(), full, atol=2e-3 * full.abs().max().item())
    sk = _store(tmp_path, teacher, toy, "top3", top_k=3)
    got = sk[torch.arange(20)]
    want = full[:20]
    vals, idx = want.topk(3, 1)
    assert torch.allclose(got.gather(1, idx), vals, atol=1e-6)  # the top 3 exactly
    assert torch.allclose(got.mean(1), want.mean(1), atol=1e-5)  # row means exact
    others = torch.ones_like(want, dtype=torch.bool).scatter_(1, idx, False)
    rest = (want * others).sum(1) / 7
    assert torch.allclose(got[others].view(20, 7), rest.unsqueeze(1).expand(20, 7), atol=1e-5)
    assert sk.key != s16.key


def test_key_changes_with_teacher_data_selection_and_storage():
    base = dict(teacher_id="aaa", data_fingerprint="fp", selection="all")
    k0 = ST.store_key(ST.key_parts(**base))
    for change in (dict(teacher_id="bbb"), dict(data_fingerprint="fp2"), dict(selection="omit=3")):
        assert ST.store_key(ST.key_parts(**{**base, **change})) != k0
    assert ST.store_key(ST.key_parts(**base, dtype="float16")) != k0
    assert ST.store_key(ST.key_parts(**base, top_k=5)) != k0
    assert ST.store_key(ST.key_parts(**base)) == k0
    with pytest.raises(ValueError, match="dtype"):
        ST.key_parts("a", "b", dtype="int8")
    with pytest.raises(ValueError, match="identity"):
        ST.key_parts("", "b")
    with pytest.raises(ValueError, match="top_k"):
        ST.key_parts("a", "b", top_k=0)


def test_data_fingerprint_is_the_content(toy):
    x = toy.x_train
    assert as_source(x).fingerprint == as_source(x.clone()).fingerprint
    assert as_source(x).fingerprint != as_source(x.flip(0)).fingerprint
    assert as_source(x.double().numpy()).fingerprint == as_source(x).fingerprint  # float64 made float32 first
    assert as_source((x, toy.y_train)).fingerprint != as_source(x).fingerprint  # labels count


def test_another_teacher_or_other_inputs_get_their_own_store(tmp_path, teacher, toy):
    logs = []
    s1 = ST.get_store(tmp_path, Teacher(teacher), toy.x_train, progress=False, log=logs.append)
    assert "computing" in logs[-1]
    again = ST.get_store(tmp_path, Teacher(teacher), toy.x_train.clone(), progress=False, log=logs.append)
    assert again.key == s1.key and again.path == s1.path and "reusing" in logs[-1]
    # a retrained teacher: a new identity, a new store; the old one is left as it was
    torch.manual_seed(1)
    t2 = MLP(64, [32], 10)
    s2 = ST.get_store(tmp_path, Teacher(t2), toy.x_train, progress=False, log=logs.append)
    assert s2.key != s1.key and s2.path != s1.path and "computing" in logs[-1]
    assert s2.meta["teacher"] == module_id(t2) and s1.meta["teacher"] == module_id(teacher)
    with torch.no_grad():
        assert torch.allclose(s2[torch.arange(10)], t2(toy.x_train[:10]), atol=1e-5)
        assert torch.allclose(ST.SoftTargetStore.open(s1.path)[torch.arange(10)], teacher(toy.x_train[:10]),
                              atol=1e-5)
    # other inputs: another store
    s3 = ST.get_store(tmp_path, Teacher(t2), toy.x_train.flip(0), progress=False, log=logs.append)
    assert s3.key != s2.key
    with pytest.raises(ST.StaleStoreError, match="another teacher"):
        ST.SoftTargetStore.open(s1.path, expect_key=s2.key)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old-*"))  # nothing left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-meta", "bad-json", "no-values", "deep-json"])
def test_damaged_store_is_an_error_that_says_rebuild(tmp_path, teacher, toy, damage):
    s = _store(tmp_path, teacher, toy)
    vpath, mpath = s.path / "values.npy", s.path / "meta.json"
    del s
    if damage == "truncate":
        vpath.write_bytes(vpath.read_bytes()[:-100])
    elif damage == "flip":
        b = bytearray(vpath.read_bytes())
        b[-5] ^= 0xFF
        vpath.write_bytes(bytes(b))
    elif damage == "no-meta":
        mpath.unlink()
    elif damage == "bad-json":
        mpath.write_text("{not json")
    elif damage == "deep-json":
        mpath.write_text("[" * 100_000 + "]" * 100_000)
    else:
        vpath.unlink()
    with pytest.raises(ST.StoreError, match="rebuild"):
        _store(tmp_path, teacher, toy)
    rebuilt = _store(tmp_path, teacher, toy, rebuild=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt[torch.arange(4)], teacher(toy.x_train[:4]), atol=1e-5)


def test_fit_with_store_equals_fit_with_tensor(tmp_path, teacher, toy):
    data = toy.subset(train=300, test=100)
    store = _store(tmp_path, teacher, data)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=0.05, temperature=4.0, seed=0)
    torch.manual_seed(5)
    a = fit(MLP(64, [16], 10), data, cfg, teacher=store, progress=False, log=quiet)
    torch.manual_seed(5)
    b = fit(MLP(64, [16], 10), data, cfg, teacher=store.all(), progress=False, log=quiet)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    # a store of other data (another row count) is refused
    with pytest.raises(ValueError, match="rows for 600 training examples"):
        fit(MLP(64, [16], 10), toy, cfg, teacher=store, progress=False, log=quiet)


def test_jitter_never_pairs_stored_targets_with_other_inputs(tmp_path, teacher, toy):
    data = toy.subset(train=200, test=50)
    store = _store(tmp_path, teacher, data)
    cfg = TrainConfig(epochs=1, batch_size=50, temperature=4.0, jitter=2)
    with pytest.raises(ValueError, match="jitter"):
        fit(MLP(64, [16], 10), data, cfg, teacher=store, progress=False, log=quiet)
    # a module with a store folder: with jitter nothing is stored, the teacher runs on every batch
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    res = fit(MLP(64, [16], 10), data, cfg, teacher=Teacher(teacher, store=tmp_path / "j"), progress=False, log=quiet)
    assert res.test["n"] == 50 and calls == [50] * 4 + [50]  # 4 jittered batches, then the test split once
    assert not (tmp_path / "j").exists() or not [p for p in (tmp_path / "j").iterdir() if p.is_dir()]


def test_arithmetic_ensemble_store_uses_its_temperature(tmp_path, toy):
    torch.manual_seed(0)
    e = Ensemble([MLP(64, [16], 10), MLP(64, [16], 10)], combine="arithmetic")
    x = toy.x_train[:64]
    s = ST.get_store(tmp_path, Teacher(e, temperature=20.0), x, progress=False, log=quiet)
    assert torch.allclose(torch.softmax(s.all() / 20.0, -1), e.probabilities(x, 20.0), atol=1e-5)
    assert s.meta["teacher"].endswith("@T20")
    assert json.loads((s.path / "meta.json").read_text())["key"] == s.key
    s4 = ST.get_store(tmp_path, Teacher(e, temperature=4.0), x, progress=False, log=quiet)
    assert s4.key != s.key
    assert torch.allclose(torch.softmax(s4.all() / 4.0, -1), e.probabilities(x, 4.0), atol=1e-5)
    # geometric: the same effective logits at every T (up to a per-row constant), so one store
    g = Ensemble(list(e.members), combine="geometric")
    assert (ST.get_store(tmp_path, Teacher(g, temperature=20.0), x, progress=False, log=quiet).key
            == ST.get_store(tmp_path, Teacher(g, temperature=4.0), x, progress=False, log=quiet).key)
