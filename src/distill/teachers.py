"""Teachers: single models or ensembles, loaded from modules or checkpoints.

An ensemble of ``M`` teachers with logits ``z_1 .. z_M`` is combined at temperature ``T``:

* ``arithmetic``: ``p = (1/M) * sum_m softmax(z_m / T)`` (the mean of the members' distributions);
* ``geometric``:  ``p ∝ exp((1/M) * sum_m log softmax(z_m / T)) = softmax(mean_m(z_m) / T)``
  (the normalised geometric mean; the per-member log-normalisers cancel in the normalisation).

For training, an ensemble is handed to the student as *effective logits at T*,
``v_T = T * log p``, because ``softmax(v_T / T) = p`` exactly: the ordinary distillation loss at
the same T then sees precisely the combined distribution. For the geometric mean ``v_T`` equals
the mean logits up to a per-example constant, so it is valid at every T; for the arithmetic
mean it is only valid at the T it was computed for (the soft-target key records that T).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from distill.errors import DistillError
from distill.losses import _check_temperature

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

    ``forward(x)`` returns the effective logits at ``self.temperature`` (default 1, so an
    ensemble evaluates like one model); ``probabilities(x, T)`` the combined distribution;
    ``logits(x, T)`` the effective logits at T. Members run in eval mode under ``no_grad``.
    """

    def __init__(self, models, combine: str = "arithmetic", temperature: float = 1.0):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one teacher")
        members, ids = [], []
        for m in models:
            if isinstance(m, (str, Path)):
                m, mid = load_teacher(m)
            else:
                mid = module_id(m)
            if not isinstance(m, nn.Module):
                raise ValueError(f"ensemble members must be nn.Modules or checkpoint paths, got {type(m).__name__}")
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            members.append(m)
            ids.append(mid)
        self.members = nn.ModuleList(members)
        self.member_ids = ids
        self.combine = combine
        self.temperature = _check_temperature(temperature)
        classes = {getattr(m, "arch", {}).get("num_classes") for m in members} - {None}
        if len(classes) > 1:
            raise ValueError(f"ensemble members predict different numbers of classes: {sorted(classes)}")

    @property
    def teacher_id(self) -> str:
        """Identity for caches: the members' ids and the combination (arithmetic effective logits
        depend on T, which soft-target keys record separately)."""
        blob = "|".join(self.member_ids) + f"|{self.combine}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @torch.no_grad()
    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, B, N)`` logits of every member."""
        for m in self.members:
            m.eval()
        return torch.stack([m(x) for m in self.members])

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return combine_probabilities(self.member_logits(x), temperature, self.combine)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return effective_logits(self.member_logits(x), temperature, self.combine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x, self.temperature)

    def at_temperature(self, temperature: float) -> "Ensemble":
        """The same members, with ``forward`` giving effective logits at ``temperature`` (use the
        distillation temperature when the ensemble runs on the fly inside training)."""
        e = Ensemble.__new__(Ensemble)
        nn.Module.__init__(e)
        e.members, e.member_ids, e.combine = self.members, self.member_ids, self.combine
        e.temperature = _check_temperature(temperature)
        return e


def module_id(model: nn.Module) -> str:
    """SHA-256 (16 hex) of a module's parameters and buffers, for cache keys."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_teacher(path) -> tuple[nn.Module, str]:
    """A checkpoint as a frozen teacher and its identity (the first 16 hex of its weights' SHA-256)."""
    from distill.checkpoints import load_checkpoint

    model, side = load_checkpoint(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, side["weights_sha256"][:16]


def load_teachers(paths, combine: str = "arithmetic") -> tuple[nn.Module, str]:
    """One checkpoint -> that model; several -> an :class:`Ensemble`. Returns (teacher, id)."""
    paths = list(paths)
    if not paths:
        raise DistillError("no teacher checkpoint given")
    if len(paths) == 1:
        return load_teacher(paths[0])
    ens = Ensemble(paths, combine=combine)
    return ens, ens.teacher_id
