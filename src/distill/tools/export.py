"""Ship a trained model: export to ONNX or TorchScript, checked against PyTorch.

``export_checkpoint("runs/s/model", format="onnx")`` rebuilds the checkpoint's model, exports it
with a dynamic batch axis (ONNX: ``torch.onnx.export``; TorchScript: ``torch.jit.script``, or
``torch.jit.trace`` for a model that cannot be scripted), loads the result back in its runtime
(ONNX Runtime; ``torch.jit.load``) and compares its outputs with the PyTorch model's on
``n_check`` inputs: a seeded sample of the training data the checkpoint records when it can be
read, else random inputs of both signs and several scales (:func:`check_inputs`), as one batch and
the first few alone. ``max |export - PyTorch| <= tolerance`` or nothing is written. A traced
module follows the path its example took through ``forward``, so it is traced on those same inputs
and the result says it was traced (:attr:`ExportResult.traced`).

Nothing is written over the checkpoint's own files or its training data (:func:`check_not_an_input`).
The file is written in a scratch folder beside it, ``.distill-export.<host>.<pid>.<random>``, and
renamed into place only after the check; the folder is removed on any error, and the next export
into that folder removes those an interrupted (killed) export left (:func:`sweep_scratch`).

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
import re
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.atomic import fault_point
from distill.errors import DistillError
from distill.checkpoints import load_checkpoint, stem_of
from distill.data.files import load_files

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
EXPORT_HINT = "pip install 'distill[export]'"
#: inputs compared between the export and PyTorch, and the largest difference allowed
CHECK_INPUTS = 1000
TOLERANCE = 1e-4
METADATA_KEY = "distill"
#: examples of the check batch also compared one at a time (a branch on a batch statistic such as
#: ``x.mean()`` can go another way for one example than for the whole batch)
CHECK_SINGLES = 8
RANDOM_INPUTS = "random inputs (uniform [0, 1), normal, uniform [-1, 0) and 3 x normal in turn)"
#: scratch folders: ``.distill-export.<host>.<pid>.<random>`` beside the output
SCRATCH_PREFIX = ".distill-export"
_SCRATCH_NAME = re.compile(r"^\.distill-export\.([A-Za-z0-9-]+)\.(\d+)\.[A-Za-z0-9_]+$")
#: a scratch folder untouched this long is removed whoever made it (its export cannot still be running)
SCRATCH_STALE_SECONDS = 24 * 3600


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
    inputs: str = RANDOM_INPUTS  # what the check ran on

    @property
    def traced(self) -> bool:
        """Traced, not scripted: data-dependent branches in ``forward`` are fixed to one path."""
        return self.method == "torch.jit.trace"


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


def check_inputs(input_shape, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random inputs of ``input_shape`` for checking an export when no real data is at
    hand: in turn uniform in [0, 1) (image-like), standard normal (standardised features), uniform in
    [-1, 0) and normal with standard deviation 3, so that a ``forward`` whose path depends on the
    sign or scale of its input meets both sides."""
    g = torch.Generator().manual_seed(seed)
    dims = [int(s) for s in input_shape]
    x = torch.empty((n, *dims))
    draws = (lambda m: torch.rand((m, *dims), generator=g), lambda m: torch.randn((m, *dims), generator=g),
             lambda m: -torch.rand((m, *dims), generator=g), lambda m: 3 * torch.randn((m, *dims), generator=g))
    for k, draw in enumerate(draws):
        rows = len(range(k, n, len(draws)))
        if rows:
            x[k::len(draws)] = draw(rows)
    return x


def sample_inputs(src, n: int, seed: int = 0) -> torch.Tensor:
    """A seeded random sample of ``n`` inputs of a :class:`distill.data.sources.Source` (all of them
    when it holds fewer)."""
    x, _, _ = next(iter(src.batches(n, torch.Generator().manual_seed(seed))))
    return x


def recorded_data(side: dict) -> Path | None:
    """The training data file or folder a checkpoint's sidecar records (``data_source.path``)."""
    source = side.get("data_source") or {}
    return Path(source["path"]) if isinstance(source, dict) and source.get("path") else None


