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

from distill.atomic import atomic_write_bytes, atomic_write_json
from distill.digest import tensors_digest
from distill.errors import DistillError

FORMAT = "distill-checkpoint/2"
#: bounds on any JSON the toolkit reads from disk (sidecars, store metadata)
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64


def distill_version() -> str:
    """The installed package's version (read from its metadata: core imports nothing above it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distill")
    except PackageNotFoundError:
        return "unknown"


def versions() -> dict:
    import numpy
    import safetensors

    return dict(distill=distill_version(), torch=torch.__version__, numpy=numpy.__version__,
                safetensors=safetensors.__version__, python=platform.python_version())


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


#: the name of the finished model in a run folder, so that the folder itself names its checkpoint
RUN_MODEL = "model"
#: files made from a checkpoint (``distill export``), never read as one
EXPORT_SUFFIXES = (".onnx", ".pt")


def _strip(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def stem_of(path: str | os.PathLike) -> Path:
    """``run/teacher``, ``run/teacher.json`` and ``run/teacher.safetensors`` all name one checkpoint;
    a run folder holding ``model.safetensors`` (``--out`` of ``distill teacher/student``) names its
    finished model ``run/model``."""
    p = _strip(path)
    if (p / f"{RUN_MODEL}.safetensors").is_file():
        p = p / RUN_MODEL
    return p


def _not_found(path: str | os.PathLike, wpath: Path) -> str:
    """Why there is no checkpoint at ``path``, and the one probably meant when one is near."""
    p = _strip(path)
    what = "a checkpoint is a .safetensors file with a .json sidecar, or a run folder holding model.safetensors"
    if p.is_dir():
        if (p / "state.safetensors").is_file():
            return (f"{p} is a run folder without a finished model (it holds state.safetensors: the run stopped "
                    "before its last epoch); rerun its command to finish it")
        inside = sorted([q.with_suffix("") for q in p.glob("*.safetensors") if q.stem != "state"]
                        + [q for q in p.iterdir() if q.is_dir() and (q / f"{RUN_MODEL}.safetensors").is_file()])
        if len(inside) == 1:
            return f"{p} is a folder without model.safetensors; did you mean {inside[0]}?"
        if inside:
            from distill.checks import show_names

            return f"{p} is a folder without model.safetensors; it holds the checkpoints {show_names(inside, 10)}"
        return f"{p} is a folder without model.safetensors ({what})"
    near = []
    if p.parent.is_dir():
        near = [q.with_suffix("").name for q in p.parent.glob("*.safetensors") if q.stem != "state"]
        near += [q.name for q in p.parent.iterdir() if q.is_dir() and (q / f"{RUN_MODEL}.safetensors").is_file()]
    from distill.checks import did_you_mean

    guess = did_you_mean(p.name, near) if near else None
    hint = f"did you mean {p.parent / guess}?" if guess else f"check the path ({what})"
    return f"checkpoint file {wpath} not found; {hint}"


def save_tensors(stem: Path, tensors: dict[str, torch.Tensor], sidecar: dict) -> Path:
    """Write ``stem.safetensors`` (the sidecar embedded in its header) then ``stem.json``, each
    atomically (see the module docstring)."""
    stem = _strip(stem)  # written where it is named: a folder is not resolved to its model here
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
    if Path(path).suffix in EXPORT_SUFFIXES:
        raise DistillError(f"{path} is an export, not a checkpoint: give the checkpoint it was made from "
                           f"({Path(path).with_suffix('')}){' (distill evaluate also takes the .onnx file)' if Path(path).suffix == '.onnx' else ''}")
    stem = stem_of(path)
    wpath = stem.with_suffix(".safetensors")
    fix = "the checkpoint is damaged, retrain it (or rerun the command that wrote it)"
    if not wpath.is_file():
        raise DistillError(_not_found(path, wpath))
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
    check_sidecar(sidecar, wpath, fix)
    return tensors, sidecar


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: the sidecar fields distill reads back, and what each must be when present (not None)
SIDECAR_FIELDS = {
    "factory": (dict, "an object {target, kwargs}"),
    "input_shape": (lambda v: isinstance(v, list) and 0 < len(v) <= 8 and all(_is_int(d) and 0 < d < 1 << 31 for d in v),
                    "a list of positive integers"),
    "num_classes": (lambda v: _is_int(v) and 0 < v < 1 << 31, "a positive integer"),
    "classes": (lambda v: isinstance(v, list) and len(v) < 1 << 24, "a list"),
    "dataset": (str, "a string"),
    "data_source": (dict, "an object"),
    "data_fingerprint": (str, "a string"),
    "test_fingerprint": (str, "a string"),
    "run_key": (str, "a string"),
    "history": (list, "a list"),
    "epoch": (_is_int, "an integer"),
}


def check_sidecar(sidecar: dict, where, fix: str) -> None:
    """Every field of :data:`SIDECAR_FIELDS` present in ``sidecar`` has its type, so the commands
    that read them fail in one line on a crafted or damaged file, not deep inside."""
    for name, (kind, what) in SIDECAR_FIELDS.items():
        v = sidecar.get(name)
        if v is None:
            continue
        ok = isinstance(v, kind) if isinstance(kind, type) else kind(v)
        if not ok:
            raise DistillError(f"{where}: the sidecar's {name} is not {what}; {fix}")
    source = sidecar.get("data_source")
    if source is not None and not all(isinstance(source.get(k), (str, type(None))) for k in ("path", "target")):
        raise DistillError(f"{where}: the sidecar's data_source is malformed; {fix}")
    size = (source or {}).get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(_is_int(v) and 0 < v <= 1 << 16 for v in size)):
        raise DistillError(f"{where}: the sidecar's data_source.image_size is not two positive integers; {fix}")
    cats = sidecar.get("categories")
    if cats is not None and not (isinstance(cats, dict) and all(
            isinstance(k, str) and isinstance(v, list) and v and all(isinstance(t, str) for t in v)
            for k, v in cats.items())):
        raise DistillError(f"{where}: the sidecar's categories is not a map of column names to lists of texts; {fix}")


# ---------------------------------------------------------------- factories
#
# A checkpoint's sidecar may name a factory, code that rebuilds the model. Loading a file must not
# run code its author chose (that is what safetensors exists for), so a factory is imported only
# when it is one of distill's own model classes below, or the user trusts it: per call
# (``trust_factory=True`` / ``--trust-factory``) or by module prefix in ``$DISTILL_TRUSTED_MODULES``.

#: the model factories distill ships: rebuilt from any checkpoint without trust (exact names, so a
#: dotted attribute path cannot reach other code through a distill module)
#: the factory recorded for a Hugging Face causal LM: ``distill.models.hf.causal_lm`` over its config
HF_FACTORY = "distill.models:causal_lm"
#: the factory of :class:`distill.models.Standardize`, a wrapper whose ``model`` keyword is the
#: inner model's factory spec (built by the same trust rules as any other)
STANDARDIZE_FACTORY = "distill.models:Standardize"
OWN_FACTORIES = frozenset({
    "distill.models:MLP", "distill.models:CNN", "distill.models:ConvNet", STANDARDIZE_FACTORY, "distill.models:ResNet", "distill.models:GPT", HF_FACTORY,
    "distill.segmentation:DeepLabV3", "distill.segmentation:MobileNetSeg",
})
#: stable factory names recorded before a module moved -> where the callable lives now (checkpoints
#: written by earlier versions keep loading; the recorded name also stays the run keys' name)
FACTORY_ALIASES = {
    "distill.segmentation:DeepLabV3": "distill.models.segmentation:DeepLabV3",
    "distill.segmentation:MobileNetSeg": "distill.models.segmentation:MobileNetSeg",
}
#: environment variable: comma-separated module prefixes whose factories checkpoints may name
TRUST_ENV = "DISTILL_TRUSTED_MODULES"


def parse_factory_target(target) -> tuple[str, str]:
    """``"package.module:attr"`` as ``(module, attr)``; anything else is a one-line error."""
    if (not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":"))
            or len(target) > 300 or not all(part.isidentifier() for side in target.split(":")
                                              for part in side.split("."))):
        shown = repr(target) if len(repr(target)) <= 80 else repr(target)[:77] + "..."
        raise DistillError(f"a model factory must be 'package.module:callable', got {shown}")
    module, attr = target.split(":")
    return module, attr


def trusted_prefixes() -> tuple[str, ...]:
    """The module prefixes listed in ``$DISTILL_TRUSTED_MODULES`` (comma-separated)."""
    return tuple(p.strip() for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip())


def factory_is_trusted(target: str, trust: bool = False) -> bool:
    """Whether a checkpoint may import ``target``: one of :data:`OWN_FACTORIES`, ``trust`` given,
    or its module equal to or inside a prefix of ``$DISTILL_TRUSTED_MODULES`` (``mypkg`` covers
    ``mypkg.models`` but not ``mypkg_evil``)."""
    if target in OWN_FACTORIES or trust:
        return True
    module, _ = parse_factory_target(target)
    return any(module == p or module.startswith(p + ".") for p in trusted_prefixes())


def import_factory(target: str):
    """The callable named by ``"package.module:attr"`` (``attr`` may be dotted). Imports the module;
    never unpickles. The caller decides whether ``target`` may be imported (the user named it, or
    :func:`factory_is_trusted`)."""
    module, attr = parse_factory_target(FACTORY_ALIASES.get(target, target))
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


def _factory_spec(spec, where) -> tuple[str, dict]:
    """A sidecar's ``factory`` entry checked for shape: ``{"target": str, "kwargs": {str: JSON}}``."""
    if not isinstance(spec, dict) or not isinstance(spec.get("target"), str):
        raise DistillError(f"{where}: the sidecar's factory entry is malformed; the checkpoint is damaged, or "
                           "load it into a model you build: load_checkpoint(path, model=your_model)")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise DistillError(f"{where}: the factory's keyword arguments must be a JSON object")
    parse_factory_target(spec["target"])
    return spec["target"], kwargs


