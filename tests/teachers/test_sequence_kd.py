"""Sequence-level KD: the teacher's completions replace the data's (up to and including EOS), are
cached by teacher, prompts and settings, and a damaged cache is regenerated, never trusted."""
from __future__ import annotations

import torch
from torch import nn

from distill.data.prompts import prompt_pairs
from distill.teachers.sequence_kd import completion_key, teacher_completions

V, EOS, PAD = 13, 0, 7


class Counter(nn.Module):
    """Always predicts ``last token + 1 (mod V)``: from a prompt ending in ``k`` it writes
    ``k+1, ..., V-1, 0 (EOS)``."""

    def __init__(self, step=1):
        super().__init__()
        self.register_buffer("step", torch.tensor(step))  # a buffer: part of the teacher's identity
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, input_ids, attention_mask=None):
        return self.scale * nn.functional.one_hot((input_ids + self.step) % V, V).float()


def _prompts():
    return prompt_pairs([([3, 4, 9], [5, EOS]), ([11], [EOS]), ([2], [1, 1, EOS])], eos_id=EOS, pad_id=PAD,
                        vocab_size=V)


def test_the_teachers_completions_replace_the_datas_and_stop_at_eos(tmp_path):
    src = _prompts()
    out = teacher_completions(Counter(), src, max_new_tokens=5, batch_size=2, log=lambda *_: None)
    assert out.prompts() == src.prompts()
    # 9 -> 10 11 12 0 ; 11 -> 12 0 ; 2 -> 3 4 5 6 7 (cut at 5 tokens, no EOS reached)
    assert out.completions() == [[10, 11, 12, EOS], [12, EOS], [3, 4, 5, 6, 7]]
    assert out.fingerprint != src.fingerprint and out.layout["kind"] == "sequence_kd"
    assert out.layout["prompts"] == src.fingerprint
    # the training rows score the completion only
    _, y = out.take([1])
    assert y.tolist()[0][:1] == [-100]


def test_completions_are_cached_by_teacher_prompts_and_settings_and_a_damaged_file_is_regenerated(tmp_path):
    src, said = _prompts(), []
    first = teacher_completions(Counter(), src, max_new_tokens=5, root=tmp_path, log=said.append)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "generating" not in said[-1] and "read" not in said[-1]
    again = teacher_completions(Counter(), src, max_new_tokens=5, root=tmp_path, log=said.append)
    assert "read from" in said[-1] and again.completions() == first.completions()
    assert again.fingerprint == first.fingerprint
    # another teacher (other weights) and other settings are other keys, other completions
    other = teacher_completions(Counter(step=2), src, max_new_tokens=5, root=tmp_path, log=said.append)
    assert other.completions()[1] == [0]  # 11 + 2 = 13 = 0 (EOS) mod 13
    assert other.fingerprint != first.fingerprint
    teacher_completions(Counter(), src, max_new_tokens=3, root=tmp_path, log=said.append)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    # a damaged file: regenerated, and the same completions come back
    files[0].write_bytes(files[0].read_bytes()[:40])
    fixed = teacher_completions(Counter(), src, max_new_tokens=5, root=tmp_path, log=said.append)
    assert any("damaged" in s for s in said) and fixed.completions() == first.completions()
    assert teacher_completions(Counter(), src, max_new_tokens=5, root=tmp_path, log=said.append).completions() \
        == first.completions() and "read from" in said[-1]


def test_the_key_changes_with_each_part():
    base = completion_key("t", "p", dict(temperature=0.0))
    assert len({base, completion_key("u", "p", dict(temperature=0.0)), completion_key("t", "q", dict(temperature=0.0)),
                completion_key("t", "p", dict(temperature=1.0))}) == 4


def test_sampled_completions_are_reproducible_by_seed():
    torch.manual_seed(0)
    from distill.models import GPT
    gpt = GPT(V, block_size=32, n_layer=1, n_head=1, n_embd=16)
    src = _prompts()
    a = teacher_completions(gpt, src, max_new_tokens=6, temperature=1.0, seed=3, log=lambda *_: None)
    b = teacher_completions(gpt, src, max_new_tokens=6, temperature=1.0, seed=3, log=lambda *_: None)
    c = teacher_completions(gpt, src, max_new_tokens=6, temperature=1.0, seed=4, log=lambda *_: None)
    assert a.completions() == b.completions()
    assert a.fingerprint != c.fingerprint
