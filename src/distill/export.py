"""Ship a trained model: export to ONNX or TorchScript, checked against PyTorch.

``export_checkpoint("runs/s/model", format="onnx")`` rebuilds the checkpoint's model, exports it
with a dynamic batch axis (ONNX: ``torch.onnx.export``; TorchScript: ``torch.jit.script``, or
``torch.jit.trace`` for a model that cannot be scripted), loads the result back in its runtime
(ONNX Runtime; ``torch.jit.load``) and compares its outputs with the PyTorch model's on
``n_check`` inputs (uniform in [0, 1), one batch of ``n_check`` and the first one alone):
``max |export - PyTorch| <= tolerance`` or nothing is written. The file is written to a temporary
name and renamed into place only after the check.

The export carries the checkpoint's description (input shape, classes, the weights' digest) as
ONNX metadata properties / a TorchScript extra file ``distill.json``, so
:func:`export_metadata` tells which checkpoint a file was made from.

ONNX needs the optional dependencies ``onnx``, ``onnxscript`` and ``onnxruntime``:
``pip install 'distill[export]'``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
EXPORT_HINT = "pip install 'distill[export]'"
#: inputs compared between the export and PyTorch, and the largest difference allowed
CHECK_INPUTS = 1000
TOLERANCE = 1e-4
METADATA_KEY = "distill"


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely it matches PyTorch."""

    path: Path
    format: str
    max_abs_diff: float
    n_checked: int
    tolerance: float
    bytes: int
    seconds: float
    method: str  # "torch.onnx.export" | "torch.jit.script" | "torch.jit.trace"
    runtime: str  # where the check ran: "onnxruntime 1.x" | "torch.jit"


