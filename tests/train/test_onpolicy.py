"""On-policy distillation: the step's draw, the rolled-out rows and their masks (values and
gradients), λ = 0 as the off-policy run bit for bit, a resumed run ending as the uninterrupted one,
and bad settings refused before training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import distill
from distill import OnPolicy, TrainConfig, fit
from distill.data.prompts import prompt_pairs
from distill.losses import TokenDistillation
from distill.models import GPT
from distill.train.onpolicy import on_policy_step, rollout, sampling_generator

V, EOS = 13, 0


def quiet(*_a):
    pass


def _pairs(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(1, V, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
        out.append((p, torch.randint(1, V, (5,), generator=g).tolist() + [EOS]))
    return out


def _source(n=24):
    return prompt_pairs(_pairs(n), eos_id=EOS, pad_id=EOS, vocab_size=V)


def _gpt(seed):
    torch.manual_seed(seed)
    return GPT(V, block_size=32, n_layer=1, n_head=1, n_embd=16)


def _cfg(pol, **kw):
    return TrainConfig(**dict(dict(epochs=2, batch_size=8, optimizer="adamw", lr=1e-2, on_policy=pol), **kw))


class Counter(nn.Module):
    """A causal LM that always predicts ``last token + 1 (mod V)``: from a prompt ending in ``k``
    it writes ``k+1, ..., V-1, 0 (EOS), 1, 2, ...`` — so the tokens after its EOS are known."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, input_ids, attention_mask=None):
        return self.scale * nn.functional.one_hot((input_ids + 1) % V, V).float()


def test_the_draw_is_seeded_by_seed_and_step_and_its_share_is_lambda():
    assert [on_policy_step(0, s, 0.5) for s in range(50)] == [on_policy_step(0, s, 0.5) for s in range(50)]
    assert [on_policy_step(0, s, 0.5) for s in range(50)] != [on_policy_step(1, s, 0.5) for s in range(50)]
    assert not any(on_policy_step(3, s, 0.0) for s in range(200))
    assert all(on_policy_step(3, s, 1.0) for s in range(200))
    share = sum(on_policy_step(0, s, 0.3) for s in range(4000)) / 4000
    assert abs(share - 0.3) < 0.03
    a = torch.rand(5, generator=sampling_generator(0, 7, rank=0))
    assert torch.equal(a, torch.rand(5, generator=sampling_generator(0, 7, rank=0)))
    assert not torch.equal(a, torch.rand(5, generator=sampling_generator(0, 7, rank=1)))  # each process its own


def test_rollout_keeps_the_prompt_and_the_samples_up_to_eos_and_scores_only_those():
    # prompts ending in 9 and 11: the counter writes 10 11 12 0 | 1 2 ... and 12 0 | 1 2 ...
    src = prompt_pairs([([3, 4, 9], [5, EOS]), ([11], [EOS])], eos_id=EOS, pad_id=7, vocab_size=V)
    x, y = src.take([0, 1])
    inputs, labels = rollout(Counter(), x, src.prompt_lengths, OnPolicy(lam=1.0, max_new_tokens=8, temperature=0.0),
                             eos_id=EOS, pad_id=7, generator=torch.Generator().manual_seed(0))
    assert inputs["input_ids"].tolist() == [[3, 4, 9, 10, 11, 12, 0], [11, 12, 0, 7, 7, 7, 7]]
    assert inputs["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, 10, 11, 12, 0], [-100, 12, 0, -100, -100, -100, -100]]

    # the gradient of a token loss on these rows reaches the logits that predict sampled tokens only
    logits = torch.randn(2, 7, V, requires_grad=True)
    teacher = torch.randn(2, 7, V)
    TokenDistillation(hard_weight=1.0)(logits, teacher, labels).backward()
    scored = logits.grad.abs().sum(-1) > 0
    # logits at t predict token t + 1: row 0 predicts positions 3..6 from 2..5, row 1 positions 1..2 from 0..1
    assert scored.tolist() == [[False, False, True, True, True, True, False], [True, True] + [False] * 5]


def test_lambda_zero_is_the_off_policy_run_bit_for_bit_and_lambda_one_samples_every_step():
    src, teacher = _source(), _gpt(5)
    off = fit(_gpt(0), src, _cfg(None), teacher=teacher, progress=False, log=quiet)
    zero = fit(_gpt(0), src, _cfg(OnPolicy(lam=0.0, max_new_tokens=6)), teacher=teacher, progress=False, log=quiet)
    for a, b in zip(off.model.state_dict().values(), zero.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["on_policy_steps"] for h in zero.history] == [0, 0]
    one = fit(_gpt(0), src, _cfg(OnPolicy(lam=1.0, max_new_tokens=6)), teacher=teacher, progress=False, log=quiet)
    assert [h["on_policy_steps"] for h in one.history] == [3, 3]
    assert all(0 < h["generate_share"] < 1 for h in one.history)
    assert any(not torch.equal(a, b) for a, b in zip(off.model.state_dict().values(), one.model.state_dict().values()))


class Interrupt(Exception):
    pass


def test_a_resumed_on_policy_run_ends_with_the_uninterrupted_runs_weights(tmp_path):
    src, teacher = _source(), _gpt(5)
    cfg = _cfg(OnPolicy(lam=0.5, max_new_tokens=6), epochs=3)
    full = fit(_gpt(0), src, cfg, teacher=teacher, run_dir=tmp_path / "a", progress=False, log=quiet)
    assert 0 < sum(h["on_policy_steps"] for h in full.history) < 9

    student = _gpt(0)
    calls = {"n": 0}

    def bomb(module, args):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 3 * 2 + 2:  # in epoch 3
                raise Interrupt

    h = student.register_forward_pre_hook(bomb)
    with pytest.raises(Interrupt):
        fit(student, src, cfg, teacher=teacher, run_dir=tmp_path / "b", progress=False, log=quiet)
    h.remove()
    resumed = fit(_gpt(9), src, cfg, teacher=teacher, run_dir=tmp_path / "b", progress=False, log=quiet)
    assert resumed.resumed_from == 2
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["on_policy_steps"] for h in resumed.history] == [h["on_policy_steps"] for h in full.history]


@pytest.mark.parametrize("kw, match", [
    (dict(lam=1.5), "lam"), (dict(lam=-0.1), "lam"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=-1), "top_k"),
])
def test_bad_settings_are_one_line_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        OnPolicy(**kw)


def test_runs_that_cannot_sample_are_refused_before_training():
    src, teacher = _source(), _gpt(5)
    with pytest.raises(ValueError, match="context"):  # prompts of up to 5 tokens + 40 > block_size 32
        fit(_gpt(0), src, _cfg(OnPolicy(max_new_tokens=40)), teacher=teacher, progress=False, log=quiet)
    with pytest.raises(ValueError, match="needs prompts"):
        fit(_gpt(0), distill.data.text.padded([[1, 2, 3]] * 4, pad_id=0, max_len=4, vocab_size=V),
            _cfg(OnPolicy()), teacher=teacher, progress=False, log=quiet)
    with pytest.raises(ValueError, match="teacher"):
        fit(_gpt(0), src, _cfg(OnPolicy(), objective=TokenDistillation(hard_weight=1.0, soft_weight=0.0)),
            progress=False, log=quiet)
    with pytest.raises(ValueError, match="on_policy must be"):
        TrainConfig(on_policy=0.5)
