"""Checkpoints: safetensors weights + a JSON sidecar. Loading never unpickles anything.

``save_checkpoint("run/teacher", model, meta)`` writes ``run/teacher.safetensors`` and
``run/teacher.json``. The sidecar holds the caller's metadata (hyper-parameters, data
fingerprint, seed, metrics), the model's *factory* when it has one (an import path such as
``mypkg.models:make_cnn`` and its keyword arguments, from which :func:`load_checkpoint` rebuilds
the model), package versions and ``weights_sha256``, a digest of the tensors themselves.

Crash safety: the sidecar is also embedded in the safetensors header, and the ``.safetensors``
file is the truth; the ``.json`` beside it is a readable copy. Each file is written to a temporary
name, fsynced and renamed, so a crash at any point leaves either the old or the new checkpoint,
never a mixture: a kill between the two renames leaves new weights whose embedded sidecar is read
in preference to the older ``.json``.
"""
from __future__ import annotations

import errno
import importlib
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from distill.digest import tensors_digest
from distill.errors import DistillError

FORMAT = "distill-checkpoint/2"
#: bounds on any JSON the toolkit reads from disk (sidecars, store metadata)
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64


def versions() -> dict:
    import numpy
    import safetensors

    from distill import __version__

    return dict(distill=__version__, torch=torch.__version__, numpy=numpy.__version__,
                safetensors=safetensors.__version__, python=platform.python_version())


_FAULT_STEPS = [0]


