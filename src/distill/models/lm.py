"""A small decoder-only transformer (:class:`GPT`, nanoGPT-sized) and sampling from language models
(:func:`generate`, :func:`left_pad`), for distilling language models. Only torch: no transformers.

* :class:`GPT` maps token ids ``(B, L)`` to next-token logits ``(B, L, V)``: token + learned position
  embeddings, ``n_layer`` pre-LayerNorm blocks (causal self-attention through
  ``F.scaled_dot_product_attention``, a 4x GELU MLP), a final LayerNorm and an LM head tied to the
  token embedding by default (the head then *is* ``wte.weight``, used through ``F.linear``, so the
  state dict holds one tensor and saves as safetensors). ``attention_mask`` (1 = token, 0 = padding)
  hides padding from attention and numbers positions by the mask's cumulative sum, so right- and
  left-padded sequences give the logits of their unpadded selves at their real positions.
  :meth:`GPT.forward_step` is the same forward with a key/value cache, for incremental decoding. Like
  :class:`distill.models.classifiers.MLP` it carries ``arch`` and ``distill_factory``
  (``"distill.models:GPT"`` + ``arch``), and builds on the ``meta`` device (no buffers, no
  data-dependent init), as :func:`distill.checkpoints.build_from_factory` requires.
* :func:`generate` continues left-padded prompts: greedy (``temperature=0``) or sampled with
  temperature, top-k and top-p (nucleus) filtering, drawing only from the ``generator`` given; it
  stops rows at ``eos_id`` and returns the sequences with a mask of the generated tokens. A
  :class:`GPT` decodes with its cache, a Hugging Face causal LM with ``past_key_values`` (never
  through its own ``generate``: the sampling rules and random draws are these), any other module by
  re-running it on the whole sequence each step.
"""
from __future__ import annotations

import inspect
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from distill.modelio import logits_of

#: a :class:`GPT`'s key/value cache: per layer ``(keys, values)``, each ``(B, n_head, S, n_embd // n_head)``
#: for the ``S`` positions seen so far (a tuple of tuples: :meth:`GPT.forward_step` returns a new one)
KVCache = tuple


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    try:
        n = operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {v!r}") from None
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(n)


def positions_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a padding mask: ``cumsum(mask) - 1`` (0 on left padding), so a sequence's
    real tokens are numbered ``0, 1, ...`` wherever its padding is."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (one ``Linear`` for q, k, v; one output projection)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                past: tuple[torch.Tensor, torch.Tensor] | None = None):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.c_proj(y)), (k, v)


