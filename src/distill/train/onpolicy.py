"""On-policy distillation of language models (GKD, Agarwal et al. 2024): at each optimiser step,
with probability λ, the completions of the batch's prompts are the student's own samples rather
than the data's; the teacher scores those same tokens and the token-level objective applies on
the completion positions only.

* :class:`OnPolicy` is the setting (``TrainConfig(on_policy=OnPolicy(...))``).
* :func:`on_policy_step` is the step's seeded draw ``u < λ``; :func:`sampling_generator` the
  seeded generator of its samples: both are functions of ``(seed, step)`` alone (and the process
  rank for the samples), so a resumed run draws exactly what the uninterrupted run drew, and λ = 0
  never touches the data (it is the off-policy run, bit for bit).
* :func:`rollout` builds the step's rows: each prompt, the student's continuation up to and
  including its first EOS (:func:`distill.models.lm.generate`: no gradient, eval mode, KV cache),
  right-padded, labelled on the completion only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distill.data.prompts import rows_of
from distill.data.text import IGNORE
from distill.digest import json_digest
from distill.models.lm import continuations


@dataclass(frozen=True)
class OnPolicy:
    """On-policy distillation: with probability ``lam`` per step (a seeded draw) the batch's
    completions are sampled from the student — at ``temperature`` (0: greedy) with nucleus ``top_p`` and
    ``top_k`` (0: no limit), up to ``max_new_tokens`` tokens, stopping at EOS — else they are the
    data's. ``lam = 0`` is the off-policy run; ``lam = 1`` pure on-policy. Needs prompt/completion
    data (:class:`distill.data.prompts.PromptBlocks`) and a teacher model (it scores the samples)."""

    KEY_NAME = "distill.train.OnPolicy"  # its name in run keys (distill.digest.key_name)

    lam: float = 0.5
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        lam, t, p = self.lam, self.temperature, self.top_p
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam (the share of on-policy steps) must be in [0, 1], got {lam!r}")
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer, got {n!r}")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {t!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: no limit), got {self.top_k!r}")
        object.__setattr__(self, "lam", float(lam))
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", float(p))


def _seed(*parts) -> int:
    return int(json_digest(list(parts)), 16) & (2 ** 63 - 1)


def on_policy_step(seed: int, step: int, lam: float) -> bool:
    """Whether optimiser step ``step`` (0-based, counted over the whole run) samples from the
    student: ``u < lam`` with ``u ~ U[0, 1)`` drawn from a generator seeded by ``(seed, step)``
    only, so every process and every resumed run draws the same; ``lam = 0`` never, ``lam = 1``
    always."""
    u = float(torch.rand((), generator=torch.Generator().manual_seed(_seed("on-policy", seed, step))))
    return u < lam


def sampling_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of step ``step``'s samples on process ``rank``: seeded by ``(seed, step,
    rank)`` (each process samples its own slice, and a resumed run samples what it did)."""
    return torch.Generator().manual_seed(_seed("samples", seed, step, rank))


def rollout(model, inputs: dict, prompt_lengths: torch.Tensor, policy: OnPolicy, *, eos_id: int, pad_id: int,
            generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """The batch with the student's completions: row ``i``'s prompt (its first ``prompt_lengths[i]``
    tokens of ``inputs["input_ids"]``) continued by ``model`` (:func:`~distill.models.lm.generate`
    with ``policy``'s sampling, from ``generator``), the completion kept up to and including its
    first ``eos_id``. Returns ``({"input_ids", "attention_mask"}, labels)``, rows ``[prompt |
    completion | pad_id]`` right-padded (mask 0, label -100 on padding), the labels -100 on the
    prompt too, so only the sampled tokens are scored."""
    ids = inputs["input_ids"]
    lengths = prompt_lengths.tolist()
    prompts = [ids[i, :n].tolist() for i, n in enumerate(lengths)]
    completions = continuations(model, prompts, pad_id=pad_id, max_new_tokens=policy.max_new_tokens,
                                temperature=policy.temperature, top_p=policy.top_p, top_k=policy.top_k,
                                eos_id=eos_id, generator=generator)
    pairs = list(zip(prompts, completions))
    new_ids, new_mask, plen = rows_of(pairs, pad_id)
    labels = new_ids.masked_fill(new_mask == 0, IGNORE)
    labels = labels.masked_fill(torch.arange(new_ids.shape[1])[None, :] < plen[:, None], IGNORE)
    dev = ids.device
    return {"input_ids": new_ids.to(dev), "attention_mask": new_mask.to(dev)}, labels.to(dev)
