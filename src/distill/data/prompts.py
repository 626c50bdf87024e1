"""Prompt/completion data for language models: rows ``[prompt | completion | padding]`` whose
labels score the completion only (:class:`PromptBlocks`), built from token-id pairs
(:func:`prompt_pairs`), from JSON Lines of ``{"prompt": ..., "completion": ...}``
(:func:`read_jsonl`, :func:`load_prompts`) or by splitting text blocks at a fixed point
(:func:`split_blocks`: the first N tokens the prompt, the next M the completion).

The rows are right-padded, so every model numbers their positions naturally; on-policy training
(:mod:`distill.train.onpolicy`) and sequence-level KD read each row's prompt back through
:attr:`PromptBlocks.prompt_lengths` and replace its completion.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.data.text import IGNORE, TokenBlocks, _check_len
from distill.digest import json_digest, tensor_digest


class PromptBlocks(TokenBlocks):
    """:class:`TokenBlocks` of prompt/completion rows: ``input_ids`` / ``attention_mask`` ``[N, L]``
    hold ``[prompt | completion | padding]``, ``prompt_lengths`` ``[N]`` the prompt's length of each
    row, and the labels are the ids on the completion only (``-100`` on the prompt and the padding),
    so a next-token loss scores the logits at positions ``prompt_length - 1 .. length - 2``.
    ``eos_id`` and ``pad_id`` are the tokenizer's (generation stops at EOS and pads with pad)."""

    def __init__(self, input_ids, attention_mask, prompt_lengths, *, eos_id: int, pad_id: int,
                 vocab_size: int | None = None, tokenizer_digest: str | None = None, layout: dict | None = None):
        ids = torch.as_tensor(input_ids).long()
        mask = torch.as_tensor(attention_mask).long()
        lengths = torch.as_tensor(prompt_lengths).long().reshape(-1)
        if lengths.shape[0] != ids.shape[0]:
            raise ValueError(f"prompt_lengths has {lengths.shape[0]} entries for {ids.shape[0]} rows")
        real = mask.sum(1) if mask.dim() == 2 else None
        if lengths.numel() and (int(lengths.min()) < 1 or (real is not None and bool((lengths > real).any()))):
            raise ValueError("every prompt length must be >= 1 and at most its row's length")
        self.eos_id, self.pad_id = _check_len(eos_id, "eos_id", 0), _check_len(pad_id, "pad_id", 0)
        layout = dict(layout or {}, eos_id=self.eos_id, pad_id=self.pad_id)
        fp = "sha256:" + json_digest({"tensors": tensor_digest(ids, mask, lengths), "tokenizer": tokenizer_digest,
                                      "layout": layout})
        super().__init__(ids, mask, vocab_size=vocab_size, tokenizer_digest=tokenizer_digest, layout=layout,
                         fingerprint=fp)
        self.prompt_lengths = lengths
        prompt = torch.arange(self.block_size)[None, :] < lengths[:, None]
        self.y = self.y.masked_fill(prompt, IGNORE)

    def __repr__(self) -> str:
        return (f"PromptBlocks(n={self.n}, width={self.block_size}, completion_tokens={self.completion_tokens}, "
                f"fingerprint={self.fingerprint!r})")

    @property
    def completion_tokens(self) -> int:
        """The number of scored (completion) tokens."""
        return int((self.y != IGNORE).sum())

    @property
    def longest_prompt(self) -> int:
        return int(self.prompt_lengths.max()) if self.n else 0

    def prompts(self, idx=None) -> list[list[int]]:
        """The prompts (token-id lists) of rows ``idx`` (all when None)."""
        idx = torch.arange(self.n) if idx is None else torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return [self.input_ids[i, :int(self.prompt_lengths[i])].tolist() for i in idx]

    def completions(self, idx=None) -> list[list[int]]:
        """The completions (token-id lists, the scored tokens) of rows ``idx`` (all when None)."""
        idx = torch.arange(self.n) if idx is None else torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return [self.input_ids[i][self.y[i] != IGNORE].tolist() for i in idx]

    def head(self, n: int) -> "PromptBlocks":
        n = _check_len(n, "n", 1)
        if n >= self.n:
            return self
        return PromptBlocks(self.input_ids[:n], self.attention_mask[:n], self.prompt_lengths[:n], eos_id=self.eos_id,
                            pad_id=self.pad_id, vocab_size=self.vocab_size, tokenizer_digest=self.tokenizer_digest,
                            layout=dict(self.layout, head=n))

    def subset(self, idx, name: str) -> "PromptBlocks":
        """Rows ``idx`` as their own source (``name`` joins the layout, e.g. ``"test"``)."""
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        return PromptBlocks(self.input_ids[idx], self.attention_mask[idx], self.prompt_lengths[idx],
                            eos_id=self.eos_id, pad_id=self.pad_id, vocab_size=self.vocab_size,
                            tokenizer_digest=self.tokenizer_digest,
                            layout=dict(self.layout, part=name, rows=json_digest(idx.tolist())))

    def with_completions(self, completions, layout: dict) -> "PromptBlocks":
        """These prompts with other completions (token-id lists, one per row, e.g. a teacher's own
        generations), as a new source whose layout records where they came from."""
        return prompt_pairs(list(zip(self.prompts(), completions)), eos_id=self.eos_id, pad_id=self.pad_id,
                            vocab_size=self.vocab_size, tokenizer_digest=self.tokenizer_digest,
                            layout=dict(layout, prompts=self.fingerprint))