class Block(nn.Module):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` (pre-LayerNorm, GPT-2)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(n_embd, 4 * n_embd))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * n_embd, n_embd))
        self.mlp.add_module("drop", nn.Dropout(dropout))

    def forward(self, x, mask, is_causal: bool, past=None):
        a, kv = self.attn(self.ln_1(x), mask, is_causal, past)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class GPT(nn.Module):
    """A GPT-2-style decoder-only transformer over ``vocab_size`` tokens and at most ``block_size``
    positions: ``n_layer`` blocks of width ``n_embd`` with ``n_head`` heads, ``dropout`` on the
    embeddings, attention weights and residual branches; ``tie_weights``: the LM head is the token
    embedding. Initialised like GPT-2: weights normal(0, 0.02), the residual projections'
    (``attn.c_proj``, ``mlp.c_proj``) scaled by ``1 / sqrt(2 n_layer)``, biases 0.

    ``forward(input_ids, attention_mask=None)`` -> logits ``(B, L, vocab_size)``; ``context`` is
    ``block_size`` (the longest input). See :meth:`forward_step` for decoding with a cache.
    """

    KEY_NAME = "distill.models.GPT"  # its name in run keys (distill.digest.key_name)

    # Python-side helpers, not part of the forward pass: ``torch.jit.script`` leaves them out
    __jit_unused_properties__ = ["distill_factory", "head_weight"]

    def __init__(self, vocab_size: int, block_size: int = 128, n_layer: int = 2, n_head: int = 2,
                 n_embd: int = 128, dropout: float = 0.0, tie_weights: bool = True):
        super().__init__()
        vocab_size, block_size = _positive_int("vocab_size", vocab_size), _positive_int("block_size", block_size)
        n_layer, n_head = _positive_int("n_layer", n_layer), _positive_int("n_head", n_head)
        n_embd = _positive_int("n_embd", n_embd)
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(tie_weights, bool):
            raise ValueError(f"tie_weights must be True or False, got {tie_weights!r}")
        dropout = float(dropout)
        self.arch = dict(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                         n_embd=n_embd, dropout=dropout, tie_weights=tie_weights)
        self.vocab_size, self.block_size, self.context = vocab_size, block_size, block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        # tied: no head parameter at all (the head is wte.weight), so the state dict shares no tensors
        self.lm_head = None if tie_weights else nn.Linear(n_embd, vocab_size, bias=False)
        self._init_weights(n_layer)

    @torch.no_grad()
    def _init_weights(self, n_layer: int) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @property
    def distill_factory(self) -> tuple[str, dict]:
        return "distill.models:GPT", dict(self.arch)

    @property
    def head_weight(self) -> torch.Tensor:
        """The LM head's ``(vocab_size, n_embd)`` weight: ``wte.weight`` when tied."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, L, vocab_size)`` for ``input_ids`` ``(B, L)``; ``attention_mask`` ``(B, L)``
        (1 = token, 0 = padding, either side) hides padding and numbers positions from its cumulative
        sum (the logits at padded positions are meaningless)."""
        return self._run(input_ids, None, attention_mask, None, keep=False)[0]

    def forward_step(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                     attention_mask: torch.Tensor | None = None,
                     position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """The forward of ``input_ids`` ``(B, T)`` after the ``S`` positions held in ``cache`` (None:
        none): ``(logits (B, T, vocab_size), the cache of all S + T positions)``. ``attention_mask``
        covers all ``S + T`` positions (None: no padding); ``position_ids`` ``(B, T)`` default to the
        mask's cumulative sum (or ``S, ..., S + T - 1`` without a mask). Feeding a sequence in pieces
        gives the logits of one :meth:`forward` of it."""
        return self._run(input_ids, cache, attention_mask, position_ids, keep=True)

    def _run(self, input_ids, cache, attention_mask, position_ids, keep: bool):
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be a (batch, length) tensor of token ids, got {input_ids.dtype} "
                             f"of shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        past = 0 if cache is None else cache[0][0].shape[2]
        if cache is not None and (len(cache) != len(self.blocks) or cache[0][0].shape[0] != b):
            raise ValueError(f"the cache holds {len(cache)} layers of batch {cache[0][0].shape[0]}; this model has "
                             f"{len(self.blocks)} layers and the input batch {b}")
        total = past + t
        if total > self.block_size:
            what = f"input of length {t} after {past} cached positions" if past else f"input of length {t}"
            raise ValueError(f"{what} is longer than block_size {self.block_size}")
        if attention_mask is not None and tuple(attention_mask.shape) != (b, total):
            raise ValueError(f"attention_mask must be of shape {(b, total)} (batch, cached + new positions), got "
                             f"{tuple(attention_mask.shape)}")
        dev = input_ids.device
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, total, device=dev).unsqueeze(0)
            else:
                position_ids = positions_of(attention_mask)[:, past:]
        elif tuple(position_ids.shape) not in ((b, t), (1, t)):
            raise ValueError(f"position_ids must be of shape {(b, t)}, got {tuple(position_ids.shape)}")
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))

        # the attention mask: causal (key j <= query i) and not padding; every query also sees
        # itself, so a padded query attends to something (no NaN rows to leak through the values)
        mask, is_causal = None, False
        if attention_mask is None and past == 0:
            is_causal = t > 1
        elif attention_mask is not None or t > 1:
            q_pos = torch.arange(past, total, device=dev).unsqueeze(1)
            k_pos = torch.arange(total, device=dev).unsqueeze(0)
            mask = k_pos <= q_pos  # (T, S + T)
            if attention_mask is not None:
                mask = (mask & attention_mask.bool().unsqueeze(1)) | (k_pos == q_pos)
                mask = mask.unsqueeze(1)  # (B, 1, T, S + T)

        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, is_causal, None if cache is None else cache[i])
            if keep:
                new_cache.append(kv)
        x = self.ln_f(x)
        return F.linear(x, self.head_weight), tuple(new_cache)


# ---------------------------------------------------------------- sampling

def left_pad(prompts, pad_id: int, max_prompt: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists (or 1-D tensors) as one left-padded batch ``(ids, attention_mask)``, both
    ``(B, L)`` long, ``L`` the longest prompt; ``max_prompt`` keeps each prompt's *last*
    ``max_prompt`` tokens (the end is what a continuation follows)."""
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be a token id (an integer >= 0), got {pad_id!r}")
    if max_prompt is not None:
        max_prompt = _positive_int("max_prompt", max_prompt)
    rows = []
    for i, p in enumerate(prompts):
        row = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if not row or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in row):
            raise ValueError(f"prompt {i} must be a non-empty list of token ids (integers >= 0)")
        rows.append(row if max_prompt is None else row[-max_prompt:])
    if not rows:
        raise ValueError("left_pad needs at least one prompt")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _is_hf(model) -> bool:
    return hasattr(model, "generate") and hasattr(model, "config")


def _pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """The next token of each row of ``logits`` ``(B, V)``: argmax at temperature 0, else a draw
    from ``softmax(logits / temperature)`` restricted to the ``top_k`` largest (0: all), then to the
    smallest set of most likely tokens whose probability reaches ``top_p``."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = (probs.cumsum(-1) - probs) >= top_p  # the mass before a token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def _check_prompts(input_ids, attention_mask):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0 \
            or input_ids.shape[0] == 0 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        shown = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor of token ids, got {shown}")
    if attention_mask is None:
        return input_ids.long(), None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shown = (tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor)
                 else type(attention_mask).__name__)
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {shown}")
    m = attention_mask.long()
    if ((m != 0) & (m != 1)).any():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if (m.diff(dim=1) < 0).any() or (m[:, -1] == 0).any():
        raise ValueError("prompts must be left-padded (attention_mask 0...0 1...1 in every row; see left_pad)")
    return input_ids.long(), m


def generate(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_id: int | None = None, pad_id: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue the left-padded prompts ``input_ids`` ``(B, P)`` (``attention_mask``: 1 = token,
    0 = padding; None: no padding) by up to ``max_new_tokens`` tokens each.

    Each token is the argmax when ``temperature`` is 0, else drawn from the model's next-token
    distribution at ``temperature``, kept to the ``top_k`` most likely tokens (0: all) and to the
    nucleus of probability ``top_p`` (1: all), using only ``generator`` (None: torch's global
    generator), so a seeded call is exactly reproducible. A row stops at its first ``eos_id``; its
    later positions hold ``pad_id`` (``eos_id`` when None); generation ends early once every row has
    stopped. Runs without gradients with the model in eval mode (each module's mode restored after).

    Returns ``(sequences (B, P + N) long, completion_mask (B, P + N) bool)``, ``N <= max_new_tokens``
    the steps taken; the mask is True on the generated tokens up to and including each row's first
    EOS, False on the prompt and after it.

    How the model is run: a :class:`GPT` with its key/value cache (the ``P + max_new_tokens - 1``
    positions it reads must fit its ``block_size``); a Hugging Face model (one with ``.generate`` and ``.config``) with
    ``past_key_values`` (``cache`` where its forward names it so) and position ids from the mask;
    other modules, and any with ``use_cache=False``, as ``model(sequence)`` (with
    ``attention_mask=mask`` when a mask was given) on the whole sequence each step, which is exact
    for left-padded prompts only if the model numbers positions from the mask, as :class:`GPT` does.
    """
    ids, mask = _check_prompts(input_ids, attention_mask)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0: no limit), got {top_k!r}")
    for name, v in (("eos_id", eos_id), ("pad_id", pad_id)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{name} must be a token id (an integer >= 0) or None, got {v!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    b, p = ids.shape
    if isinstance(model, GPT) and p + max_new_tokens - 1 > model.context:  # the last token is never read
        raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} needs {p + max_new_tokens - 1} "
                         f"positions, more than block_size {model.context}")
    param = next(model.parameters(), None)
    if param is not None:
        ids = ids.to(param.device)
        mask = None if mask is None else mask.to(param.device)
    dev = ids.device

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return _decode(model, ids, mask, attention_mask is not None, max_new_tokens, temperature, top_p,
                           top_k, eos_id, pad_id, generator, use_cache, dev)
    finally:
        for m, training in modes:
            m.training = training


def _decode(model, ids, mask, mask_given, max_new_tokens, temperature, top_p, top_k, eos_id, pad_id,
            generator, use_cache, dev):
    b, p = ids.shape
    padded = mask is not None and not bool(mask.all())
    full = mask if mask is not None else torch.ones_like(ids)  # mask of everything so far
    pos = positions_of(full)[:, -1:]  # position of the last token, per row
    seq = ids

    if use_cache and isinstance(model, GPT):
        logits, cache = model.forward_step(ids, None, full if padded else None)
        state = dict(cache=cache, pos=pos)

        def feed(tok):
            state["pos"] = state["pos"] + 1
            out, state["cache"] = model.forward_step(tok, state["cache"], full if padded else None, state["pos"])
            return out[:, -1]
    elif use_cache and _is_hf(model):
        params = inspect.signature(model.forward).parameters
        takes_pos = "position_ids" in params
        # ``past_key_values``; transformers >= 5.2x renames it ``cache`` (in and out), the old name deprecated
        past_name = "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
        kw = dict(position_ids=positions_of(full)) if takes_pos else {}
        out = model(input_ids=ids, attention_mask=full, use_cache=True, **{past_name: None}, **kw)
        logits = logits_of(out)
        state = dict(past=getattr(out, past_name), pos=pos)

        def feed(tok):
            state["pos"] = state["pos"] + 1
            kw = dict(position_ids=state["pos"]) if takes_pos else {}
            out = model(input_ids=tok, attention_mask=full, use_cache=True, **{past_name: state["past"]}, **kw)
            state["past"] = getattr(out, past_name)
            return logits_of(out)[:, -1]
    else:
        def run(s):
            return logits_of(model(s, attention_mask=full) if mask_given else model(s))

        logits = run(ids)

        def feed(tok):
            return run(seq)[:, -1]
    logits = logits[:, -1]

    fill = pad_id if pad_id is not None else eos_id
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    tokens, live_steps = [], []
    for step in range(max_new_tokens):
        tok = _pick(logits, temperature, top_k, top_p, generator).to(dev)
        live = ~done
        if fill is not None:
            tok = torch.where(live, tok, torch.full_like(tok, fill))
        tokens.append(tok)
        live_steps.append(live)
        if eos_id is not None:
            done = done | (tok == eos_id)
            if bool(done.all()):
                break
        if step + 1 < max_new_tokens:
            full = torch.cat([full, torch.ones_like(full[:, :1])], dim=1)
            seq = torch.cat([seq, tok[:, None]], dim=1)
            logits = feed(tok[:, None])
    if not tokens:
        return ids, torch.zeros_like(ids, dtype=torch.bool)
    sequences = torch.cat([ids, torch.stack(tokens, 1)], dim=1)
    completion = torch.cat([torch.zeros_like(ids, dtype=torch.bool), torch.stack(live_steps, 1)], dim=1)
    return sequences, completion


def continuations(model: nn.Module, prompts, *, pad_id: int, **sampling) -> list[list[int]]:
    """Each of ``prompts`` (token-id lists) continued by ``model`` in one batch: :func:`left_pad`,
    then :func:`generate` with ``sampling`` (``max_new_tokens``, ``temperature``, ``top_p``,
    ``top_k``, ``eos_id``, ``generator``, ...); row ``i`` is its generated tokens up to and
    including the first ``eos_id`` (where ``generate``'s completion mask is True)."""
    ids, mask = left_pad(prompts, pad_id)
    seq, completion = generate(model, ids, mask, pad_id=pad_id, **sampling)
    seq, completion = seq.cpu(), completion.cpu()
    return [seq[i][completion[i]].tolist() for i in range(seq.shape[0])]
