import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from distill import soft_targets as ST
from distill import transfer as TR
from distill.models import MLP
from distill.teachers import Ensemble, module_id
from distill.training import TrainConfig, fit


@pytest.fixture()
def teacher():
    torch.manual_seed(0)
    return MLP(784, [32], 10)


def _store(tmp_path, teacher, data, name="s", **kw):
    return ST.get_store(tmp_path / name, teacher, data.x_train, teacher_id=module_id(teacher),
                        data_fingerprint=data.fingerprint, progress=False, log=lambda *_: None, **kw)


def test_lookup_is_correct_under_shuffling_and_subsetting(tmp_path, teacher, small):
    # a transfer set that is itself a subset in shuffled order
    g = torch.Generator().manual_seed(3)
    sel = TR.without_classes(small, [3])
    order = torch.randperm(len(sel.y_train), generator=g)
    tset = replace(sel, x_train=sel.x_train[order], y_train=sel.y_train[order], fingerprint=sel.fingerprint + ":perm3")
    store = _store(tmp_path, teacher, tset, selection="omit3-perm3")
    assert store.shape == (len(order), 10)
    # look rows up in several shuffled batches, as training does, and compare with a fresh forward
    perm = torch.randperm(len(order), generator=g)
    with torch.no_grad():
        for i in range(0, len(perm), 97):
            idx = perm[i:i + 97]
            assert torch.allclose(store[idx], teacher(tset.x_train[idx]), atol=1e-5)
    assert torch.allclose(store[5], teacher(tset.x_train[5:6])[0].detach(), atol=1e-5)
    assert torch.allclose(store[np.array([7, 2])], store[torch.tensor([7, 2])])


def test_float16_and_top_k(tmp_path, teacher, small):
    with torch.no_grad():
        full = teacher(small.x_train)
    s16 = _store(tmp_path, teacher, small, "f16", dtype="float16")
    assert s16.meta["dtype"] == "float16" and (tmp_path / "f16/values.npy").stat().st_size < 4 * full.numel()
    assert torch.allclose(s16.all(), full, atol=2e-3 * full.abs().max().item())
    sk = _store(tmp_path, teacher, small, "top3", top_k=3)
    got = sk[torch.arange(20)]
    want = full[:20]
    vals, idx = want.topk(3, 1)
    assert torch.allclose(got.gather(1, idx), vals, atol=1e-6)  # the top 3 exactly
    assert torch.allclose(got.mean(1), want.mean(1), atol=1e-5)  # row means exact
    others = torch.ones_like(want, dtype=torch.bool).scatter_(1, idx, False)
    rest = (want * others).sum(1) / 7
    assert torch.allclose(got[others].view(20, 7), rest.unsqueeze(1).expand(20, 7), atol=1e-5)
    assert sk.key != s16.key


def test_key_changes_with_teacher_data_selection_and_inputs(small):
    base = dict(teacher_id="aaa", data_fingerprint="fp", selection="all")
    k0 = ST.store_key(ST.key_parts(**base))
    for change in (dict(teacher_id="bbb"), dict(data_fingerprint="fp2"), dict(selection="omit=3")):
        assert ST.store_key(ST.key_parts(**{**base, **change})) != k0
    assert ST.store_key(ST.key_parts(**base, dtype="float16")) != k0
    assert ST.store_key(ST.key_parts(**base, temperature=20.0)) != k0
    assert ST.store_key(ST.key_parts(**base)) == k0
    x = small.x_train
    assert ST.inputs_digest(x) == ST.inputs_digest(x.clone())
    assert ST.inputs_digest(x) != ST.inputs_digest(x.flip(0))
    with pytest.raises(ValueError, match="dtype"):
        ST.key_parts("a", "b", dtype="int8")
    with pytest.raises(ValueError, match="identity"):
        ST.key_parts("", "b")