def require_onnx():
    """``(onnx, onnxruntime)``, or a one-line DistillError saying how to install them."""
    missing = []
    mods = {}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            mods[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DistillError(f"ONNX export needs {', '.join(missing)}: {EXPORT_HINT}")
    return mods["onnx"], mods["onnxruntime"]


def onnx_available() -> bool:
    try:
        require_onnx()
    except DistillError:
        return False
    return True


def example_inputs(input_shape, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` inputs of ``input_shape``, uniform in [0, 1), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *[int(s) for s in input_shape]), generator=g)


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines, warnings and log records (e.g. about torchvision ops) off."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def export_model(model: nn.Module, input_shape, out, format: str = "onnx", *, metadata: dict | None = None,
                 n_check: int = CHECK_INPUTS, tolerance: float = TOLERANCE, opset: int | None = None,
                 log=print) -> ExportResult:
    """Export ``model`` (taking inputs of ``input_shape`` per example) to ``out`` and check it
    (module docstring). A failed export or check is a :class:`DistillError`; ``out`` is then
    left as it was."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if n_check < 1:
        raise ValueError(f"n_check must be >= 1, got {n_check}")
    out = Path(out)
    if out.is_dir():
        raise DistillError(f"--out {out} is a folder; give the file to write (e.g. "
                           f"{out / ('model' + SUFFIXES[format])})")
    model = model.cpu().eval()
    meta = json.dumps(dict(metadata or {}, input_shape=[int(s) for s in input_shape]), sort_keys=True, default=str)
    x = example_inputs(input_shape, n_check, seed=1)
    with torch.no_grad():
        ref = model(x)
        ref1 = model(x[:1])
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tmp = scratch / out.name
    t0 = time.perf_counter()
    try:
        if format == "onnx":
            method, runtime, got, got1 = _onnx(model, input_shape, tmp, meta, x, opset)
        else:
            method, runtime, got, got1 = _torchscript(model, input_shape, tmp, meta, x, log)
        diff = max(float((got - ref).abs().max()), float((got1 - ref1).abs().max()))
        if got.shape != ref.shape or not diff <= tolerance:
            raise DistillError(f"the {format} export differs from PyTorch by up to {diff:.3g} on {n_check:,} inputs "
                               f"(limit {tolerance:g}); {out} was not written")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportResult(out, format, diff, n_check, tolerance, out.stat().st_size, time.perf_counter() - t0, method,
                        runtime)


def _onnx(model, input_shape, tmp: Path, meta: str, x, opset):
    onnx, ort = require_onnx()
    example = example_inputs(input_shape, 2)
    kw = dict(input_names=["input"], output_names=["logits"], external_data=False, verbose=False)
    if opset is not None:
        kw["opset_version"] = int(opset)
    try:
        with _quiet(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            torch.onnx.export(model, (example,), str(tmp), dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **kw)
    except Exception as e:  # the exporter's errors are many kinds; name the first line
        raise DistillError(f"torch.onnx.export failed for {type(model).__name__} ({_first_line(e)}); try "
                           "--format torchscript") from None
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta
    onnx.save(proto, str(tmp))
    sess = onnx_session(tmp, threads=1)
    name = sess.get_inputs()[0].name
    got = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
    got1 = torch.from_numpy(sess.run(None, {name: x[:1].numpy()})[0])
    return "torch.onnx.export", f"onnxruntime {ort.__version__}", got, got1


def _torchscript(model, input_shape, tmp: Path, meta: str, x, log):
    method = "torch.jit.script"
    try:
        with _quiet():
            scripted = torch.jit.script(model)
    except Exception as e:  # TorchScript's frontend raises many kinds
        log(f"[export] torch.jit.script cannot compile {type(model).__name__} ({_first_line(e)}); tracing it "
            "instead (the check below runs the traced module on another batch size)")
        method = "torch.jit.trace"
        try:
            with _quiet(), torch.no_grad():
                scripted = torch.jit.trace(model, example_inputs(input_shape, 2), check_trace=False)
        except Exception as e2:
            raise DistillError(f"{type(model).__name__} can be neither scripted nor traced ({_first_line(e2)})") \
                from None
    with _quiet():  # torch 2.13 deprecates torch.jit; the format still loads everywhere TorchScript does
        torch.jit.save(scripted, str(tmp), _extra_files={"distill.json": meta})
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    loaded.eval()
    try:
        with torch.no_grad():
            got, got1 = loaded(x), loaded(x[:1])
    except Exception as e:
        raise DistillError(f"the TorchScript module ({method}) fails on a batch of {len(x)} "
                           f"({_first_line(e)})") from None
    return method, "torch.jit", got, got1


def onnx_session(path, threads: int = 1):
    """An ONNX Runtime CPU session on ``threads`` threads (intra-op; inter-op 1, sequential)."""
    _, ort = require_onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise DistillError(f"ONNX Runtime cannot load {path} ({_first_line(e)})") from None


def export_metadata(path) -> dict:
    """The description a file written by :func:`export_model` carries ({} when it has none)."""
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            onnx, _ = require_onnx()
            proto = onnx.load(str(path), load_external_data=False)
            text = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
        else:
            extra = {"distill.json": ""}
            with _quiet():
                torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            text = extra["distill.json"] or None
    except DistillError:
        raise
    except Exception:  # not an export of ours, or damaged
        return {}
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def default_out(checkpoint, format: str) -> Path:
    """``runs/s/model`` -> ``runs/s/model.onnx`` (or ``.pt``)."""
    from distill.checkpoints import stem_of

    return stem_of(checkpoint).with_suffix(SUFFIXES[format])


def checkpoint_metadata(path, side: dict) -> dict:
    from distill.checkpoints import stem_of

    return dict(checkpoint=str(stem_of(path)), weights_sha256=side.get("weights_sha256"),
                classes=side.get("classes"), num_classes=side.get("num_classes"), factory=side.get("factory"))


def export_checkpoint(path, out=None, format: str = "onnx", *, input_shape=None, n_check: int = CHECK_INPUTS,
                      tolerance: float = TOLERANCE, log=print) -> ExportResult:
    """Export the checkpoint at ``path`` (rebuilt from its factory) to ``out`` (default: beside it,
    see :func:`default_out`). The input shape is the one recorded in its sidecar, else
    ``input_shape``."""
    from distill.checkpoints import load_checkpoint

    if format == "onnx":
        require_onnx()  # before loading anything
    model, side = load_checkpoint(path)
    shape = input_shape if input_shape is not None else side.get("input_shape")
    if not shape:
        raise DistillError(f"{path} records no input shape (it was not trained by distill.fit); give it with "
                           "--input-shape, e.g. --input-shape 784")
    return export_model(model, shape, out if out is not None else default_out(path, format), format,
                        metadata=checkpoint_metadata(path, side), n_check=n_check, tolerance=tolerance, log=log)
