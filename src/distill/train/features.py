"""Intermediate-feature distillation inside :func:`distill.fit`: the mechanism behind
:class:`~distill.losses.objectives.FeatureDistillation` (whose loss is pure and lives with the
other objectives).

* :class:`FeatureTaps`: forward hooks on modules named by their dotted paths
  (``module.get_submodule(path)``), capturing each one's output; a context manager that removes its
  hooks on exit, even on error. A path that names no module is a one-line :class:`DistillError`
  listing the nearest existing names.
* :func:`make_projector`: the learned map from a student feature's shape to the teacher's (a
  ``Linear`` for ``[B, D]``, a 1x1 ``Conv2d`` for ``[B, C, H, W]`` that also resizes the map to the
  teacher's ``H, W``; None when the shapes agree).
* :class:`FeatureRun`: what ``fit`` holds for one run (:func:`plan_features` builds it from a probe
  batch before training): the taps on the student and on the teacher module, and the projectors.
  The projectors train with the student (the optimiser holds them, so the run state saves and
  resumes them with it) but are not part of it: the saved model holds the student's tensors only.
  The teacher runs on every batch (in eval mode, under ``no_grad``), since its stored logits carry
  no features; the captured features are cast to float32 before the losses (bf16 autocast).

Under DDP the projectors sit outside the student's wrapper and :meth:`FeatureRun.sync_gradients`
averages their gradients; each process computes the losses on its slice of the batch, which for
the per-example means (hint, attention) is the single-process step, while relational KD then
compares the pairs within each slice. FSDP is refused (it trains a sharded copy the hooks never
see). The divergence guard judges a feature run without a constant-prediction cost (a feature term
has none): non-finite losses and a loss that explodes and stays up still stop it.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from distill import distributed
from distill.errors import DistillError
from distill.losses.functional import FEATURE_LOSSES
from distill.losses.objectives import FeatureDistillation
from distill.modelio import inputs_to, model_forward

#: how many existing module names a bad path's error lists
CLOSE_MATCHES = 5


def feature_of(output, where: str = "the module") -> torch.Tensor:
    """The feature in a module's output: the tensor itself; an object's or a mapping's
    ``last_hidden_state`` (a Hugging Face ``ModelOutput``); else the first tensor of a tuple, list
    or mapping (an LSTM's ``(output, state)``, a transformer block's ``(hidden, attention)``)."""
    if isinstance(output, torch.Tensor):
        return output
    hidden = output.get("last_hidden_state") if isinstance(output, Mapping) else getattr(output, "last_hidden_state",
                                                                                         None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise DistillError(f"{where} returned a {type(output).__name__} without a tensor; feature distillation needs "
                       "a module whose output is a tensor (or holds one)")


def no_module(module: nn.Module, path: str, who: str = "the model") -> DistillError:
    """The one-line error for a ``path`` that names no submodule of ``module``, with the nearest
    existing names (``difflib.get_close_matches`` over ``module.named_modules()``)."""
    names = [n for n in dict(module.named_modules()) if n]
    close = difflib.get_close_matches(path, names, n=CLOSE_MATCHES, cutoff=0.5)
    if close:
        hint = f"the nearest are: {', '.join(repr(n) for n in close)}"
    else:
        top = [n for n, _ in module.named_children()][:8]
        hint = (f"its top-level modules are: {', '.join(repr(n) for n in top)}" if top else "it has no submodules")
    return DistillError(f"{who} ({type(module).__name__}) has no module {path!r}; {hint} "
                        "(the names of model.named_modules())")


class FeatureTaps:
    """Forward hooks capturing the outputs of ``module``'s submodules at ``paths`` (dotted
    ``get_submodule`` names; ``""`` is the module itself), as a context manager::

        with FeatureTaps(model, ["layer2", "layer3.1"]) as taps:
            model(x)
            f = taps["layer3.1"]          # that block's output in the last forward pass

    The paths are checked when the taps are made (:func:`no_module`); the hooks are installed on
    entering and removed on exit, even on error, and may be entered again. A module called several
    times in one forward pass keeps its last output (:func:`feature_of` picks the tensor)."""

    def __init__(self, module: nn.Module, paths, *, who: str = "the model"):
        if not isinstance(module, nn.Module):
            raise ValueError(f"FeatureTaps needs an nn.Module, got {type(module).__name__}")
        self.module, self.who = module, who
        self.paths = list(dict.fromkeys(paths))
        self.modules = {}
        for path in self.paths:
            if not isinstance(path, str):
                raise ValueError(f"a module path is a string such as 'layer3.1', got {path!r}")
            try:
                self.modules[path] = module.get_submodule(path)
            except AttributeError:
                raise no_module(module, path, who) from None
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, path: str):
        def capture(_module, _inputs, output):
            self.outputs[path] = feature_of(output, f"the {self.who}'s module {path!r}")
        return capture

    def __enter__(self) -> "FeatureTaps":
        if not self._handles:
            try:
                for path, m in self.modules.items():
                    self._handles.append(m.register_forward_hook(self._hook(path)))
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc) -> None:
        while self._handles:
            self._handles.pop().remove()
        self.outputs.clear()

    def __getitem__(self, path: str) -> torch.Tensor:
        try:
            return self.outputs[path]
        except KeyError:
            raise DistillError(f"the {self.who}'s module {path!r} did not run in the last forward pass"
                               + ("" if self._handles else " (the taps are not installed: use them in a with block)")
                               ) from None


# ---------------------------------------------------------------- projectors


def resize_map(x: torch.Tensor, size) -> torch.Tensor:
    """A ``[B, C, H, W]`` map at ``size`` = (H', W'): itself when it has that size; adaptive average
    pooling when it shrinks in both directions; else bilinear interpolation."""
    size = tuple(size)
    if tuple(x.shape[2:]) == size:
        return x
    if all(a >= b for a, b in zip(x.shape[2:], size)):
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Resize(nn.Module):
    """:func:`resize_map` to ``size`` as a module (no parameters)."""

    def __init__(self, size):
        super().__init__()
        self.size = tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_map(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class ConvProjector(nn.Conv2d):
    """A 1x1 convolution ``C_s -> C_t`` that also brings the map to ``size`` (the teacher's
    ``(H, W)``; None: kept) with :func:`resize_map`, at the smaller of the two resolutions (both
    maps are linear and commute, so the order changes only the cost)."""

    def __init__(self, in_channels: int, out_channels: int, size=None):
        super().__init__(in_channels, out_channels, 1)
        self.size = None if size is None else tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None or tuple(x.shape[2:]) == self.size:
            return super().forward(x)
        if x.shape[2] * x.shape[3] >= self.size[0] * self.size[1]:
            return super().forward(resize_map(x, self.size))
        return resize_map(super().forward(x), self.size)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.size is None else f", size={self.size}")


def make_projector(student_shape, teacher_shape, *, learned: bool = True) -> nn.Module | None:
    """The map from student features of ``student_shape`` to the teacher's ``teacher_shape`` (both
    with the batch first), or None when the shapes agree (identity):

    * ``[B, D_s] -> [B, D_t]``: ``nn.Linear(D_s, D_t)`` (``[B, L, D]`` sequences: the same on the
      last axis);
    * ``[B, C_s, H_s, W_s] -> [B, C_t, H_t, W_t]``: a 1x1 convolution ``C_s -> C_t``
      (:class:`ConvProjector`, an ``nn.Conv2d``) that also resizes the map to ``(H_t, W_t)`` where
      the sizes differ (:func:`resize_map`: pooling down, bilinear up).

    ``learned=False`` (attention transfer, whose channel counts may differ): only the resizing
    (:class:`Resize`, no parameters), or None. Other shape pairs are a ValueError."""
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if s[1:] == t[1:]:
        return None
    if len(s) == len(t) == 4:
        size = t[2:] if s[2:] != t[2:] else None
        if not learned:
            return None if size is None else Resize(size)
        return ConvProjector(s[1], t[1], size)
    if learned and len(s) == len(t) and len(s) in (2, 3) and s[1:-1] == t[1:-1]:
        return nn.Linear(s[-1], t[-1])
    if not learned and len(s) == len(t) and s[2:] == t[2:]:
        return None
    raise ValueError(f"cannot project student features of shape {list(s[1:])} onto the teacher's {list(t[1:])}: "
                     "a projector maps [B, D] to [B, D'] or [B, C, H, W] to [B, C', H', W']; pick layers whose "
                     "outputs have such shapes")


#: which projector each feature loss needs: a learned one (hint, channel-wise), a resize only
#: (attention: the channel counts may differ), none (relational: any widths)
PROJECTION = {"hint": "learned", "attention": "resize", "relational": None, "channel_wise": "learned"}


class FeatureRun:
    """``fit``'s side of a :class:`FeatureDistillation` (see the module docstring): the taps on
    the student and the teacher module, and ``projectors`` (an ``nn.ModuleList``, one entry per pair,
    ``nn.Identity`` where none is needed). A context manager: the hooks are installed on entering
    and removed on exit, even on error."""

    def __init__(self, objective: FeatureDistillation, student_taps: FeatureTaps, teacher_taps: FeatureTaps,
                 projectors: nn.ModuleList):
        self.objective = objective
        self.student_taps, self.teacher_taps = student_taps, teacher_taps
        self.projectors = projectors

    def __enter__(self) -> "FeatureRun":
        self.student_taps.__enter__()
        try:
            self.teacher_taps.__enter__()
        except BaseException:
            self.student_taps.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.teacher_taps.__exit__(*exc)
        finally:
            self.student_taps.__exit__(*exc)

    def to(self, device) -> "FeatureRun":
        self.projectors.to(device)
        return self

    def trained_with(self, model: nn.Module) -> nn.Module:
        """``model`` and the projectors as one module, for the optimiser: the model's parameters
        first, in their order, then the projectors' (so the model's optimiser state keeps its indices)."""
        return nn.ModuleList([model, self.projectors])

    def features(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The pairs' ``(projected student feature, teacher feature)`` from the last forward passes,
        in float32 (the teacher's detached)."""
        out = []
        for (s, t, _, _), project in zip(self.objective.pairs, self.projectors):
            student = self.student_taps[s].float()
            teacher = self.teacher_taps[t].detach().float().to(student.device)
            out.append((project(student), teacher))
        return out

    def terms(self, mask=None) -> dict:
        """:meth:`FeatureDistillation.feature_terms` of :meth:`features`: each pair's weighted loss."""
        return self.objective.feature_terms(self.features(), mask)

    def sync_gradients(self, world_size: int) -> None:
        """DDP averages the student's gradients over the processes; the projectors sit outside its
        wrapper, so theirs are averaged here (every process takes part, with zeros where it computed
        none), before the optimiser step."""
        if world_size <= 1:
            return
        for p in self.projectors.parameters():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = distributed.all_sum(g) / world_size