def rows_of(pairs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt, completion)`` token-id lists (or 1-D tensors) as right-padded rows
    ``(input_ids, attention_mask, prompt_lengths)``, the width the longest ``prompt + completion``."""
    rows = [(list(map(int, p)), list(map(int, c))) for p, c in pairs]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c, dtype=torch.long)
        mask[i, :n] = 1
    return ids, mask, torch.tensor([len(p) for p, _ in rows], dtype=torch.long)


def prompt_pairs(pairs, *, eos_id: int, pad_id: int, max_prompt: int | None = None,
                 max_completion: int | None = None, vocab_size: int | None = None,
                 tokenizer_digest: str | None = None, layout: dict | None = None) -> PromptBlocks:
    """Token-id ``(prompt, completion)`` pairs as :class:`PromptBlocks`: each prompt keeps its
    *last* ``max_prompt`` tokens (the end is what a completion follows), each completion its first
    ``max_completion``; nothing is appended (end a completion with EOS where it ends). An empty
    prompt is an error (a completion needs something to follow)."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no prompt/completion pairs")
    max_prompt = None if max_prompt is None else _check_len(max_prompt, "max_prompt", 1)
    max_completion = None if max_completion is None else _check_len(max_completion, "max_completion", 0)
    cut = []
    for i, (p, c) in enumerate(pairs):
        p = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        c = c.tolist() if isinstance(c, torch.Tensor) else list(c)
        if not p:
            raise ValueError(f"pair {i} has an empty prompt")
        cut.append((p if max_prompt is None else p[-max_prompt:], c if max_completion is None else c[:max_completion]))
    ids, mask, lengths = rows_of(cut, pad_id)
    layout = dict(layout or {"kind": "pairs"}, max_prompt=max_prompt, max_completion=max_completion)
    return PromptBlocks(ids, mask, lengths, eos_id=eos_id, pad_id=pad_id, vocab_size=vocab_size,
                        tokenizer_digest=tokenizer_digest, layout=layout)


