"""Teachers: one notion of a teacher for training, :class:`Teacher`, over a module, an ensemble,
a checkpoint or stored soft targets; and :class:`Ensemble`, the combination rules.

An ensemble of ``M`` teachers with logits ``z_1 .. z_M`` is combined at temperature ``T``:

* ``arithmetic``: ``p = (1/M) * sum_m softmax(z_m / T)`` (the mean of the members' distributions);
* ``geometric``:  ``p ∝ exp((1/M) * sum_m log softmax(z_m / T)) = softmax(mean_m(z_m) / T)``
  (the normalised geometric mean; the per-member log-normalisers cancel in the normalisation).

A :class:`Teacher` always hands the student *effective logits at T*, ``v_T = T * log p``,
because ``softmax(v_T / T) = p`` exactly: the ordinary distillation loss at the same T then sees
precisely the combined distribution. For the geometric mean ``v_T`` equals the mean logits up
to a per-example constant, so it is valid at every T; for the arithmetic mean it is only valid
at the T it was computed for, and the same holds for a teacher given as probabilities ``p``:
there the teacher's identity includes T (:attr:`Teacher.id`, the one place that decides it).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.digest import json_digest, model_signature, tensor_digest, tensors_digest
from distill.errors import DistillError
from distill.checks import check_temperature as _check_temperature
from distill.checkpoints import load_checkpoint
from distill.metrics import predict_logits
from distill.modelio import logits_of, model_forward
from distill.teachers import store as soft_targets
from distill.teachers.store import SoftTargetStore, unfinished_build
from distill.teachers.token_store import TokenStore, get_token_store

COMBINES = ("arithmetic", "geometric")


def combine_probabilities(logits: torch.Tensor, temperature: float, combine: str = "arithmetic") -> torch.Tensor:
    """Combine member logits ``(M, B, N)`` into one distribution ``(B, N)`` at temperature T.

    arithmetic: ``p = (1/M) sum_m softmax(z_m/T)``; geometric: ``p = softmax(((1/M) sum_m z_m)/T)``,
    the normalised geometric mean of the members' ``softmax(z_m/T)``. Computed as
    ``exp(v_T / T)`` from :func:`effective_logits`, the one place that implements both rules.
    """
    return torch.exp(effective_logits(logits, temperature, combine) / _check_temperature(temperature))


def effective_logits(logits: torch.Tensor, temperature: float, combine: str = "arithmetic") -> torch.Tensor:
    """Logits ``v_T = T * log p`` of the combined distribution ``p`` at temperature T, so that
    ``softmax(v_T / T) = p`` (see :func:`combine_probabilities`). Computed in log space:
    arithmetic ``v_T = T * (logsumexp_m log softmax(z_m/T) - log M)``; geometric
    ``v_T = T * log softmax(mean_m z_m / T)``."""
    t = _check_temperature(temperature)
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if logits.dim() != 3 or logits.shape[0] < 1:
        raise ValueError(f"member logits must have shape (members, batch, classes), got {tuple(logits.shape)}")
    if combine == "arithmetic":
        logp = torch.logsumexp(torch.log_softmax(logits / t, dim=-1), dim=0) - math.log(logits.shape[0])
    else:
        logp = torch.log_softmax(logits.mean(dim=0) / t, dim=-1)
    return t * logp


class Ensemble(nn.Module):
    """An ensemble of teachers (``nn.Module`` s or checkpoint paths), combined at temperature T
    by the arithmetic or the normalised geometric mean of their softened distributions.

    ``forward(x)`` returns the effective logits at T = 1 (so an ensemble evaluates like one
    model); ``probabilities(x, T)`` the combined distribution; ``logits(x, T)`` the effective
    logits at T. Members run in eval mode under ``no_grad``. Inside training, :class:`Teacher`
    asks for ``logits(x, T)`` at the objective's temperature.
    """

    def __init__(self, models, combine: str = "arithmetic", *, trust_factory: bool = False):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one teacher")
        members, ids = [], []
        for m in models:
            if isinstance(m, (str, Path)):
                m, mid = load_teacher(m, trust_factory=trust_factory)
            elif isinstance(m, nn.Module):
                mid = module_id(m)
            else:
                raise ValueError(f"ensemble members must be nn.Modules or checkpoint paths, got {type(m).__name__}")
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            members.append(m)
            ids.append(mid)
        self.members = nn.ModuleList(members)
        self.member_ids = ids
        self.combine = combine

    @property
    def teacher_id(self) -> str:
        """The members' ids and the combination (T is added by :attr:`Teacher.id` where it matters)."""
        blob = "|".join(self.member_ids) + f"|{self.combine}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def depends_on_temperature(self) -> bool:
        """Arithmetic effective logits change with T beyond a per-example shift; geometric do not."""
        return self.combine == "arithmetic" and len(self.members) > 1

    @torch.no_grad()
    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, B, N)`` logits of every member."""
        for m in self.members:
            m.eval()
        outs = [m(x) for m in self.members]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) > 1:
            raise ValueError(f"ensemble members disagree on the output shape: {sorted(shapes)}")
        return torch.stack(outs)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return combine_probabilities(self.member_logits(x), temperature, self.combine)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return effective_logits(self.member_logits(x), temperature, self.combine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x, 1.0)


def module_id(model: nn.Module, factory=None) -> str:
    """SHA-256 (16 hex) of a module's identity, for cache keys: its parameters and buffers and its
    structure (:func:`distill.train.rundir.model_signature`: class, ``repr`` of the module tree, the recorded
    factory with its keyword arguments), so the same weights under another activation, dropout or
    factory argument are another teacher."""
    return json_digest(dict(weights=tensors_digest(model.state_dict()), structure=model_signature(model, factory)))


def tensor_id(t: torch.Tensor) -> str:
    """SHA-256 (16 hex) of a tensor's dtype, shape and bytes."""
    return tensor_digest(t)[:16]


