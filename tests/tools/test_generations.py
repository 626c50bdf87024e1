"""continuation_nll against an independent per-sequence computation; generation_report on tiny
language models (a GPT, and a collapsed model that always says the same token)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.models.lm import GPT
from distill.tools.generations import continuation_nll, generation_report

V = 11


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    model = GPT(vocab_size=V, block_size=32, n_layer=1, n_head=1, n_embd=8)
    with torch.no_grad():  # larger weights than GPT-2's init, so the distribution is far from uniform
        for p in model.parameters():
            p.mul_(20.0) if p.dim() > 1 else None
    return model


def reference_nll(model, prompts, completions):
    """Each (prompt, completion) alone, unpadded: sum of -log p(c_t | everything before)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            if not c:
                continue
            row = torch.tensor([p + c])
            logp = F.log_softmax(model(row)[0].double(), -1)
            for k, tok in enumerate(c):
                total -= float(logp[len(p) + k - 1, tok])
                n += 1
    return total / n, n


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [2, 2]]
COMPLETIONS = [[4, 5], [6, 7, 8, 9, 10], [1], []]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_continuation_nll_matches_per_sequence_log_softmax(batch_size):
    model = tiny_gpt()
    nll, n = continuation_nll(model, PROMPTS, COMPLETIONS, batch_size=batch_size)
    ref, ref_n = reference_nll(model, PROMPTS, COMPLETIONS)
    assert n == ref_n == 8
    assert nll == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert ref > 0.5  # a real, non-trivial number (not uniform log(11) by accident)
    assert abs(ref - math.log(V)) > 1e-3


def test_only_completion_tokens_are_scored():
    model = tiny_gpt()
    base, _ = continuation_nll(model, [[1, 2, 3]], [[4, 5]])
    # the token after the completion is never scored: here it is padding of a batch-mate, whatever
    # the batch-mate's completion holds the short row's score is the same
    for tail in ([1], [9], [10, 10, 10]):
        both, n = continuation_nll(model, [[1, 2, 3], [1, 2, 3, 4, 5, 6, 7]], [[4, 5], tail], batch_size=2)
        alone, _ = continuation_nll(model, [[1, 2, 3, 4, 5, 6, 7]], [tail])
        assert n == 2 + len(tail)
        assert both == pytest.approx((2 * base + len(tail) * alone) / n, rel=1e-5)
    # extending the completion adds that token's term and leaves the earlier ones alone
    longer, _ = continuation_nll(model, [[1, 2, 3]], [[4, 5, 6]])
    last, _ = continuation_nll(model, [[1, 2, 3, 4, 5]], [[6]])
    assert 3 * longer == pytest.approx(2 * base + last, rel=1e-5)
    # the prompt's own tokens are context, not targets: the score is the completion's alone
    one, n1 = continuation_nll(model, [[1, 2, 3]], [[4]])
    with torch.no_grad():
        ref = -float(F.log_softmax(model(torch.tensor([[1, 2, 3]]))[0, -1], -1)[4])
    assert n1 == 1 and one == pytest.approx(ref, rel=1e-5)
    # changing a completion token changes the score
    changed, _ = continuation_nll(model, [[1, 2, 3]], [[4, 6]])
    assert abs(changed - base) > 1e-4


def test_padding_after_the_completion_is_not_scored():
    # the short row's columns after its completion are padding; whatever token id sits there must
    # not change the score. A scorer that records its input lets us check they are masked out.
    model = tiny_gpt()
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None):
            seen.append((input_ids.clone(), attention_mask.clone()))
            out = self.inner(input_ids, attention_mask)
            # garbage wherever the mask says padding: it must never reach the result
            return out.masked_fill(~attention_mask.bool()[..., None], float("nan"))

    nll, n = continuation_nll(Spy(), [[1, 2], [3, 4, 5, 6, 7, 8]], [[3], [9, 10]], batch_size=2)
    ref, ref_n = reference_nll(model, [[1, 2], [3, 4, 5, 6, 7, 8]], [[3], [9, 10]])
    assert math.isfinite(nll) and n == ref_n == 3 and nll == pytest.approx(ref, rel=1e-5)
    ids, mask = seen[0]
    # right-padded [prompt | completion | pad], the last column (only ever a target) not fed
    assert ids.shape == (2, 7) and mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0] and mask[1].tolist() == [1] * 7


def test_continuation_nll_restores_modes_and_edge_cases():
    model = tiny_gpt()
    model.train()
    model.blocks[0].eval()
    continuation_nll(model, [[1]], [[2]])
    assert model.training and not model.blocks[0].training and model.ln_f.training
    nll, n = continuation_nll(model, [[1], [2]], [[], []])
    assert n == 0 and math.isnan(nll)
    with pytest.raises(ValueError, match="as many"):
        continuation_nll(model, [[1], [2]], [[3]])
    with pytest.raises(ValueError):
        continuation_nll(model, [[]], [[3]])
    with pytest.raises(ValueError):
        continuation_nll(model, [[1]], [[3]], batch_size=0)


