"""What a language model writes, judged: the per-token NLL a scorer (the teacher) gives to
completions of prompts (:func:`continuation_nll`), and :func:`generation_report`, a student's
greedy and sampled continuations of held-out prompts with the teacher's NLL of them, their
diversity (distinct-1/2) and repetition (seq-rep-4), generation speed and a few samples as text.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from distill.metrics import distinct_n, repetition_rate
from distill.modelio import logits_of, model_forward
from distill.models.lm import continuations


def _device(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _token_rows(name: str, rows, *, empty_ok: bool) -> list[list[int]]:
    out = []
    for i, r in enumerate(rows):
        r = r.tolist() if isinstance(r, torch.Tensor) else list(r)
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in r):
            raise ValueError(f"{name} {i} must be a list of token ids (integers >= 0)")
        if not r and not empty_ok:
            raise ValueError(f"{name} {i} is empty")
        out.append(r)
    return out


def _modes(model):
    return [(m, m.training) for m in model.modules()] if hasattr(model, "modules") else []


def _restore(modes) -> None:
    for m, training in modes:
        m.training = training


def continuation_nll(scorer, prompts, completions, *, batch_size: int = 16, device=None) -> tuple[float, int]:
    """``(mean NLL, N)`` with ``mean NLL = -(1/N) sum_i sum_t log p_scorer(c_i,t | prompt_i, c_i,<t)``
    over every token ``c_i,t`` of every completion (natural log, temperature 1), ``N`` the number of
    completion tokens (``nan`` when ``N = 0``: every completion empty).

    Rows ``[prompt | completion | pad]`` are right-padded (mask 1 on real tokens), one forward pass
    of ``scorer`` (a causal LM giving logits ``(B, L, V)``) per batch of ``batch_size`` under
    ``no_grad``, on ``device`` (default: where the scorer's parameters are); the logits at ``t``
    score token ``t + 1``, and only completion tokens are scored. The last column is never fed (it
    is only ever a target). The scorer's train/eval modes are restored."""
    prompts = _token_rows("prompt", prompts, empty_ok=False)
    completions = _token_rows("completion", completions, empty_ok=True)
    if not prompts or len(prompts) != len(completions):
        raise ValueError(f"continuation_nll needs as many completions as prompts (at least one), got "
                         f"{len(prompts)} and {len(completions)}")
    batch_size = _positive("batch_size", batch_size)
    dev = _device(scorer, device)
    modes = _modes(scorer)
    if hasattr(scorer, "eval"):
        scorer.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                ps, cs = prompts[i:i + batch_size], completions[i:i + batch_size]
                if not any(cs):
                    continue
                width = max(len(p) + len(c) for p, c in zip(ps, cs))
                ids = torch.zeros((len(ps), width), dtype=torch.long)
                mask = torch.zeros((len(ps), width), dtype=torch.long)
                scored = torch.zeros((len(ps), width), dtype=torch.bool)  # the completion's tokens
                for j, (p, c) in enumerate(zip(ps, cs)):
                    ids[j, :len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
                    mask[j, :len(p) + len(c)] = 1
                    scored[j, len(p):len(p) + len(c)] = True
                inputs = {"input_ids": ids[:, :-1].to(dev), "attention_mask": mask[:, :-1].to(dev)}
                logits = logits_of(model_forward(scorer, inputs))
                logp = F.log_softmax(logits.float(), dim=-1)
                target, keep = ids[:, 1:].to(logp.device), scored[:, 1:].to(logp.device)
                nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                total += float(nll[keep].double().sum())
                count += int(keep.sum())
    finally:
        _restore(modes)
    return (total / count if count else float("nan")), count


def _continue(student, prompts, *, batch_size: int, pad_id: int, **sampling) -> tuple[list[list[int]], float]:
    """The student's completions of ``prompts`` (its generated tokens up to and including EOS,
    where ``completion_mask`` is True) and the generation speed in tokens per second."""
    out, tokens, t0 = [], 0, time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        batch = continuations(student, prompts[i:i + batch_size], pad_id=pad_id, **sampling)
        out += batch
        tokens += sum(len(c) for c in batch)
    return out, tokens / max(time.perf_counter() - t0, 1e-9)


def generation_report(student, teacher, prompts, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                      top_k: int = 0, seed: int = 0, batch_size: int = 16, eos_id: int | None = None, pad_id: int = 0,
                      tokenizer=None, samples: int = 3, device=None) -> dict:
    """The student's continuations of ``prompts`` (token-id lists), greedy (temperature 0) and
    sampled (at ``temperature``, ``top_p``, ``top_k``, drawing from one generator seeded with
    ``seed``), ``batch_size`` prompts at a time (left-padded), each mode judged by:

    * ``teacher_nll``: :func:`continuation_nll` of the completions under ``teacher`` (lower: the
      student writes what the teacher would), ``tokens``: the completion tokens it scored;
    * ``distinct_1``, ``distinct_2``: :func:`distinct_n` over all completions;
    * ``repetition_4``: :func:`repetition_rate` (seq-rep-4);
    * ``mean_length``: completion tokens per prompt; ``tokens_per_s``: generation speed.

    A completion is the generated tokens where ``generate``'s completion mask is True (up to and
    including the first ``eos_id``). With a ``tokenizer`` (``.decode(ids) -> str``), ``samples``
    holds the first ``samples`` prompts with both continuations as text (``[]`` without one).
    Models run on ``device`` (moved there) if given, else where their parameters are. Returns
    ``{"greedy": {...}, "sampled": {...}, "samples": [{"prompt", "greedy", "sampled"}, ...]}`` of
    plain floats, ints and strings."""
    prompts = _token_rows("prompt", prompts, empty_ok=False)
    if not prompts:
        raise ValueError("generation_report needs at least one prompt")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    batch_size = _positive("batch_size", batch_size)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples must be an integer >= 0, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
        raise ValueError(f"tokenizer must have a .decode(ids) method, got {type(tokenizer).__name__}")
    if device is not None:
        student.to(device)
        teacher.to(device)
    dev = _device(student, device)
    report, comps = {}, {}
    for mode, t in (("greedy", 0.0), ("sampled", temperature)):
        # a generator on the student's device (torch.multinomial draws with one of its own device's)
        gen = torch.Generator(device=dev).manual_seed(seed)
        comps[mode], speed = _continue(student, prompts, batch_size=batch_size, pad_id=pad_id,
                                       max_new_tokens=max_new_tokens, temperature=t, top_p=top_p, top_k=top_k,
                                       eos_id=eos_id, generator=gen)
        nll, n = continuation_nll(teacher, prompts, comps[mode], batch_size=batch_size, device=device)
        c = comps[mode]
        report[mode] = dict(teacher_nll=float(nll), tokens=int(n), distinct_1=float(distinct_n(c, 1)),
                            distinct_2=float(distinct_n(c, 2)), repetition_4=float(repetition_rate(c, 4)),
                            mean_length=sum(map(len, c)) / len(c), tokens_per_s=float(speed))
    report["samples"] = ([dict(prompt=str(tokenizer.decode(prompts[i])), greedy=str(tokenizer.decode(comps["greedy"][i])),
                               sampled=str(tokenizer.decode(comps["sampled"][i])))
                          for i in range(min(samples, len(prompts)))] if tokenizer is not None else [])
    return report