def build_from_factory(spec, where, tensors: dict | None = None, trust_factory: bool = False):
    """The model a sidecar's factory builds, as an ``nn.Module``. Nothing is imported unless
    :func:`factory_is_trusted`; distill's own factories are first built on the ``meta`` device and
    must declare exactly the shapes of ``tensors`` (so a sidecar cannot make them allocate a huge
    model); any failure is one line naming ``where``."""
    target, kwargs = _factory_spec(spec, where)
    if not factory_is_trusted(target, trust_factory):
        module = target.split(":")[0]
        raise DistillError(
            f"{where} names code outside distill ({target}); nothing was imported. If you trust its author, "
            f"pass trust_factory=True (CLI: --trust-factory) or add {module.split('.')[0]!r} to "
            f"${TRUST_ENV}; or build the model yourself and call load_checkpoint(path, model=your_model)")
    fn = import_factory(target)
    if target == STANDARDIZE_FACTORY:  # preprocessing in front of a model: the inner one built first, as any other
        inner = None if tensors is None else {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        kwargs = dict(kwargs, model=build_from_factory(kwargs.get("model"), where, inner, trust_factory))

    def call():
        try:
            return fn(**kwargs)
        except DistillError:
            raise
        except Exception as e:  # the factory raised: say which one, in one line
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DistillError(f"{where}: the factory {target} failed ({first})") from None

    if target in OWN_FACTORIES and tensors is not None:
        with torch.device("meta"):
            shell = call()
        want = {k: tuple(v.shape) for k, v in tensors.items()}
        got = {k: tuple(v.shape) for k, v in shell.state_dict().items()} if isinstance(shell, torch.nn.Module) else {}
        # an entry the file leaves out must be a tied copy of one it holds (the same shape)
        extra = {k: s for k, s in got.items() if k not in want}
        if (any(got.get(k) != s for k, s in want.items()) or not got
                or any(s not in set(want.values()) for s in extra.values())):
            raise DistillError(f"{where}: the factory {target} with the recorded arguments does not build a model "
                               "of the saved weights' shapes; the checkpoint is damaged or was altered")
    model = call()
    if not isinstance(model, torch.nn.Module):
        raise DistillError(f"{where}: the factory {target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def is_hf_model(model) -> bool:
    """Whether ``model`` is a Hugging Face ``PreTrainedModel`` (duck-typed: a config with a
    ``model_type`` and ``save_pretrained``), without importing transformers."""
    config = getattr(model, "config", None)
    return hasattr(model, "save_pretrained") and isinstance(getattr(config, "model_type", None), str)


def hf_factory(model) -> tuple[str, dict] | None:
    """For a Hugging Face model, the factory that rebuilds it from its config (:data:`HF_FACTORY`);
    else None."""
    if not is_hf_model(model):
        return None
    return HF_FACTORY, dict(config=json.loads(model.config.to_json_string(use_diff=False)))


def resolve_factory(model: torch.nn.Module, factory=None) -> dict | None:
    """The factory recorded for ``model``: ``factory`` (``"pkg.mod:fn"`` or ``("pkg.mod:fn", kwargs)``)
    or else the model's own ``distill_factory``; None when neither exists. Checked here: the import
    path resolves and the keyword arguments are JSON."""
    f = factory if factory is not None else getattr(model, "distill_factory", None) or hf_factory(model)
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


def shared_names(model: torch.nn.Module) -> dict[str, str]:
    """The state-dict entries that share memory with an earlier entry (tied weights, e.g. a
    language model's output layer and its token embedding): ``{later name: first name}``.
    safetensors stores each tensor once, so these are left out on saving and restored on loading."""
    first: dict[tuple, str] = {}
    tied = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device.type == "meta":
            continue
        where = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if where in first:
            tied[name] = first[where]
        else:
            first[where] = name
    return tied


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the tied duplicates (:func:`shared_names`)."""
    tied = shared_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in tied}


def fill_tied(model: torch.nn.Module, tensors: dict) -> dict:
    """``tensors`` with every tied entry of ``model`` that a checkpoint left out taken from the
    entry it shares memory with."""
    out = dict(tensors)
    for name, src in shared_names(model).items():
        if name not in out and src in out:
            out[name] = out[src]
    return out


def check_checkpointable(model: torch.nn.Module, factory=None) -> dict | None:
    """Fail now, not after training, if ``model`` cannot be saved: its state must serialise as
    safetensors (e.g. no tensors sharing memory) and its factory, if any, must resolve."""
    spec = resolve_factory(model, factory)
    try:
        st_save({k: v.detach().contiguous().cpu() for k, v in unique_state(model).items()})
    except (RuntimeError, ValueError, SafetensorError) as e:
        raise DistillError(f"{type(model).__name__} cannot be checkpointed as safetensors ({e})") from None
    return spec


def save_checkpoint(path, model: torch.nn.Module, meta: dict | None = None, factory=None) -> Path:
    """Save any module's weights with ``meta`` and its factory (see :func:`resolve_factory`) in the
    sidecar."""
    spec = resolve_factory(model, factory)
    sidecar = dict(meta or {}, factory=spec, params=sum(p.numel() for p in model.parameters()))
    return save_tensors(path, unique_state(model), sidecar)


def load_checkpoint(path, model: torch.nn.Module | None = None, *,
                    trust_factory: bool = False) -> tuple[torch.nn.Module, dict]:
    """Load a checkpoint: into ``model`` when given (a module the caller built: nothing of the file
    is executed), else into a model rebuilt from the sidecar's factory, which is imported only when
    it is distill's own or trusted (``trust_factory=True``, or ``$DISTILL_TRUSTED_MODULES``; see
    :func:`build_from_factory`). Returns ``(model in eval mode, sidecar)``."""
    tensors, sidecar = load_tensors(path)
    spec = sidecar.get("factory")
    if model is None:
        if not spec:
            raise DistillError(f"{stem_of(path)} records no model factory; build the model yourself and "
                               "call load_checkpoint(path, model=your_model)")
        model = build_from_factory(spec, stem_of(path), tensors, trust_factory=trust_factory)
    elif not isinstance(model, torch.nn.Module):
        raise DistillError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
    try:
        model.load_state_dict(fill_tied(model, tensors))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"{stem_of(path)}: the weights do not fit this model ({first})") from None
    model.eval()
    return model, sidecar


def file_sha256(path) -> str:
    """Digest of a checkpoint's weights (its identity for soft-target caches)."""
    _, sidecar = load_tensors(path)
    return sidecar["weights_sha256"]
