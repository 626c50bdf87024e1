"""The divergence guard's rules, as pure functions of the per-epoch losses: :func:`divergence`
(stop), :func:`stuck` (warn), :func:`collapse_note` (what ``select="best"`` says), and the costs
they compare against (:func:`label_entropy`, :func:`chance_loss`)."""
from __future__ import annotations

import math

import torch

from distill.errors import DistillError


class TrainingDiverged(DistillError):
    """The loss or the outputs became non-finite, or the loss exploded or stuck and stayed there; the
    state after the last finished epoch is kept in the run folder (the message says which and its loss)."""


#: the "stuck at a constant prediction" rule judges only after this many optimiser steps
MIN_STUCK_STEPS = 30
#: a return to a constant prediction's cost is divergence only once the loss had fallen this share of
#: what training can gain (``cost - floor``) below it: before that the run is still on its starting plateau
LEFT_PLATEAU = 0.2


def label_entropy(counts) -> float | None:
    """The class prior's cost: ``H = -sum_c p_c log p_c`` with ``p_c = counts_c / sum(counts)``, the
    cross-entropy of the best constant prediction (the label frequencies) on labels with these counts;
    None without any label."""
    counts = [float(c) for c in counts]
    total = sum(counts)
    if not total > 0:
        return None
    return -sum(c / total * math.log(c / total) for c in counts if c > 0)


def _constant_costs(chance, prior, floor: float) -> list[tuple[float, str]]:
    """The known costs of a constant prediction above ``floor``, each with its name: ``chance`` (a
    uniform prediction), then ``prior`` (the label frequencies) when it is lower."""
    costs = []
    for cost, name in ((chance, "the chance level"), (prior, "the class prior's cost")):
        if cost is not None and math.isfinite(cost) and cost > floor and all(cost < c for c, _ in costs):
            costs.append((cost, name))
    return costs


def _at_constant(values, chance, prior, floor: float) -> tuple[float, str] | None:
    """The constant prediction whose cost every loss in ``values`` sits at (or above), within 0.5 % of
    ``cost - floor``, with its name: the chance level if they all reach it, else the class prior's cost;
    None if they are below both."""
    for cost, name in _constant_costs(chance, prior, floor):
        if values and all(v >= cost - 0.005 * (cost - floor) for v in values):
            label = f"{name} ({cost:.4g}" + (", the entropy of the training labels)" if cost == prior != chance
                                             else ")")
            return cost, label
    return None


def _valid_floor(floor) -> float:
    return floor if floor is not None and math.isfinite(floor) and floor >= 0 else 0.0


def divergence(epoch_losses: list[float], chance: float | None, patience: int = 2, factor: float = 2.0,
               floor: float = 0.0, prior: float | None = None) -> str | None:
    """Why training has diverged, or None. ``chance`` is the loss of a constant, uniform prediction
    (``log C`` for hard labels, ``T**2 log C`` for the soft term); ``prior`` the class prior's cost, the
    entropy of the training labels (:func:`label_entropy`; the best constant prediction for hard
    labels, None = unknown); ``floor`` the loss of a model that copies its teacher (0 without one;
    ``T**2 H(p)`` for the soft term, which is near ``chance`` when the teacher's soft targets are nearly
    uniform), so ``cost - floor`` is what training can gain below a constant prediction's ``cost``.
    Diverged when the last epoch's mean loss is not finite; or the last ``patience`` epochs each exceed
    ``factor`` times the best loss before them and are no lower than the cheapest known constant
    prediction's cost less 1 % of ``cost - floor`` (exploded and stayed; a loss that rose but stays
    below that cost is the noise of a high learning rate); or the last ``patience`` epochs sit at a
    constant prediction's cost (within 0.5 % of ``cost - floor``) after the loss had fallen
    :data:`LEFT_PLATEAU` ``(cost - floor)`` below it (it learnt, then collapsed). A loss that has sat
    at that cost from the start has not diverged: it is :func:`stuck`, a warning."""
    if not epoch_losses:
        return None
    last = epoch_losses[-1]
    if not math.isfinite(last):
        return f"the loss is {last}"
    if len(epoch_losses) <= patience:
        return None
    floor = _valid_floor(floor)
    costs = _constant_costs(chance, prior, floor)
    cheapest = min((c for c, _ in costs), default=None)
    best = min(epoch_losses[:-patience])
    tail = epoch_losses[-patience:]
    if all(v > factor * best and (cheapest is None or v >= cheapest - 0.01 * (cheapest - floor)) for v in tail):
        known = chance is not None and math.isfinite(chance) and chance > floor
        return (f"the loss rose from {best:.4g} to {last:.4g} and stayed there for {patience} epochs"
                + (f" (a constant prediction costs {chance:.4g})" if known else ""))
    at = _at_constant(tail, chance, prior, floor)
    if at is not None and best <= at[0] - LEFT_PLATEAU * (at[0] - floor):
        return (f"the loss fell to {best:.4g} and came back to the cost of a constant prediction, {at[1]}, for "
                f"{patience} epochs (now {last:.4g}): the model gives every input the same output, as when its "
                "ReLUs have died")
    return None


