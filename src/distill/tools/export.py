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

A language model (sidecar ``task == "lm"``: :class:`distill.models.GPT`, a Hugging Face causal LM,
or any ``forward(input_ids, attention_mask)`` returning logits) goes through :func:`export_lm`:
inputs ``input_ids`` and ``attention_mask`` (int64) with dynamic ``batch`` and ``seq`` axes (``seq``
up to its block size), output ``logits`` ``(batch, seq, vocab)``, exported by
``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` (TorchScript: ``torch.jit.trace``). It is
checked on token sequences of several lengths (the whole context, 1, half, ...: :func:`lm_check_lengths`),
right-padded in batches and each alone, compared at the real tokens with the same tolerance: windows
of its recorded training text tokenized by the ``tokenizer.json`` beside it when both are at hand
(:func:`text_sequences`), else random token ids. Its metadata adds ``task``, ``vocab_size``,
``block_size`` and the tokenizer's digest.

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
from distill.checkpoints import STANDARDIZE_FACTORY, load_checkpoint, stem_of
from distill.data.files import load_files
from distill.data.text import TextTokenizer, decode_text
from distill.modelio import context_length, logits_of

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
        source = side.get("data_source") or {}
        data = load_files(path, target=source.get("target"), image_size=source.get("image_size"),
                          categories=side.get("categories"), features=side.get("features"), log=lambda *a, **k: None)
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
    t0 = time.perf_counter()
    with _scratch_file(out, log) as tmp:
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
        _publish(tmp, out)
    return ExportResult(out, format, diff, len(x), tolerance, out.stat().st_size, time.perf_counter() - t0, method,
                        runtime, described)


@contextlib.contextmanager
def _scratch_file(out: Path, log):
    """The path to write ``out``'s export to: in a fresh scratch folder beside ``out`` (the ones
    interrupted exports left there swept first), removed when the block ends, however it ends."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_scratch(out.parent, log=log)
    scratch = _scratch(out.parent)
    try:
        yield scratch / out.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """The checked export ``tmp`` renamed to ``out`` (atomic: ``out`` is the old file or the new)."""
    fault_point(f"export written {tmp}")
    os.replace(tmp, out)
    fault_point(f"export renamed {out}")


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


# ---------------------------------------------------------------- language models

#: the lengths of a language model's check sequences, as functions of its block size ``L``, in the
#: order ``n_check`` takes them: the whole context, one token, half, then the rest (duplicates dropped)
LM_CHECK_LENGTHS = (lambda L: L, lambda L: 1, lambda L: L // 2, lambda L: 5, lambda L: 2, lambda L: L - 1,
                    lambda L: L // 4, lambda L: 3 * L // 4)
LM_INPUTS = ("input_ids", "attention_mask")
#: the most text read from a language model's recorded training data for its check sequences
LM_TEXT_BYTES = 1 << 20
#: the longest check sequence (a Hugging Face config's context can be 100,000s of positions)
LM_CHECK_LONGEST = 2048


def lm_check_lengths(block_size: int, n: int = len(LM_CHECK_LENGTHS)) -> list[int]:
    """The lengths of the first ``n`` check sequences of a language model of ``block_size``
    positions (:data:`LM_CHECK_LENGTHS` of ``min(block_size, LM_CHECK_LONGEST)``, clipped to at
    least 1, each once)."""
    top = min(int(block_size), LM_CHECK_LONGEST)
    lengths: list[int] = []
    for f in LM_CHECK_LENGTHS:
        k = min(max(1, int(f(top))), top)
        if k not in lengths:
            lengths.append(k)
    return lengths[:max(1, n)]


def _lengths_text(seqs) -> str:
    return ", ".join(str(len(s)) for s in seqs)


def random_sequences(lengths, vocab_size: int, seed: int = 1) -> list[torch.Tensor]:
    """Seeded random token-id sequences (int64, uniform over ``[0, vocab_size)``) of ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, int(vocab_size), (int(k),), generator=g) for k in lengths]


def lm_block_size(model, side: dict) -> int | None:
    """The longest input a language model takes: its ``block_size`` (:class:`distill.models.GPT`),
    else a Hugging Face config's ``n_positions`` / ``max_position_embeddings``, else the sidecar's
    (the length of the blocks it was trained on)."""
    n = context_length(model)
    v = side.get("block_size")
    return n if n is not None else v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def recorded_text(side: dict) -> Path | None:
    """The text file or folder a language model was trained on (the sidecar's ``dataset``, as
    ``distill teacher --task lm --data PATH`` records it), when it names one that is there."""
    name = side.get("dataset")
    if not isinstance(name, str) or not name or name == "gutenberg":  # the shipped corpus is not read here
        return None
    path = Path(name)
    return path if path.exists() else None


def text_sequences(checkpoint, side: dict, lengths) -> tuple[list[torch.Tensor] | None, str]:
    """``(sequences, what they are)``: token windows of ``lengths`` from the start of the training
    text the sidecar records, tokenized by the ``tokenizer.json`` beside the checkpoint; or
    ``(None, why not)``. At most :data:`LM_TEXT_BYTES` of the text (its first ``*.txt`` file for a
    folder) is read; the shipped corpus (``gutenberg``) is not loaded here (that may download it)."""
    name = side.get("dataset")
    if not isinstance(name, str) or not name:
        return None, "the checkpoint records no training text"
    if name == "gutenberg":
        return None, "its training text is the shipped corpus (gutenberg), which export does not load"
    path = Path(name)
    if not path.exists():
        return None, f"its training text {path} is not there"
    tok_file = stem_of(checkpoint).parent / "tokenizer.json"
    if not tok_file.is_file():
        return None, f"no tokenizer.json beside {stem_of(checkpoint)}"
    try:
        tok = TextTokenizer.load(tok_file)
        if side.get("tokenizer") not in (None, tok.digest):
            return None, f"{tok_file} is not the tokenizer {stem_of(checkpoint)} was trained with"
        file = path if path.is_file() else min((f for f in path.rglob("*.txt") if f.is_file()),
                                               key=lambda f: f.relative_to(path).as_posix(), default=None)
        if file is None:
            return None, f"its training text {path} holds no *.txt file"
        with open(file, "rb") as f:
            ids = tok.encode(decode_text(f.read(LM_TEXT_BYTES), file.name).text)
    except Exception as e:  # noqa: BLE001 - unreadable text or tokenizer only means checking on random tokens
        return None, f"its training text {path} cannot be read ({_first_line(e)})"
    longest = max(lengths)
    if len(ids) < longest:
        return None, f"{file} holds {len(ids)} tokens, fewer than the {longest} of the longest check sequence"
    t = torch.tensor(ids, dtype=torch.long)
    span = len(ids) - longest + 1
    seqs = [t[(i * 7919) % span:][:k] for i, k in enumerate(lengths)]  # spread over the text read
    return seqs, (f"{len(seqs)} token windows of lengths {_lengths_text(seqs)} from {file}, tokenized by "
                  f"{tok_file}")


def lm_batches(seqs, pad_id: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, attention_mask)`` batches of the check sequences: all of them right-padded to
    the longest, all cut to half that and right-padded (another length), and each alone."""
    def batch(rows, width):
        ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return ids, mask

    longest = max(len(s) for s in seqs)
    out = [batch(seqs, longest)]
    if len(seqs) > 1 and longest > 1:
        out.append(batch([s[:max(1, longest // 2)] for s in seqs], max(1, longest // 2)))
    return out + [batch([s], len(s)) for s in seqs]


def is_hf(model) -> bool:
    """A Hugging Face ``transformers`` model (called with keywords; its output carries ``.logits``)."""
    return hasattr(model, "config") and hasattr(model, "generate")


class LMLogits(nn.Module):
    """``forward(input_ids, attention_mask)`` -> the logits tensor of a language model whose output
    is not one (a Hugging Face model, called without its key/value cache, or one returning
    ``.logits`` / ``{"logits"}``)."""

    def __init__(self, model: nn.Module, hf: bool):
        super().__init__()
        self.model, self.hf = model, hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.hf:
            return logits_of(self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
        return logits_of(self.model(input_ids, attention_mask))


def export_lm(model: nn.Module, out, format: str = "onnx", *, block_size: int, vocab_size: int | None = None,
              metadata: dict | None = None, n_check: int = CHECK_INPUTS, tolerance: float = TOLERANCE,
              opset: int | None = None, log=print, sequences=None, sequences_from: str | None = None,
              pad_id: int = 0) -> ExportResult:
    """Export a language model (``forward(input_ids, attention_mask)`` -> logits ``(B, L, V)``) to
    ``out``, with inputs ``input_ids`` and ``attention_mask`` (int64, dynamic ``batch`` and ``seq``
    axes, ``seq`` up to ``block_size``) and output ``logits`` ``(batch, seq, vocab)``, and check it
    like :func:`export_model`: on the first ``n_check`` of ``sequences`` (1-D token ids, described
    by ``sequences_from``), else on random token ids in ``[0, vocab_size)`` of the lengths
    :func:`lm_check_lengths` gives, batched by :func:`lm_batches` (right padding with ``pad_id``);
    the logits are compared at the real (unpadded) positions. ONNX goes through the dynamo exporter
    (``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)``); TorchScript traces ``forward``
    on a padded batch, and a trace that does not hold at other lengths is refused (use ONNX)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if n_check < 1:
        raise ValueError(f"n_check must be >= 1, got {n_check}")
    out = Path(out)
    if out.is_dir():
        raise DistillError(f"--out {out} is a folder; give the file to write (e.g. "
                           f"{out / ('model' + SUFFIXES[format])})")
    L = int(block_size)
    model = model.cpu().eval()
    name = type(model).__name__
    hf = is_hf(model)
    net = LMLogits(model, hf=True) if hf else model
    if vocab_size is None:
        vocab_size = getattr(model, "vocab_size", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if sequences is not None and len(sequences):
        seqs = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in sequences][:n_check]
        if any(len(s) < 1 or len(s) > L for s in seqs):
            raise ValueError(f"check sequences must hold 1 to block_size ({L}) tokens, got lengths "
                             f"{_lengths_text(seqs)}")
        described = sequences_from or f"{len(seqs)} given token sequences of lengths {_lengths_text(seqs)}"
    else:
        if not vocab_size:
            raise DistillError(f"{name}'s vocabulary size is not known (the checkpoint records no vocab_size)")
        seqs = random_sequences(lm_check_lengths(L, n_check), vocab_size)
        described = (f"{len(seqs)} sequences of random token ids in [0, {vocab_size}) of lengths "
                     f"{_lengths_text(seqs)}")
    described += " (right-padded in batches and each alone; compared at the real tokens)"
    batches = lm_batches(seqs, pad_id)
    try:
        with torch.no_grad():
            refs = [net(ids, mask) for ids, mask in batches]
            if not hf and not isinstance(refs[0], torch.Tensor):
                net = LMLogits(model, hf=False)
                refs = [logits_of(r) for r in refs]
    except Exception as e:  # noqa: BLE001 - a model that cannot take these inputs raises anything
        raise DistillError(f"{name} cannot run on token ids (batch, length) with an attention mask "
                           f"({_first_line(e)}); export takes language models whose forward(input_ids, "
                           "attention_mask) returns logits") from None
    ref0 = refs[0]
    if not isinstance(ref0, torch.Tensor) or ref0.dim() != 3 or tuple(ref0.shape[:2]) != tuple(batches[0][0].shape):
        what = tuple(ref0.shape) if isinstance(ref0, torch.Tensor) else type(ref0).__name__
        raise DistillError(f"{name} returns {what} for input_ids of shape {tuple(batches[0][0].shape)}, not logits "
                           "(batch, length, vocab)")
    vocab = int(ref0.shape[-1])
    meta = json.dumps(dict(metadata or {}, task="lm", vocab_size=vocab, block_size=L,
                           inputs={k: ["batch", "seq"] for k in LM_INPUTS},
                           outputs={"logits": ["batch", "seq", vocab]}), sort_keys=True, default=str)
    # the example exported or traced: two rows of half the context (at least 2 tokens, so that
    # neither axis is specialised to 1), the second right-padded
    width = min(L, max(2, L // 2))
    g = torch.Generator().manual_seed(0)
    example = (torch.randint(0, vocab, (2, width), generator=g), torch.ones(2, width, dtype=torch.long))
    example[1][1, max(1, width // 2):] = 0
    t0 = time.perf_counter()
    with _scratch_file(out, log) as tmp:
        if format == "onnx":
            method, runtime, run = _onnx_lm(net, name, example, tmp, meta, opset, L, out)
        else:
            method, runtime, run = _torchscript_lm(net, name, example, tmp, meta)
        diff = 0.0
        for (ids, mask), ref in zip(batches, refs):
            got = run(ids, mask, out)
            if tuple(got.shape) != tuple(ref.shape):
                raise DistillError(f"the {format} export returns logits of shape {tuple(got.shape)} for input_ids of "
                                   f"shape {tuple(ids.shape)}, PyTorch {tuple(ref.shape)}; {out} was not written")
            real = mask.bool()
            diff = max(diff, float((got[real] - ref[real]).abs().max()))
        if not diff <= tolerance:
            why = ("; it was traced, which fixes forward to the example's path: ONNX is the format for language "
                   "models (--format onnx)") if format == "torchscript" else ""
            raise DistillError(f"the {format} export differs from PyTorch by up to {diff:.3g} on {len(seqs)} token "
                               f"sequences (limit {tolerance:g}); {out} was not written{why}")
        _publish(tmp, out)
    return ExportResult(out, format, diff, len(seqs), tolerance, out.stat().st_size, time.perf_counter() - t0, method,
                        runtime, described)


def _onnx_lm(net, name: str, example, tmp: Path, meta: str, opset, block_size: int, out: Path):
    onnx, ort = require_onnx()
    kw = dict(input_names=list(LM_INPUTS), output_names=["logits"], external_data=False, verbose=False)
    if opset is not None:
        kw["opset_version"] = int(opset)
    batch = torch.export.Dim("batch", min=1)
    axes = {0: batch}
    if block_size >= 2:
        axes[1] = torch.export.Dim("seq", min=1, max=block_size)
    try:
        with _quiet():
            torch.onnx.export(net, example, str(tmp), dynamo=True, dynamic_shapes=(axes, axes), **kw)
    except Exception as e:  # the exporter's errors are many kinds; name the first line
        raise DistillError(f"torch.onnx.export failed for {name} ({_first_line(e)})") from None
    proto = onnx.load(str(tmp))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta
    onnx.save(proto, str(tmp))
    sess = onnx_session(tmp, threads=1)
    names = [i.name for i in sess.get_inputs()]
    if sorted(names) != sorted(LM_INPUTS):
        raise DistillError(f"the ONNX export of {name} takes inputs {names}, not {list(LM_INPUTS)}; {out} was not "
                           "written")
    for i in sess.get_inputs():
        fixed = [(axis, n) for axis, n in zip(("batch", "length"), i.shape) if isinstance(n, int)]
        if fixed and (block_size >= 2 or fixed[0][0] == "batch"):
            axis, n = fixed[0]
            raise DistillError(f"the ONNX export of {name} fixed the {axis} of {i.name} to {n}, as torch.export does "
                               "when forward turns the input's shape into a Python number (int(), .item()); keep "
                               f"shapes as tensors' sizes (x.shape[1], x.size(1)); {out} was not written")

    def run(ids, mask, out):
        try:
            return torch.from_numpy(sess.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
        except Exception as e:  # onnxruntime raises its own exception types
            raise DistillError(f"ONNX Runtime cannot run the export of {name} on {len(ids)} sequence(s) of length "
                               f"{ids.shape[1]} ({_first_line(e)}); {out} was not written") from None

    return "torch.onnx.export", f"onnxruntime {ort.__version__}", run


def _torchscript_lm(net, name: str, example, tmp: Path, meta: str):
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"distill.json": meta})
            loaded = torch.jit.load(str(tmp), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - the tracer raises anything
        raise DistillError(f"{name} cannot be traced to TorchScript ({_first_line(e)}); ONNX is the format for "
                           "language models: --format onnx") from None
    loaded.eval()

    def run(ids, mask, out):
        try:
            with torch.no_grad():
                return loaded(ids, mask)
        except Exception as e:  # noqa: BLE001 - a TorchScript module raises anything
            raise DistillError(f"the traced TorchScript module of {name} fails on {len(ids)} sequence(s) of length "
                               f"{ids.shape[1]} ({_first_line(e)}); ONNX is the format for language models: "
                               f"--format onnx; {out} was not written") from None

    return "torch.jit.trace", "torch.jit", run


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
    """What an export records of its checkpoint: where it came from, the classes, and what its
    inputs are: a table's feature columns in order and the preprocessing inside the graph (the
    standardisation of :class:`distill.models.Standardize`, so raw feature values go in)."""
    factory = side.get("factory") or {}
    inputs = dict(features=side.get("features"))
    if factory.get("target") == STANDARDIZE_FACTORY:
        inputs["preprocessing"] = ("inside the graph: (x - training mean) / training std per feature, a missing value "
                                   "(NaN) as the training mean; feed raw values")
        if side.get("categories"):
            inputs["categories"] = side["categories"]
            inputs["preprocessing"] += ("; a text column's value as its code, the index of the text in "
                                        "categories[column] (NaN when missing), one-hot encoded inside the graph")
    return dict(checkpoint=str(stem_of(path)), weights_sha256=side.get("weights_sha256"),
                classes=side.get("classes"), num_classes=side.get("num_classes"), factory=side.get("factory"),
                inputs=inputs, dataset=side.get("dataset"), data_source=side.get("data_source"),
                data_fingerprint=side.get("data_fingerprint"))  # what `distill evaluate FILE.onnx` evaluates on


def export_checkpoint(path, out=None, format: str = "onnx", *, input_shape=None, n_check: int = CHECK_INPUTS,
                      tolerance: float = TOLERANCE, log=print, trust_factory: bool = False) -> ExportResult:
    """Export the checkpoint at ``path`` (rebuilt from its factory, which is imported only when it is
    distill's own or ``trust_factory``: :func:`distill.checkpoints.load_checkpoint`) to ``out``
    (default: beside it, see :func:`default_out`), checked on a sample of the training data its
    sidecar records (:func:`training_inputs`), else on random inputs. The input shape is
    ``input_shape`` when given, else the one recorded in its sidecar. ``out`` naming one of the
    checkpoint's files or its training data is refused before anything is written. A language model
    (sidecar ``task == "lm"``) is exported by :func:`export_lm` (module docstring); ``input_shape``
    is then an error."""

    stem = stem_of(path)
    out = Path(out) if out is not None else default_out(path, format)
    check_not_an_input(out, {"the checkpoint's weights": stem.with_suffix(".safetensors"),
                             "the checkpoint's sidecar": stem.with_suffix(".json")})
    if format == "onnx":
        require_onnx()  # before loading anything
    model, side = load_checkpoint(path, trust_factory=trust_factory)
    check_not_an_input(out, {"the checkpoint's training data": recorded_data(side)})
    if side.get("task") == "lm":
        return _export_lm_checkpoint(path, out, format, model, side, input_shape=input_shape, n_check=n_check,
                                     tolerance=tolerance, log=log)
    shape = input_shape if input_shape is not None else side.get("input_shape")
    if not shape:
        raise DistillError(f"{path} records no input shape (it was not trained by distill.fit); give it with "
                           "--input-shape, e.g. --input-shape 784")
    x, what = training_inputs(side, shape, n_check)
    if x is None and recorded_data(side) is not None:
        log(f"[export] checking on random inputs: {what}")
    return export_model(model, shape, out, format, metadata=checkpoint_metadata(path, side), n_check=n_check,
                        tolerance=tolerance, log=log, inputs=x, inputs_from=what if x is not None else None)


def _export_lm_checkpoint(path, out: Path, format: str, model, side: dict, *, input_shape, n_check: int,
                          tolerance: float, log) -> ExportResult:
    """:func:`export_lm` of a language-model checkpoint (sidecar ``task == "lm"``), checked on token
    windows of its recorded training text when that and its ``tokenizer.json`` are at hand
    (:func:`text_sequences`), else on random token ids; the metadata adds the tokenizer's digest."""
    stem = stem_of(path)
    block = lm_block_size(model, side)
    if input_shape is not None:
        raise DistillError(f"--input-shape is for classifiers: {stem} is a language model, which takes token ids "
                           f"(batch, length up to {block or 'its block size'}) and an attention mask")
    if not block:
        raise DistillError(f"{stem} is a language model but neither it nor its sidecar records a block size")
    check_not_an_input(out, {"the checkpoint's tokenizer": stem.parent / "tokenizer.json",
                             "the checkpoint's training text": recorded_text(side)})
    lengths = lm_check_lengths(block, n_check)
    seqs, what = text_sequences(path, side, lengths)
    if seqs is None and side.get("dataset"):  # recorded text that cannot be used: say why
        log(f"[export] checking on random token ids: {what}")
    meta = dict(checkpoint=str(stem), weights_sha256=side.get("weights_sha256"), factory=side.get("factory"),
                tokenizer=side.get("tokenizer"))
    if side.get("block_size") not in (None, block):
        meta["trained_block_size"] = side.get("block_size")
    vocab = side.get("vocab_size")
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0 else None
    return export_lm(model, out, format, block_size=block, vocab_size=vocab, metadata=meta,
                     n_check=n_check, tolerance=tolerance, log=log, sequences=seqs,
                     sequences_from=what if seqs is not None else None)

