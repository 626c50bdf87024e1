"""The digests behind every cache key and fingerprint: their byte layouts are the ones the
docstrings state (cached runs and stores are found by them, so a change would orphan them)."""
import hashlib
import json

import torch

from distill import digest
from distill.train.rundir import run_key
from distill.teachers.store import store_key
from distill.data.sources import as_source
from distill.teachers.teacher import module_id


def _layout(h, t, name=None):
    h.update(((name + "|") if name else "").encode() + f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.contiguous().numpy().tobytes())


def test_tensors_digest_is_names_dtypes_shapes_and_bytes_in_name_order():
    a, b = torch.arange(6.0).reshape(2, 3), torch.tensor([1, 2], dtype=torch.int64)
    h = hashlib.sha256()
    _layout(h, a, "a")
    _layout(h, b, "b")
    assert digest.tensors_digest({"b": b, "a": a}) == h.hexdigest()
    assert digest.tensors_digest({"a": a, "b": b.float()}) != h.hexdigest()  # the dtype counts
    assert digest.tensors_digest({"a": a.reshape(3, 2), "b": b}) != h.hexdigest()  # so does the shape


def test_tensor_digest_keeps_order_and_marks_a_missing_tensor():
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 1, 0])
    h = hashlib.sha256()
    _layout(h, x)
    _layout(h, y)
    assert digest.tensor_digest(x, y) == h.hexdigest()
    assert digest.tensor_digest(y, x) != h.hexdigest()
    assert digest.tensor_digest(x, None) != digest.tensor_digest(x)
    assert digest.tensor_digest(x[:, :2]) == digest.tensor_digest(x[:, :2].contiguous())  # views hash their values
    assert as_source((x, y)).fingerprint == "sha256:" + h.hexdigest()[:16]


def test_json_digest_is_canonical_json():
    parts = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    want = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    assert digest.json_digest(parts) == run_key(parts) == store_key(parts) == want
    assert digest.json_digest({"a": 1}) != digest.json_digest({"a": 1.5})


def test_module_id_is_weights_and_structure_and_file_digest_the_bytes(tmp_path):
    m = torch.nn.Linear(3, 2)
    assert module_id(m) == digest.json_digest(dict(weights=digest.tensors_digest(m.state_dict()),
                                                   structure=digest.model_signature(m)))
    before = module_id(m)
    with torch.no_grad():
        m.bias[0] += 1
    assert module_id(m) != before
    # the same weights under another activation or dropout, or another factory argument, are another teacher
    torch.manual_seed(0)
    relu = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    gelu = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))
    gelu.load_state_dict(relu.state_dict())
    assert module_id(relu) != module_id(gelu)
    assert module_id(relu, ("pkg:f", {"act": "relu"})) != module_id(relu, ("pkg:f", {"act": "gelu"}))
    f = tmp_path / "blob"
    f.write_bytes(b"x" * (3 << 20) + b"tail")  # more than one read chunk
    assert digest.file_digest(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_build_digest_is_params_then_arrays():
    import numpy as np

    a, b = np.arange(6, dtype=np.uint8).reshape(2, 3), np.array([1.5], dtype=np.float32)
    h = hashlib.sha256(json.dumps({"k": 1}, sort_keys=True).encode())
    for x in (a, b):
        h.update(f"{x.dtype}|{x.shape}|".encode())
        h.update(x.tobytes())
    assert digest.build_digest({"k": 1}, a, b) == h.hexdigest()[:16]
    assert digest.build_digest({"k": 2}, a, b) != h.hexdigest()[:16]