def stuck(epoch_losses: list[float], chance: float | None, patience: int = 2, floor: float = 0.0,
          steps_per_epoch: int | None = None, prior: float | None = None) -> str | None:
    """Why the loss looks stuck at a constant prediction, or None: a warning, not divergence (a run that
    has not yet left its starting plateau may still learn). ``chance``, ``prior`` and ``floor`` as in
    :func:`divergence`. Stuck when the last ``patience + 1`` epochs, holding at least
    :data:`MIN_STUCK_STEPS` optimiser steps (``steps_per_epoch``, None = unknown = enough), all sit at
    (or above) the cost of a constant prediction: the chance level, or the class prior's cost, within
    0.5 % of ``cost - floor``."""
    if len(epoch_losses) <= patience or not all(math.isfinite(v) for v in epoch_losses[-patience - 1:]):
        return None
    if steps_per_epoch is not None and (patience + 1) * steps_per_epoch < MIN_STUCK_STEPS:
        return None
    at = _at_constant(epoch_losses[-patience - 1:], chance, prior, _valid_floor(floor))
    if at is None:
        return None
    return (f"the loss has stayed at the cost of a constant prediction, {at[1]}, for {patience + 1} epochs "
            f"(now {epoch_losses[-1]:.4g}): so far the model gives every input the same output")


def collapse_note(history: list[dict], kept_epoch: int, factor: float = 2.0) -> str | None:
    """What ``select="best"`` says when later epochs collapsed after the one it kept, or None: the
    last epoch's train loss is above ``factor`` times the kept epoch's, or its validation error rate
    is above ``factor`` times the kept epoch's and at least 5 points higher."""
    if not history or not 0 < kept_epoch < len(history):
        return None
    kept, last = history[kept_epoch - 1], history[-1]
    a, b = kept.get("train_loss"), last.get("train_loss")
    loss = a is not None and b is not None and math.isfinite(a) and not b <= factor * a
    errors = False
    if all(k in h for h in (kept, last) for k in ("val_errors", "val_accuracy")):
        ra, rb = 1 - kept["val_accuracy"], 1 - last["val_accuracy"]
        errors = rb > factor * ra and rb - ra >= 0.05
    head = f"kept epoch {kept_epoch} of {len(history)}: "
    if loss:
        return (head + f"the loss rose from {a:.4g} to {b:.4g} after it"
                + (f" (validation errors from {kept['val_errors']} to {last['val_errors']})" if errors else ""))
    if errors:
        return head + f"the validation errors rose from {kept['val_errors']} to {last['val_errors']} after it"
    return None


def chance_loss(objective, out, tb, yb, epoch: int | None = None) -> tuple[float | None, float]:
    """For the divergence check, on one batch: the loss of a constant (all-zero) prediction, and the
    loss of copying the teacher's effective logits (0 without a teacher)."""
    try:
        with torch.no_grad():
            chance = float(objective(torch.zeros_like(out), tb, yb, epoch=epoch))
    except Exception:  # a user's objective may not accept constant logits; the check then skips the floor
        return None, 0.0
    floor = 0.0
    if isinstance(tb, torch.Tensor) and tb.shape == out.shape:
        try:
            with torch.no_grad():
                floor = float(objective(tb.to(out.dtype), tb, yb, epoch=epoch))
        except Exception:
            floor = 0.0
    return chance, floor