def fault_point(step: str) -> None:
    """Fault injection for the crash-safety tests: every file-system step of a checkpoint or store
    write calls this; with ``$DISTILL_FAULT_AT=k`` the process SIGKILLs itself at the k-th step
    (``$DISTILL_FAULT_LOG``, when set, names a file that gets one line per step reached)."""
    at = os.environ.get("DISTILL_FAULT_AT")
    if at is None:
        return
    _FAULT_STEPS[0] += 1
    log = os.environ.get("DISTILL_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{_FAULT_STEPS[0]} {step}\n")
    if _FAULT_STEPS[0] == int(at):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync, rename over ``path``. A full disk is a
    :class:`DistillError` naming the file; the old ``path`` is untouched and no temporary is left."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"written {tmp}")
        os.replace(tmp, path)
        tmp = None
        fault_point(f"renamed {path}")
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DistillError(f"disk full while writing {path}; free space and rerun the same command "
                               "to resume") from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def remove_temporaries(folder: Path) -> int:
    """Delete the ``*.tmp`` files a killed write left in ``folder`` (call it while holding the
    folder's lock). Returns how many were removed."""
    n = 0
    for p in Path(folder).glob("*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def _depth(obj, limit: int) -> int:
    stack, deepest = [(obj, 1)], 1
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def safe_json_loads(text: str | bytes, what: str, fix: str, error=DistillError):
    """``json.loads`` bounded in size (``MAX_JSON_BYTES``) and nesting (``MAX_JSON_DEPTH``); any
    failure is ``error("<what> ...; <fix>")``, never a RecursionError or a bare JSONDecodeError."""
    if len(text) > MAX_JSON_BYTES:
        raise error(f"{what} is {len(text):,} bytes, more than a sidecar can be ({MAX_JSON_BYTES:,}); {fix}")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise error(f"{what} is not valid JSON ({detail}); {fix}") from None
    if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise error(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; {fix}")
    return obj


def read_format_json(path: Path, fmt: str, damaged: str, wrong: str, error=DistillError) -> dict:
    """Read a JSON object whose ``format`` field must equal ``fmt`` (bounded, see
    :func:`safe_json_loads`). Invalid JSON raises ``error("<path> is not valid JSON (...); <damaged>")``;
    another object raises ``error("<path> is not <wrong>")``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror}); {damaged}") from None
    record = safe_json_loads(raw, str(path), damaged, error)
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{path} is not {wrong}")
    return record


def stem_of(path: str | os.PathLike) -> Path:
    """``run/teacher``, ``run/teacher.json`` and ``run/teacher.safetensors`` all name one checkpoint."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p


def save_tensors(stem: Path, tensors: dict[str, torch.Tensor], sidecar: dict) -> Path:
    """Write ``stem.safetensors`` (the sidecar embedded in its header) then ``stem.json``, each
    atomically (see the module docstring)."""
    stem = stem_of(stem)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    sidecar = dict(sidecar, format=FORMAT, weights_sha256=tensors_digest(cpu), versions=versions())
    text = json.dumps(sidecar, sort_keys=True, default=str)
    try:
        blob = st_save(cpu, metadata={"distill": text})
    except (RuntimeError, ValueError, SafetensorError) as e:
        raise DistillError(f"{stem}: these tensors cannot be saved as safetensors ({e})") from None
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    atomic_write_json(stem.with_suffix(".json"), json.loads(text))
    return stem


def _embedded_sidecar(blob: bytes, wpath: Path, fix: str) -> dict:
    if len(blob) < 8:
        raise DistillError(f"{wpath} is truncated ({len(blob)} bytes); {fix}")
    n = int.from_bytes(blob[:8], "little")
    if n > min(len(blob) - 8, MAX_JSON_BYTES):
        raise DistillError(f"{wpath} is truncated or not a safetensors file (header of {n:,} bytes); {fix}")
    header = safe_json_loads(blob[8:8 + n], f"the header of {wpath}", fix)
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or "distill" not in meta:
        raise DistillError(f"{wpath} has no distill sidecar in its header (format {FORMAT!r} expected); {fix}")
    side = safe_json_loads(meta["distill"], f"the sidecar inside {wpath}", fix)
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        raise DistillError(f"{wpath} is not a distill checkpoint of format {FORMAT!r}; {fix}")
    return side


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a tensor file and its sidecar (the copy embedded in the file), checking the tensors
    against the sidecar's digest; errors say what to do."""
    stem = stem_of(path)
    wpath = stem.with_suffix(".safetensors")
    fix = "the checkpoint is damaged, retrain it (or rerun the command that wrote it)"
    if not wpath.is_file():
        raise DistillError(f"checkpoint file {wpath} not found; check the path (a checkpoint is a "
                           ".safetensors file with a .json sidecar)")
    try:
        blob = wpath.read_bytes()
    except OSError as e:
        raise DistillError(f"cannot read {wpath} ({e.strerror})") from None
    sidecar = _embedded_sidecar(blob, wpath, fix)
    try:
        tensors = st_load(blob)
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise DistillError(f"{wpath} is not a valid safetensors file ({e}); {fix}") from None
    if tensors_digest(tensors) != sidecar.get("weights_sha256"):
        raise DistillError(f"{wpath}: the weights do not match the digest in their sidecar; {fix}")
    return tensors, sidecar


# ---------------------------------------------------------------- factories

def import_factory(target: str):
    """The callable named by ``"package.module:attr"`` (``attr`` may be dotted). Imports the module;
    never unpickles."""
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise DistillError(f"a model factory must be 'package.module:callable', got {target!r}")
    module, attr = target.split(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise DistillError(f"cannot import the model factory {target!r} ({e}); is its package installed "
                           "and on PYTHONPATH?") from None
    if not callable(obj):
        raise DistillError(f"model factory {target!r} is not callable")
    return obj


def resolve_factory(model: torch.nn.Module, factory=None) -> dict | None:
    """The factory recorded for ``model``: ``factory`` (``"pkg.mod:fn"`` or ``("pkg.mod:fn", kwargs)``)
    or else the model's own ``distill_factory``; None when neither exists. Checked here: the import
    path resolves and the keyword arguments are JSON."""
    f = factory if factory is not None else getattr(model, "distill_factory", None)
    if f is None:
        return None
    target, kwargs = (f, {}) if isinstance(f, str) else tuple(f)
    if not isinstance(kwargs, dict):
        raise DistillError(f"factory keyword arguments must be a dict, got {type(kwargs).__name__}")
    try:
        kwargs = json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as e:
        raise DistillError(f"factory keyword arguments must be JSON (numbers, strings, lists, dicts): {e}") from None
    import_factory(target)
    return dict(target=target, kwargs=kwargs)


def check_checkpointable(model: torch.nn.Module, factory=None) -> dict | None:
    """Fail now, not after training, if ``model`` cannot be saved: its state must serialise as
    safetensors (e.g. no tensors sharing memory) and its factory, if any, must resolve."""
    spec = resolve_factory(model, factory)
    try:
        st_save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    except (RuntimeError, ValueError, SafetensorError) as e:
        raise DistillError(f"{type(model).__name__} cannot be checkpointed as safetensors ({e})") from None
    return spec


def save_checkpoint(path, model: torch.nn.Module, meta: dict | None = None, factory=None) -> Path:
    """Save any module's weights with ``meta`` and its factory (see :func:`resolve_factory`) in the
    sidecar."""
    spec = resolve_factory(model, factory)
    sidecar = dict(meta or {}, factory=spec, params=sum(p.numel() for p in model.parameters()))
    return save_tensors(path, model.state_dict(), sidecar)


def load_checkpoint(path, model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a checkpoint: into ``model`` when given (a module the caller built), else into a model
    rebuilt from the sidecar's factory. Returns ``(model in eval mode, sidecar)``."""
    tensors, sidecar = load_tensors(path)
    spec = sidecar.get("factory")
    if model is None:
        if not spec:
            raise DistillError(f"{stem_of(path)} records no model factory; build the model yourself and "
                               "call load_checkpoint(path, model=your_model)")
        try:
            model = import_factory(spec["target"])(**spec.get("kwargs", {}))
        except DistillError:
            raise
        except Exception as e:  # the user's factory raised: say which one
            raise DistillError(f"{stem_of(path)}: the factory {spec['target']} failed ({e})") from None
    try:
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"{stem_of(path)}: the weights do not fit this model ({first})") from None
    model.eval()
    return model, sidecar


def file_sha256(path) -> str:
    """Digest of a checkpoint's weights (its identity for soft-target caches)."""
    _, sidecar = load_tensors(path)
    return sidecar["weights_sha256"]