def training_inputs(side: dict, input_shape, n: int) -> tuple[torch.Tensor | None, str]:
    """``(inputs, what they are)``: a sample of ``n`` examples of the training data the sidecar
    records, or ``(None, why not)`` when there is none, it cannot be read or its examples are not of
    ``input_shape``. Built-in data sets (MNIST, ...) are not loaded here: that may download them."""

    path = recorded_data(side)
    if path is None:
        return None, "the checkpoint records no data file"
    if not path.exists():
        return None, f"its training data {path} is not there"
    try:
        data = load_files(path, target=(side.get("data_source") or {}).get("target"), log=lambda *a, **k: None)
        x = sample_inputs(data.train, n)
    except Exception as e:  # noqa: BLE001 - any unreadable data only means checking on random inputs
        return None, f"its training data {path} cannot be read ({_first_line(e)})"
    if tuple(x.shape[1:]) != tuple(int(s) for s in input_shape):
        return None, f"{path}'s examples are of shape {tuple(x.shape[1:])}, not {tuple(input_shape)}"
    total = data.train.n
    what = (f"all {len(x):,} of {path}'s training examples" if total == len(x) else
            f"a sample of {path}'s training set ({len(x):,} of {total:,} examples)" if total else
            f"a sample of {len(x):,} of {path}'s training examples")
    return x.to(torch.float32), what