def test_stale_store_is_rebuilt_not_reused(tmp_path, teacher, small):
    logs = []
    s1 = ST.get_store(tmp_path / "s", teacher, small.x_train, teacher_id=module_id(teacher),
                      data_fingerprint=small.fingerprint, progress=False, log=logs.append)
    again = ST.get_store(tmp_path / "s", teacher, small.x_train, teacher_id=module_id(teacher),
                         data_fingerprint=small.fingerprint, progress=False, log=logs.append)
    assert again.key == s1.key and "reusing" in logs[-1]
    # retrain the teacher in place: a new identity, the same path
    torch.manual_seed(1)
    t2 = MLP(784, [32], 10)
    s2 = ST.get_store(tmp_path / "s", t2, small.x_train, teacher_id=module_id(t2),
                      data_fingerprint=small.fingerprint, progress=False, log=logs.append)
    assert any("stale" in m for m in logs) and s2.key != s1.key
    with torch.no_grad():
        assert torch.allclose(s2[torch.arange(10)], t2(small.x_train[:10]), atol=1e-5)
    # other inputs under the same fingerprint string are caught by the inputs digest
    s3 = ST.get_store(tmp_path / "s", t2, small.x_train.flip(0), teacher_id=module_id(t2),
                      data_fingerprint=small.fingerprint, progress=False, log=logs.append)
    assert s3.key != s2.key
    with pytest.raises(ST.StaleStoreError):
        ST.SoftTargetStore.open(tmp_path / "s", expect_key=s1.key)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old-*"))  # nothing left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-meta", "bad-json", "no-values"])
def test_damaged_store_is_an_error_that_says_rebuild(tmp_path, teacher, small, damage):
    s = _store(tmp_path, teacher, small)
    vpath, mpath = tmp_path / "s/values.npy", tmp_path / "s/meta.json"
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
    else:
        vpath.unlink()
    with pytest.raises(ST.StoreError, match="rebuild"):
        _store(tmp_path, teacher, small)
    rebuilt = _store(tmp_path, teacher, small, rebuild=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt[torch.arange(4)], teacher(small.x_train[:4]), atol=1e-5)


def test_fit_with_store_equals_fit_with_tensor(tmp_path, teacher, small):
    data = small.subset(train=300, test=100)
    store = _store(tmp_path, teacher, data)
    cfg = TrainConfig(epochs=2, batch_size=50, lr=0.05, loss="distill", temperature=4.0, seed=0)
    torch.manual_seed(5)
    a = fit(MLP(784, [16], 10), data, cfg, teacher_targets=store, progress=False)
    torch.manual_seed(5)
    b = fit(MLP(784, [16], 10), data, cfg, teacher_targets=store.all(), progress=False)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_jitter_never_pairs_cached_targets_with_other_inputs(tmp_path, teacher, small):
    data = small.subset(train=200, test=50)
    store = _store(tmp_path, teacher, data)
    cfg = TrainConfig(epochs=1, batch_size=50, loss="distill", temperature=4.0, jitter=2)
    logs = []
    targets, on_the_fly = ST.targets_for_training(cfg, teacher, store, log=logs.append)
    assert targets is None and on_the_fly is teacher and "on the fly" in logs[0]
    with pytest.raises(ValueError, match="jitter"):
        fit(MLP(784, [16], 10), data, cfg, teacher_targets=store, progress=False)
    res = fit(MLP(784, [16], 10), data, cfg, teacher=on_the_fly, progress=False)
    assert res.metrics["n"] == 50
    assert ST.targets_for_training(TrainConfig(), teacher, store) == (store, None)


def test_arithmetic_ensemble_store_uses_its_temperature(tmp_path, small):
    torch.manual_seed(0)
    e = Ensemble([MLP(784, [16], 10), MLP(784, [16], 10)], combine="arithmetic")
    x = small.x_train[:64]
    s = ST.get_store(tmp_path / "e", e, x, teacher_id=e.teacher_id, data_fingerprint="fp", temperature=20.0,
                     progress=False, log=lambda *_: None)
    assert torch.allclose(torch.softmax(s.all() / 20.0, -1), e.probabilities(x, 20.0), atol=1e-5)
    assert s.meta["temperature"] == 20.0
    assert json.loads((tmp_path / "e/meta.json").read_text())["key"] == s.key