class Tok:
    def decode(self, ids):
        return " ".join(f"t{i}" for i in ids)


def test_generation_report_on_a_tiny_gpt():
    student, teacher = tiny_gpt(0), tiny_gpt(1)
    prompts = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], [2]]
    kw = dict(max_new_tokens=6, temperature=1.0, batch_size=2, tokenizer=Tok(), samples=2)
    r = generation_report(student, teacher, prompts, seed=0, **kw)
    json.loads(json.dumps(r, allow_nan=False))  # plain, finite JSON
    for mode in ("greedy", "sampled"):
        m = r[mode]
        assert set(m) == {"teacher_nll", "tokens", "distinct_1", "distinct_2", "repetition_4", "mean_length",
                          "tokens_per_s"}
        assert m["tokens"] == 5 * 6 and m["mean_length"] == 6.0  # no eos_id: every row runs to the end
        assert 0 < m["teacher_nll"] < 50 and 0 < m["distinct_1"] <= 1 and 0 < m["distinct_2"] <= 1
        assert 0 <= m["repetition_4"] <= 1 and m["tokens_per_s"] > 0
    assert len(r["samples"]) == 2 and set(r["samples"][0]) == {"prompt", "greedy", "sampled"}
    assert r["samples"][0]["prompt"] == "t1 t2 t3" and len(r["samples"][0]["greedy"].split()) == 6

    again = generation_report(student, teacher, prompts, seed=0, **kw)
    other = generation_report(student, teacher, prompts, seed=1, **kw)
    same_greedy = generation_report(student, teacher, prompts, seed=1, **dict(kw, temperature=0.7))
    assert again["samples"] == r["samples"]  # sampled reproducible with the seed
    assert again["sampled"]["teacher_nll"] == r["sampled"]["teacher_nll"]
    assert [s["sampled"] for s in other["samples"]] != [s["sampled"] for s in r["samples"]] or \
        other["sampled"]["teacher_nll"] != r["sampled"]["teacher_nll"]
    # greedy does not depend on the seed or the sampling settings
    assert [s["greedy"] for s in other["samples"]] == [s["greedy"] for s in r["samples"]]
    assert same_greedy["greedy"]["teacher_nll"] == r["greedy"]["teacher_nll"]
    # the teacher NLL is continuation_nll of what the student wrote: scoring by the student itself differs
    self_scored = generation_report(student, student, prompts, seed=0, **kw)
    assert self_scored["greedy"]["teacher_nll"] != r["greedy"]["teacher_nll"]
    assert "samples" in generation_report(student, teacher, prompts, max_new_tokens=2) and \
        generation_report(student, teacher, prompts, max_new_tokens=2)["samples"] == []


def test_generation_report_stops_at_eos():
    class Says(nn.Module):  # always the token after the last one, so EOS (5) comes at a known step
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, attention_mask=None):
            return F.one_hot((input_ids + 1) % V, V).float() * 20 + self.w

    r = generation_report(Says(), Says(), [[2], [4], [8]], max_new_tokens=5, eos_id=5, tokenizer=Tok())
    # [2] -> 3 4 5 (3 tokens, EOS included); [4] -> 5; [8] -> 9 10 0 1 2 (no EOS within 5)
    assert r["greedy"]["tokens"] == 3 + 1 + 5 and r["greedy"]["mean_length"] == pytest.approx(3.0)
    assert [s["greedy"] for s in r["samples"]] == ["t3 t4 t5", "t5", "t9 t10 t0 t1 t2"]
    assert r["greedy"]["teacher_nll"] < 1e-6  # the teacher expects exactly these tokens


class Collapsed(nn.Module):
    """Whatever the input, the logits favour token 3 by 20 nats."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        b, l = input_ids.shape
        return F.one_hot(torch.full((b, l), 3, dtype=torch.long), V).float() * 20 + self.w


def test_a_collapsed_student_is_flagged_by_diversity_and_repetition():
    prompts = [[1, 2], [4], [6, 7, 8], [9]]
    r = generation_report(Collapsed(), tiny_gpt(), prompts, max_new_tokens=24, seed=0)
    for mode in ("greedy", "sampled"):
        assert r[mode]["distinct_2"] < 0.02  # one bigram (3, 3) among 4 * 23
        assert r[mode]["distinct_1"] < 0.02
        assert r[mode]["repetition_4"] > 0.9
    healthy = generation_report(tiny_gpt(2), tiny_gpt(), prompts, max_new_tokens=24, seed=0)
    assert healthy["sampled"]["distinct_2"] > 0.2 and healthy["sampled"]["repetition_4"] < 0.9


def test_generation_report_rejects_bad_input():
    m = tiny_gpt()
    with pytest.raises(ValueError, match="at least one prompt"):
        generation_report(m, m, [], max_new_tokens=3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generation_report(m, m, [[1]], max_new_tokens=bad)
    with pytest.raises(ValueError):
        generation_report(m, m, [[1], []], max_new_tokens=3)
    with pytest.raises(ValueError, match="batch_size"):
        generation_report(m, m, [[1]], max_new_tokens=3, batch_size=0)