def plan_features(objective, model: nn.Module, teacher, source, config, device) -> FeatureRun | None:
    """For a :class:`FeatureDistillation` objective (else None): check the pairs' paths on the
    student and the teacher module, run both on two training examples (eval mode, ``no_grad``) to
    learn the features' shapes, build each pair's projector (:data:`PROJECTION`,
    :func:`make_projector`; initialised from ``config.seed``, without touching the global RNG) and
    try each loss on the probe features, so a mismatch is an error before anything trains."""
    if not isinstance(objective, FeatureDistillation):
        return None
    if teacher is None or teacher.module is None:
        raise ValueError("feature distillation reads the teacher's intermediate features: pass the teacher as a "
                         "module or checkpoint, not stored outputs")
    if config.parallel == "fsdp" and distributed.world()[1] > 1:
        raise ValueError("feature distillation hooks the student's modules, which parallel='fsdp' trains as a "
                         "sharded copy; use parallel='ddp'")
    pairs = objective.pairs
    student_taps = FeatureTaps(model, [s for s, _, _, _ in pairs], who="the student")
    teacher_taps = FeatureTaps(teacher.module, [t for _, t, _, _ in pairs], who="the teacher")
    x, _, _ = next(iter(source.batches(2, None)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), student_taps, teacher_taps:
            model_forward(model, inputs_to(x, device))
            teacher.forward(inputs_to(x, teacher.device or device))
            probe = [(student_taps[s].float(), teacher_taps[t].float().to(device)) for s, t, _, _ in pairs]
    finally:
        model.train(was)
    projectors = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for (s, t, loss, _), (fs, ft) in zip(pairs, probe):
            kind = PROJECTION[loss]
            try:
                p = None if kind is None else make_projector(fs.shape, ft.shape, learned=kind == "learned")
            except ValueError as e:
                raise ValueError(f"the feature pair ({s!r}, {t!r}, {loss!r}): {e}") from None
            projectors.append(nn.Identity() if p is None else p.to(device))
    projectors = nn.ModuleList(projectors)
    with torch.no_grad():
        for (s, t, loss, _), project, (fs, ft) in zip(pairs, projectors, probe):
            try:
                FEATURE_LOSSES[loss](project(fs), ft)
            except ValueError as e:
                raise ValueError(f"the feature pair ({s!r}, {t!r}, {loss!r}): {e}") from None
    return FeatureRun(objective, student_taps, teacher_taps, projectors)