def split_blocks(blocks: TokenBlocks, prompt_tokens: int, completion_tokens: int, *, eos_id: int,
                 pad_id: int) -> PromptBlocks:
    """Text blocks as prompt/completion rows: each block's first ``prompt_tokens`` tokens are the
    prompt, the next ``completion_tokens`` (fewer where the block ends sooner) the completion;
    blocks without a token after the prompt are dropped. From held-out passages this gives the
    prompts of an evaluation; from training blocks, on-policy training's."""
    prompt_tokens = _check_len(prompt_tokens, "prompt_tokens", 1)
    completion_tokens = _check_len(completion_tokens, "completion_tokens", 1)
    if prompt_tokens + completion_tokens > blocks.block_size:
        raise ValueError(f"prompt_tokens {prompt_tokens} + completion_tokens {completion_tokens} is longer than the "
                         f"blocks ({blocks.block_size} tokens)")
    real = blocks.attention_mask.sum(1)
    keep = torch.nonzero(real > prompt_tokens).flatten()
    if not keep.numel():
        raise ValueError(f"no block has a token after its first {prompt_tokens}: prompts leave no room for a "
                         "completion")
    width = prompt_tokens + completion_tokens
    ids, mask = blocks.input_ids[keep, :width], blocks.attention_mask[keep, :width]
    return PromptBlocks(ids, mask, torch.full((len(keep),), prompt_tokens, dtype=torch.long), eos_id=eos_id,
                        pad_id=pad_id, vocab_size=blocks.vocab_size, tokenizer_digest=blocks.tokenizer_digest,
                        layout={"kind": "split", "prompt_tokens": prompt_tokens,
                                "completion_tokens": completion_tokens, "blocks": blocks.fingerprint})


def split_rows(rows: PromptBlocks, val: float = 0.05, test: float = 0.1, seed: int = 0):
    """``(train, val, test)``: a seeded random ``val`` and ``test`` fraction of the rows held out
    (at least one row each where the fraction is > 0 and the rows allow it; None for a fraction of 0)."""
    for name, f in (("val", val), ("test", test)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ValueError(f"the {name} fraction must be in [0, 1), got {f!r}")
    order = torch.randperm(rows.n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test * rows.n)) if test else 0
    n_val = max(1, round(val * rows.n)) if val else 0
    if n_test + n_val >= rows.n:
        raise ValueError(f"{rows.n} prompt/completion rows are too few to hold out {n_val} for validation and "
                         f"{n_test} for test")
    parts = order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]
    return tuple(rows.subset(i.sort().values, name) if len(i) else None
                 for i, name in zip(parts, ("train", "val", "test")))


def read_jsonl(path) -> list[tuple[str, str]]:
    """The ``(prompt, completion)`` texts of a JSON Lines file, one object per line with string
    fields ``prompt`` and ``completion`` (blank lines skipped); a line that is not such an object
    is a one-line ``ValueError`` naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: each line must be an object {{\"prompt\": ..., \"completion\": ...}}")
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                what = "has no" if key not in obj else "has a non-string"
                raise ValueError(f"{path}:{n}: the line {what} \"{key}\" field")
        out.append((obj["prompt"], obj["completion"]))
    if not out:
        raise ValueError(f"{path}: no prompt/completion lines")
    return out


def load_prompts(path, tokenizer, *, max_prompt: int | None = None, max_completion: int | None = None) -> PromptBlocks:
    """A JSONL file of prompt/completion texts (:func:`read_jsonl`) tokenized with ``tokenizer``
    (a :class:`~distill.data.text.TextTokenizer`): each completion ends with the tokenizer's EOS
    (a model learns to stop there), then :func:`prompt_pairs` cuts prompts from the left and
    completions from the right. A prompt that tokenizes to nothing is an error naming its line."""
    texts = read_jsonl(path)
    prompts = tokenizer.encode_batch([p for p, _ in texts])
    completions = tokenizer.encode_batch([c for _, c in texts])
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"{path}: prompt {empty[0] + 1} is empty ({len(empty)} empty prompts in all)")
    pairs = [(p, c + [tokenizer.eos_id]) for p, c in zip(prompts, completions)]
    return prompt_pairs(pairs, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, max_prompt=max_prompt,
                        max_completion=max_completion, vocab_size=tokenizer.vocab_size,
                        tokenizer_digest=tokenizer.digest, layout={"kind": "jsonl", "file": Path(path).name,
                                                                   "digest": json_digest(texts)})


__all__ = ["PromptBlocks", "prompt_pairs", "split_blocks", "split_rows", "read_jsonl", "load_prompts", "rows_of"]