def load_teacher(path, trust_factory: bool = False) -> tuple[nn.Module, str]:
    """A checkpoint as a frozen teacher and its identity (:func:`module_id` with the factory its
    sidecar records). The sidecar's factory is imported only when distill's own or trusted
    (:func:`distill.checkpoints.load_checkpoint`)."""

    model, side = load_checkpoint(path, trust_factory=trust_factory)
    for p in model.parameters():
        p.requires_grad_(False)
    spec = side.get("factory") or None
    return model, module_id(model, spec and (spec["target"], spec.get("kwargs", {})))


KINDS = ("logits", "probs")


class Teacher:
    """What a student learns from, whatever it is made of:

    * an ``nn.Module`` (eval mode, ``no_grad``, frozen), an :class:`Ensemble`, or a checkpoint path
      (several paths: an ensemble combined by ``combine``);
    * stored outputs, one row per training example, looked up by example index: a
      :class:`~distill.teachers.store.SoftTargetStore`, or a tensor/array of logits (``kind="logits"``)
      or of probabilities (``kind="probs"``, rows summing to 1).

    The teacher owns its identity, :attr:`id` (weights digest, combination, and the temperature
    where the outputs depend on it), and the one route by which soft targets reach training,
    :meth:`targets`: a lookup of the stored (or once-computed) rows by example index when the
    inputs are not augmented, else a forward pass on the *same* augmented batch the student sees.
    ``store`` names a folder where outputs computed once are kept as a soft-target store (keyed by
    :attr:`id` and the data's fingerprint) and reused by later runs.
    """

    def __init__(self, teacher, *, kind: str | None = None, temperature: float = 1.0, combine: str = "arithmetic",
                 id: str | None = None, store=None, trust_factory: bool = False, top_k: int | None = None):

        self.temperature = _check_temperature(temperature)
        self.store_root = Path(store) if store is not None else None
        # a language model's store keeps its k most likely next tokens per position (default 32); a
        # student taught from them learns another loss, so k is part of the teacher's identity
        self.top_k = top_k
        self.module, self.table, self._id = None, None, id
        if isinstance(teacher, Teacher):
            self.__dict__.update(teacher.__dict__)
            self.temperature = _check_temperature(temperature)
            return
        if isinstance(teacher, (list, tuple)) and teacher and all(isinstance(t, (str, Path)) for t in teacher):
            teacher = (teacher[0] if len(teacher) == 1
                       else Ensemble(teacher, combine=combine, trust_factory=trust_factory))
        if (isinstance(teacher, (str, Path)) and Path(teacher).is_dir()
                and not (Path(teacher) / "model.safetensors").is_file()):  # a soft-target store (not a run folder)

            done = unfinished_build(teacher)
            if done is not None:
                raise DistillError(f"{teacher} is an unfinished soft-target store ({done}); run the build again "
                                   "(the same `distill targets ... --out` or build_store call) to finish it")
            if not (Path(teacher) / "meta.json").is_file():
                raise DistillError(f"{teacher} is a folder but neither a checkpoint nor a soft-target store (no "
                                   "meta.json); give a checkpoint path (run/model) or a store folder")
            teacher = SoftTargetStore.open(teacher, verify=True)
        if isinstance(teacher, (str, Path)):
            teacher, mid = load_teacher(teacher, trust_factory=trust_factory)
            self._id = self._id or mid
        if isinstance(teacher, nn.Module):
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.module = teacher
            self.kind = "logits"
            if self._id is None:
                self._id = teacher.teacher_id if isinstance(teacher, Ensemble) else module_id(teacher)
        elif isinstance(teacher, SoftTargetStore):
            self.table, self.kind = teacher, "logits"
            self._id = self._id or f"store:{teacher.key}"
        elif isinstance(teacher, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(np.asarray(teacher) if isinstance(teacher, np.ndarray) else teacher).detach()
            if t.dim() < 2 or not t.is_floating_point():
                raise ValueError(f"stored teacher outputs must be a float array (examples, classes, ...), "
                                 f"got {tuple(t.shape)} {t.dtype}")
            if not torch.isfinite(t).all():
                raise ValueError("stored teacher outputs contain NaN or infinity")
            self.kind = kind or "logits"
            if self.kind == "probs":
                sums = t.sum(1)
                if (t < 0).any() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                    raise ValueError("teacher probabilities must be >= 0 and sum to 1 over the classes; "
                                     "pass kind='logits' for logits")
            self.table = t.float().cpu()
            self._id = self._id or f"{self.kind}:{tensor_id(self.table)}"
        else:
            raise ValueError(f"a teacher must be an nn.Module, an Ensemble, a checkpoint path, a SoftTargetStore "
                             f"or a tensor of outputs, got {type(teacher).__name__}")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "probs" and self.module is not None:
            raise ValueError("kind='probs' is for stored probabilities; a module's outputs are logits")

    # ------------------------------------------------------------ identity
    @property
    def depends_on_temperature(self) -> bool:
        return self.kind == "probs" or bool(getattr(self.module, "depends_on_temperature", False))

    @property
    def id(self) -> str:
        """The teacher's identity in run keys and store keys: its weights (or outputs) digest, and
        ``@T<T>`` when the effective logits depend on the temperature."""
        base = f"{self._id}+top{self.top_k}" if self.top_k is not None else self._id
        return f"{base}@T{self.temperature:g}" if self.depends_on_temperature else base

    def at(self, temperature: float) -> "Teacher":
        """The same teacher producing effective logits at ``temperature`` (the objective's)."""
        return Teacher(self, temperature=temperature)

    # ------------------------------------------------------------ outputs
    @property
    def stored(self) -> bool:
        return self.table is not None

    def _effective(self, out: torch.Tensor) -> torch.Tensor:
        if self.kind == "probs":
            return self.temperature * torch.log(out.clamp_min(1e-30))
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Effective logits at :attr:`temperature` for the inputs ``x`` (runs the module)."""
        if self.module is None:
            raise ValueError("this teacher is stored outputs only; it cannot run on new (e.g. augmented) inputs "
                             "- pass the teacher module instead")
        if isinstance(self.module, Ensemble):
            return self.module.logits(x, self.temperature)
        self.module.eval()
        return logits_of(model_forward(self.module, x))

    def prepare(self, source, augmented: bool, device=None, progress: bool = True, log=print) -> None:
        """Before training: compute the outputs over ``source`` once when they can be reused every
        epoch (a module, inputs not augmented, batches that know their indices), in memory or in the
        soft-target store under ``store``; check that stored rows match the source."""
        if self.table is not None:
            if augmented:
                raise ValueError("stored teacher outputs cannot be used with augmentation (jitter): the student "
                                 "would see shifted inputs paired with the outputs for unshifted ones; pass "
                                 "the teacher module instead")
            if not source.indexable:
                raise ValueError("stored teacher outputs are looked up by example index, but this data source "
                                 "(a DataLoader or stream) does not give indices; pass the teacher module, or "
                                 "the data as tensors or a map-style Dataset")
            if len(self.table) != source.n:
                raise ValueError(f"the teacher's stored outputs have {len(self.table)} rows for "
                                 f"{source.n} training examples")
            return
        if getattr(source, "task", None) == "lm" and self.store_root is not None and not augmented:
            # a language model's logits over every position and the whole vocabulary are too large
            # to keep: its stored form is the top-k token store (T = 1 log-probabilities)
            plain = self.at(1.0)
            plain.top_k = None  # the store's own key covers k; its teacher is the model itself
            self.table = get_token_store(self.store_root, plain, source, k=self.top_k or 32, device=device,
                                         progress=progress, log=log)
            return
        if augmented or not source.indexable or getattr(source, "task", None) == "lm":
            return  # runs on every batch
        if self.store_root is not None:
            self.table = soft_targets.get_store(self.store_root, self, source, progress=progress, log=log)
        else:

            self.table = predict_logits(self.forward, source, device=device, progress=progress, desc="teacher")

    def targets(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """Effective logits at T for one batch: stored rows ``idx`` when the outputs were computed
        once (inputs not augmented), else a forward pass on ``x`` (the batch the student sees)."""
        if isinstance(self.table, TokenStore) and idx is not None:  # the (ids, logprobs) top-k pair
            ids, logprobs = self.table.lookup(idx)
            return ids.to(x_device(x)), logprobs.to(x_device(x))
        if self.table is not None and idx is not None:
            rows = self.table[idx]
            bad = ~torch.isfinite(rows).flatten(1).all(1)
            if bad.any():
                where = f" in {self.table.path}" if hasattr(self.table, "path") else ""
                first = ", ".join(str(int(i)) for i in torch.as_tensor(idx)[bad][:5])
                raise DistillError(f"the teacher's stored outputs{where} hold NaN or infinity (rows {first}); "
                                   "the store is damaged: delete it to rebuild")
            return self._effective(rows.to(x.device))
        return self.forward(x)

    @property
    def device(self) -> torch.device | None:
        """Where the teacher's module lives (None for stored outputs)."""
        p = next(self.module.parameters(), None) if self.module is not None else None
        return p.device if p is not None else None

    def to(self, device) -> "Teacher":
        if self.module is not None:
            self.module.to(device)
        return self


def x_device(x) -> torch.device:
    """Where a batch's inputs (a tensor or a dict of tensors) live."""
    return next(iter(x.values())).device if isinstance(x, dict) else x.device


def as_teacher(teacher, temperature: float = 1.0) -> Teacher | None:
    """``teacher`` (anything :class:`Teacher` accepts, or a Teacher) at ``temperature``; None stays None."""
    if teacher is None:
        return None
    return teacher.at(temperature) if isinstance(teacher, Teacher) else Teacher(teacher, temperature=temperature)