@contextlib.contextmanager
def _quiet():
    """The exporter's progress lines, warnings, log records (e.g. about torchvision ops or symbolic
    shapes) and the partial graphs it prints to stderr on failure off."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch._export",
                                              "torch.fx", "torch.fx.experimental.symbolic_shapes", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, \
                contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


#: terminal escape sequences (colours, cursor moves, titles) and other control characters
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain_text(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (third-party error
    messages carry colour codes that would garble a log or a terminal)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def _first_line(e: BaseException) -> str:
    text = plain_text(str(e)).strip()
    return " ".join(text.splitlines()[0].split())[:300] if text else type(e).__name__


# ---------------------------------------------------------------- files

def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: the same path once symlinks, ``.`` and ``..`` are resolved, or
    (both existing) the same inode, e.g. a hard link or another case on a case-insensitive disk."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(out, inputs: dict) -> None:
    """A one-line DistillError when ``out`` is one of ``inputs`` (``{what: path}``): an export must
    never write over the checkpoint it reads or its data."""
    out = Path(out)
    for what, path in inputs.items():
        if path is not None and _same_file(out, Path(path)):
            same = "" if str(out) == str(path) else f" ({path})"
            raise DistillError(f"--out {out} is {what}{same}, which the export reads; writing it would destroy "
                               "it: give another file with --out")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:60] or "host"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) terminates the process there; age alone decides
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def sweep_scratch(folder, log=print) -> list[Path]:
    """Remove the scratch folders of interrupted exports in ``folder``: those named
    ``.distill-export.<host>.<pid>.<random>`` whose process on this host is gone, or that nobody has
    touched for :data:`SCRATCH_STALE_SECONDS`. Nothing else is touched (not files, not symlinks, not
    other names). Returns the folders removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host, now = _host(), time.time()
    for entry in entries:
        m = _SCRATCH_NAME.match(entry.name)
        try:
            if not m or not entry.is_dir(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(m.group(2))
        if age > SCRATCH_STALE_SECONDS or (m.group(1) == host and pid != os.getpid() and not _alive(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.lexists(entry.path):
                removed.append(Path(entry.path))
    if removed:
        log(f"[export] removed {len(removed)} scratch folder(s) an interrupted export left in {folder}")
    return removed


def _scratch(folder: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=folder, prefix=f"{SCRATCH_PREFIX}.{_host()}.{os.getpid()}."))


# ---------------------------------------------------------------- export

def export_model(model: nn.Module, input_shape, out, format: str = "onnx", *, metadata: dict | None = None,
                 n_check: int = CHECK_INPUTS, tolerance: float = TOLERANCE, opset: int | None = None,
                 log=print, inputs: torch.Tensor | None = None, inputs_from: str | None = None) -> ExportResult:
    """Export ``model`` (taking inputs of ``input_shape`` per example) to ``out`` and check it
    (module docstring) on the first ``n_check`` of ``inputs`` (real examples, described by
    ``inputs_from``), else on :func:`check_inputs`. A failed export or check is a
    :class:`DistillError`; ``out`` is then left as it was."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if n_check < 1:
        raise ValueError(f"n_check must be >= 1, got {n_check}")
    out = Path(out)
    if out.is_dir():
        raise DistillError(f"--out {out} is a folder; give the file to write (e.g. "
                           f"{out / ('model' + SUFFIXES[format])})")
    shape = tuple(int(s) for s in input_shape)
    model = model.cpu().eval()
    meta = json.dumps(dict(metadata or {}, input_shape=list(shape)), sort_keys=True, default=str)
    if inputs is not None and len(inputs):
        x = torch.as_tensor(inputs)[:n_check]
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"inputs are of shape {tuple(x.shape[1:])} per example, not {shape}")
        described = inputs_from or f"{len(x):,} given inputs"
    else:
        x, described = check_inputs(shape, n_check, seed=1), RANDOM_INPUTS
    batches = [x] + [x[i:i + 1] for i in range(min(len(x), CHECK_SINGLES))]
    name = type(model).__name__
    try:
        with torch.no_grad():
            refs = [model(b) for b in batches]
    except Exception as e:  # noqa: BLE001 - a model that cannot take these inputs raises anything
        raise DistillError(f"{name} cannot run on inputs of shape {shape} ({_first_line(e)}); give the shape of "
                           "one example it takes with --input-shape") from None
    if not isinstance(refs[0], torch.Tensor):
        raise DistillError(f"{name} returns {type(refs[0]).__name__}, not one tensor; export a module whose forward "
                           "returns the logits as one tensor")
    probe = x[:2] if len(x) >= 2 else torch.cat([x, x])  # the example exported or traced: a batch of 2
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_scratch(out.parent, log=log)
    scratch = _scratch(out.parent)
    tmp = scratch / out.name
    t0 = time.perf_counter()
    try:
        if format == "onnx":
            method, runtime, run = _onnx(model, probe, tmp, meta, opset)
        else:
            method, runtime, run = _torchscript(model, probe, tmp, meta, log)
        diff = 0.0
        for b, ref in zip(batches, refs):
            got = run(b, out)
            if tuple(got.shape) != tuple(ref.shape):
                raise DistillError(f"the {format} export returns outputs of shape {tuple(got.shape)} on a batch of "
                                   f"{len(b)}, PyTorch {tuple(ref.shape)}; {out} was not written")
            diff = max(diff, float((got - ref).abs().max()))
        if not diff <= tolerance:
            why = ("; it was traced (torch.jit.script cannot compile it), which fixes branches in forward that "
                   "depend on the data to the path one example took: make forward scriptable or export with "
                   "--format onnx") if method == "torch.jit.trace" else ""
            raise DistillError(f"the {format} export differs from PyTorch by up to {diff:.3g} on {len(x):,} inputs "
                               f"(limit {tolerance:g}); {out} was not written{why}")
        fault_point(f"export written {tmp}")
        os.replace(tmp, out)
        fault_point(f"export renamed {out}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportResult(out, format, diff, len(x), tolerance, out.stat().st_size, time.perf_counter() - t0, method,
                        runtime, described)


def _onnx(model, probe, tmp: Path, meta: str, opset):
    onnx, ort = require_onnx()
    kw = dict(input_names=["input"], output_names=["logits"], external_data=False, verbose=False)
    if opset is not None:
        kw["opset_version"] = int(opset)
    try:
        with _quiet():
            torch.onnx.export(model, (probe,), str(tmp), dynamo=True,
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

    def run(b, out):
        try:
            return torch.from_numpy(sess.run(None, {name: b.numpy()})[0])
        except Exception as e:  # onnxruntime raises its own exception types
            text = _first_line(e)
            hint = (": the export fixed the batch size, as forward does when it turns x.shape[0] into a number "
                    "(int(), .item(), a constant in reshape); use x.flatten(1) or x.reshape(x.shape[0], -1)"
                    if "dimension" in text.lower() else "")
            raise DistillError(f"ONNX Runtime cannot run the export of {type(model).__name__} on a batch of "
                               f"{len(b)} ({text}){hint}; {out} was not written") from None

    return "torch.onnx.export", f"onnxruntime {ort.__version__}", run


def _torchscript(model, probe, tmp: Path, meta: str, log):
    method = "torch.jit.script"
    try:
        with _quiet():
            scripted = torch.jit.script(model)
    except Exception as e:  # TorchScript's frontend raises many kinds
        log(f"[export] torch.jit.script cannot compile {type(model).__name__} ({_first_line(e)}); tracing it "
            "instead: branches in forward that depend on the data will follow the traced example's path (the "
            "check below runs the traced module on other inputs and batch sizes)")
        method = "torch.jit.trace"
        try:
            with _quiet(), torch.no_grad():
                scripted = torch.jit.trace(model, probe, check_trace=False)
        except Exception as e2:
            raise DistillError(f"{type(model).__name__} can be neither scripted nor traced ({_first_line(e2)})") \
                from None
    with _quiet():  # torch 2.13 deprecates torch.jit; the format still loads everywhere TorchScript does
        torch.jit.save(scripted, str(tmp), _extra_files={"distill.json": meta})
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    loaded.eval()

    def run(b, out):
        try:
            with torch.no_grad():
                return loaded(b)
        except Exception as e:  # noqa: BLE001 - a TorchScript module raises anything
            raise DistillError(f"the TorchScript module ({method}) fails on a batch of {len(b)} "
                               f"({_first_line(e)}); {out} was not written") from None

    return method, "torch.jit", run


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

    return stem_of(checkpoint).with_suffix(SUFFIXES[format])


def checkpoint_metadata(path, side: dict) -> dict:

    return dict(checkpoint=str(stem_of(path)), weights_sha256=side.get("weights_sha256"),
                classes=side.get("classes"), num_classes=side.get("num_classes"), factory=side.get("factory"))


def export_checkpoint(path, out=None, format: str = "onnx", *, input_shape=None, n_check: int = CHECK_INPUTS,
                      tolerance: float = TOLERANCE, log=print, trust_factory: bool = False) -> ExportResult:
    """Export the checkpoint at ``path`` (rebuilt from its factory, which is imported only when it is
    distill's own or ``trust_factory``: :func:`distill.checkpoints.load_checkpoint`) to ``out``
    (default: beside it, see :func:`default_out`), checked on a sample of the training data its
    sidecar records (:func:`training_inputs`), else on random inputs. The input shape is
    ``input_shape`` when given, else the one recorded in its sidecar. ``out`` naming one of the
    checkpoint's files or its training data is refused before anything is written."""

    stem = stem_of(path)
    out = Path(out) if out is not None else default_out(path, format)
    check_not_an_input(out, {"the checkpoint's weights": stem.with_suffix(".safetensors"),
                             "the checkpoint's sidecar": stem.with_suffix(".json")})
    if format == "onnx":
        require_onnx()  # before loading anything
    model, side = load_checkpoint(path, trust_factory=trust_factory)
    check_not_an_input(out, {"the checkpoint's training data": recorded_data(side)})
    shape = input_shape if input_shape is not None else side.get("input_shape")
    if not shape:
        raise DistillError(f"{path} records no input shape (it was not trained by distill.fit); give it with "
                           "--input-shape, e.g. --input-shape 784")
    x, what = training_inputs(side, shape, n_check)
    if x is None and recorded_data(side) is not None:
        log(f"[export] checking on random inputs: {what}")
    return export_model(model, shape, out, format, metadata=checkpoint_metadata(path, side), n_check=n_check,
                        tolerance=tolerance, log=log, inputs=x, inputs_from=what if x is not None else None)
