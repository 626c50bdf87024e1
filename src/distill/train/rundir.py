"""Run folders: lock, skip, resume and save, outside the training loop.

A run folder holds one training run, identified by its *run key* (:func:`run_key`: the config,
the objective, the model's structure, the teacher's identity and the digests of the data actually
used). Inside it:

    model.safetensors / model.json   the finished model (written once, at the end)
    metrics.csv (tensorboard/)       the logs (:mod:`distill.train.logs`)
    config.toml                      the resolved config file of the CLI command that trains here
    state.safetensors / state.json   the whole state after the last finished epoch (for resuming)
    .lock                            held (``fcntl.flock``) by the process training in the folder

:class:`RunDir` is a context manager: entering takes the lock (a second process gets a one-line
error naming the folder and the holder's pid, or waits with ``wait=True``; the kernel releases the
lock when its process dies, so a killed run never leaves a stale lock) and removes temporaries a
killed write left behind.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from distill import distributed
from distill.atomic import TMP_SUFFIX, FolderLock, atomic_write_bytes, fault_point, remove_temporaries
from distill.checkpoints import (
    is_hf_model,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
)
from distill.digest import json_digest
from distill.errors import DistillError
from distill.models.hf import save_pretrained


#: the files distill writes in a run folder (the model and its exports, the resume state, the logs,
#: the config file, the lock, a language model's tokenizer and sampled generations) and its folders
#: (TensorBoard's events, a Hugging Face model as ``save_pretrained`` writes it, the teacher's
#: cached completions): all that :func:`clear_run_folder` removes
OWNED_FILES = frozenset({"model.safetensors", "model.json", "model.onnx", "model.pt", "state.safetensors",
                         "state.json", "metrics.csv", "config.toml", "tokenizer.json", "tokenizer_config.json",
                         "generations.json", ".lock"})
OWNED_FOLDERS = frozenset({"tensorboard", "hf", "sequence-kd"})
#: ``distill export``'s scratch folders (:data:`distill.tools.export.SCRATCH_PREFIX`)
_EXPORT_SCRATCH = ".distill-export."

#: the run key that ``run_dir="name-{key}"`` folders (an experiment's stages) end with
RUN_KEY_SUFFIX = re.compile(r"-[0-9a-f]{16}$")


def run_name(folder_name: str) -> str:
    """A run folder's name for people: without the ``-<run key>`` an experiment's stage folder ends with."""
    return RUN_KEY_SUFFIX.sub("", folder_name) or folder_name


def run_key(parts: dict) -> str:
    """The one run-key function: SHA-256 (16 hex) of the canonical JSON of ``parts``."""
    return json_digest(parts)


class RunDir:
    """One run folder (see the module docstring). ``path`` may contain ``{key}``, replaced by the
    run key, so callers can keep many runs side by side without computing keys themselves."""

    def __init__(self, path, key: str, *, wait: bool = False, log=print):
        self.path = Path(str(path).replace("{key}", key))
        self.key, self.wait, self.log = key, wait, log
        self._lock = None

    # ---------------------------------------------------------------- lock
    def __enter__(self) -> "RunDir":
        if self.path.exists() and not self.path.is_dir():
            raise DistillError(f"{self.path} is a file, not a folder; choose another output folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DistillError(f"cannot create the run folder {self.path} ({e.strerror})") from None
        self._lock = FolderLock(self.path / ".lock", self.path, wait=self.wait, log=self.log)
        self._lock.__enter__()
        remove_temporaries(self.path)
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    # ---------------------------------------------------------------- contents
    @property
    def final(self) -> Path:
        return self.path / "model"

    @property
    def state(self) -> Path:
        return self.path / "state"

    def finished(self, model) -> dict | None:
        """When the folder holds this finished run: load its weights into ``model`` and return its
        sidecar. None when there is no finished run; an error when there is a different one."""
        if not (self.path / "model.safetensors").is_file():
            return None
        try:
            _, side = load_tensors(self.final)
        except DistillError as e:
            raise DistillError(f"{e} (in the run folder {self.path}: delete model.* there to retrain)") from None
        if side.get("run_key") != self.key:
            raise DistillError(f"{self.path} holds a different finished run; choose another output folder")
        load_checkpoint(self.final, model=model)
        self.log(f"[skip] {self.path} already holds this finished run")
        return side

    def resume(self) -> tuple[dict, dict] | None:
        """``(tensors, sidecar)`` of this run's last saved state, None when there is none; an error
        when the state belongs to a different run."""
        if not (self.path / "state.safetensors").is_file():
            return None
        try:
            tensors, side = load_tensors(self.state)
        except DistillError as e:
            raise DistillError(f"{e} (the resume state in {self.path}: delete state.* there to restart)") from None
        if side.get("run_key") != self.key:
            raise DistillError(f"{self.path} holds an unfinished different run; choose another output folder "
                               "or delete it")
        return tensors, side

    def write_config(self, text: str) -> None:
        """``config.toml``: the config file of the command that trains in this folder."""
        atomic_write_bytes(self.path / "config.toml", text.encode())

    def save_state(self, tensors: dict, sidecar: dict) -> None:
        save_tensors(self.state, tensors, dict(sidecar, run_key=self.key))

    def save_final(self, model, sidecar: dict, factory=None) -> None:
        """Write the finished model, then drop the resume state (a crash in between leaves both,
        and the rerun skips on the finished model)."""
        if is_hf_model(model):  # also as transformers saves it: from_pretrained(run folder / "hf")
            save_pretrained(model, self.path / "hf", tokenizer_file=self.path / "tokenizer.json")
        save_checkpoint(self.final, model, dict(sidecar, run_key=self.key), factory=factory)
        for suffix in (".safetensors", ".json"):
            (self.path / f"state{suffix}").unlink(missing_ok=True)
            fault_point(f"removed state{suffix}")


def _owned(entry: Path) -> bool:
    """Whether distill wrote ``entry`` of a run folder (:data:`OWNED_FILES`, :data:`OWNED_FOLDERS`,
    a killed write's temporary, an interrupted export's scratch folder)."""
    if entry.is_symlink():
        return False  # a link points at something distill did not write
    if entry.is_dir():
        return entry.name in OWNED_FOLDERS or entry.name.startswith(_EXPORT_SCRATCH)
    return entry.name in OWNED_FILES or entry.name.endswith(TMP_SUFFIX)


def clear_run_folder(path, log=print) -> list[str]:
    """``--restart``: remove what distill wrote in the run folder ``path`` (the finished model, the
    resume state, the logs, ...: :func:`_owned`), so that the next run there starts over. A folder
    holding anything else is left untouched: a one-line :class:`DistillError` names those entries.
    The folder's lock is held while clearing, so a run in progress there is an error too. Returns
    the names removed (``[]`` when the folder does not exist); under ``torchrun`` only process 0
    clears (the others return ``[]``)."""
    p = Path(path)
    if distributed.world()[0] != 0 or not p.exists():
        return []
    if not p.is_dir():
        raise DistillError(f"--out {p} is a file; give a folder")
    foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in p.iterdir() if not _owned(e))
    if foreign:
        from distill.checks import show_names

        raise DistillError(f"--restart clears only what distill writes in a run folder, and {p} also holds "
                           f"{show_names(foreign, 8)}: move that elsewhere, or choose another --out")
    removed = []
    with FolderLock(p / ".lock", p):
        for e in sorted(p.iterdir()):
            if e.name == ".lock":
                continue
            try:
                shutil.rmtree(e) if e.is_dir() else e.unlink(missing_ok=True)
            except OSError as err:
                raise DistillError(f"--restart cannot remove {e} ({err.strerror})") from None
            removed.append(e.name)
    if removed:
        log(f"[restart] removed {', '.join(removed)} from {p}")
    return removed
