"""Checkpoints: safetensors weights + a JSON sidecar. Loading never unpickles anything.

``save_checkpoint("run/teacher", model, meta)`` writes ``run/teacher.safetensors`` and
``run/teacher.json``; the sidecar holds the architecture (to rebuild the model), the caller's
metadata (hyper-parameters, data fingerprint, seed, metrics), package versions and the
SHA-256 of the weights file, so a sidecar never pairs with the wrong weights. Both files are
written to temporary names and renamed, weights first, so a crash leaves the old pair intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from distill.errors import DistillError
from distill.models import build_model

FORMAT = "distill-checkpoint/1"


def versions() -> dict:
    import numpy
    import safetensors

    from distill import __version__

    return dict(distill=__version__, torch=torch.__version__, numpy=numpy.__version__,
                safetensors=safetensors.__version__, python=platform.python_version())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def stem_of(path: str | os.PathLike) -> Path:
    """``run/teacher``, ``run/teacher.json`` and ``run/teacher.safetensors`` all name one checkpoint."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p


def save_tensors(stem: Path, tensors: dict[str, torch.Tensor], sidecar: dict) -> Path:
    """Write ``stem.safetensors`` then ``stem.json`` (with the weights' SHA-256), atomically."""
    stem = stem_of(stem)
    blob = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    sidecar = dict(sidecar, format=FORMAT, weights_sha256=hashlib.sha256(blob).hexdigest(), versions=versions())
    atomic_write_json(stem.with_suffix(".json"), sidecar)
    return stem


def read_format_json(path: Path, fmt: str, damaged: str, wrong: str, error=DistillError) -> dict:
    """Read a JSON object whose ``format`` field must equal ``fmt``. Invalid JSON raises
    ``error("<path> is not valid JSON (...); <damaged>")``; another object raises
    ``error("<path> is not <wrong>")``."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}); {damaged}") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{path} is not {wrong}")
    return record


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and cross-check a tensor file and its sidecar; errors say what to do."""
    stem = stem_of(path)
    wpath, jpath = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    for p in (wpath, jpath):
        if not p.is_file():
            raise DistillError(f"checkpoint file {p} not found; check the path (a checkpoint is a "
                               ".safetensors file with a .json sidecar)")
    sidecar = read_format_json(jpath, FORMAT, "the checkpoint is damaged, retrain it",
                               f"a distill checkpoint sidecar (format {FORMAT!r} expected)")
    blob = wpath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sidecar.get("weights_sha256"):
        raise DistillError(f"{wpath} does not match its sidecar {jpath} (SHA-256 differs); "
                           "the checkpoint is damaged or mixed up, retrain it")
    try:
        tensors = st_load(blob)
    except SafetensorError as e:
        raise DistillError(f"{wpath} is not a valid safetensors file ({e})") from None
    return tensors, sidecar


def save_checkpoint(path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """Save a model (its ``arch`` must rebuild it) with ``meta`` in the sidecar."""
    if not hasattr(model, "arch"):
        raise ValueError("only models built by distill.models (with an .arch dict) can be checkpointed")
    sidecar = dict(meta or {}, arch=model.arch, params=sum(p.numel() for p in model.parameters()))
    return save_tensors(path, model.state_dict(), sidecar)


def load_checkpoint(path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from the sidecar's ``arch`` and load its weights. Returns (model, sidecar)."""
    tensors, sidecar = load_tensors(path)
    try:
        model = build_model(sidecar["arch"])
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DistillError(f"{stem_of(path)}: the weights do not fit the architecture in the sidecar ({e})") from None
    model.eval()
    return model, sidecar


def file_sha256(path) -> str:
    """SHA-256 of a checkpoint's weights (its identity for soft-target caches)."""
    _, sidecar = load_tensors(path)
    return sidecar["weights_sha256"]
