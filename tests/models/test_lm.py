import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import load_checkpoint, save_checkpoint
from distill.digest import key_name
from distill.models import GPT, continuations, generate, left_pad

V = 50


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(V, **dict(dict(block_size=32, n_layer=2, n_head=2, n_embd=32), **kw)).eval()


@pytest.fixture(scope="module")
def gpt():
    return tiny()


def ids(*rows):
    return torch.tensor(rows, dtype=torch.long)


def test_shapes_factory_and_init():
    m = tiny(n_layer=3)
    x = torch.randint(0, V, (3, 7))
    out = m(x)
    assert out.shape == (3, 7, V) and out.dtype == torch.float32
    assert m.context == m.block_size == 32
    assert key_name(GPT) == "distill.models.GPT"
    assert m.distill_factory == ("distill.models:GPT", m.arch)
    assert m.arch == dict(vocab_size=V, block_size=32, n_layer=3, n_head=2, n_embd=32, dropout=0.0, tie_weights=True)
    assert "lm_head.weight" not in m.state_dict() and m.head_weight is m.wte.weight
    assert "lm_head.weight" in tiny(tie_weights=False).state_dict()
    # GPT-2 init: std 0.02, residual projections 0.02 / sqrt(2 n_layer), biases 0
    big = GPT(V, block_size=8, n_layer=3, n_head=2, n_embd=64)
    assert abs(big.blocks[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert abs(big.blocks[0].mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(6)) < 0.001
    assert abs(big.blocks[1].attn.c_proj.weight.std().item() - 0.02 / math.sqrt(6)) < 0.001
    assert not big.blocks[0].attn.c_attn.bias.any()


def test_causal(gpt):
    x = torch.randint(0, V, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % V
    a, b = gpt(x), gpt(y)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_right_and_left_padding_leave_real_positions_unchanged(gpt):
    short, full = [5, 9, 3], [1, 2, 3, 4, 5, 6]
    alone = gpt(ids(short))[0]
    right = gpt(ids(short + [0, 0, 0], full), attention_mask=ids([1, 1, 1, 0, 0, 0], [1] * 6))
    assert torch.allclose(right[0, :3], alone, atol=1e-5)
    batch, mask = left_pad([short, full], pad_id=0)
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1], [1] * 6]
    left = gpt(batch, attention_mask=mask)
    assert torch.allclose(left[0, 3:], alone, atol=1e-5)
    assert torch.allclose(left[1], gpt(ids(full))[0], atol=1e-5)
    assert torch.isfinite(left).all() and torch.isfinite(right).all()  # padded queries give no NaN


def test_cache_equals_full_forward(gpt):
    x = torch.randint(0, V, (2, 10))
    want = gpt(x)
    got, cache = gpt.forward_step(x[:, :4])
    pieces = [got]
    for a, b in ((4, 5), (5, 7), (7, 8), (8, 10)):  # one token and several at a time
        out, cache = gpt.forward_step(x[:, a:b], cache)
        pieces.append(out)
    assert len(cache) == 2 and cache[0][0].shape == (2, 2, 10, 16)
    assert torch.allclose(torch.cat(pieces, 1), want, atol=1e-5)
    # left-padded: the mask covers cached + new positions
    batch, mask = left_pad([[3, 4, 5, 6, 7, 8], [9, 8, 7]], pad_id=0)
    want = gpt(batch, attention_mask=mask)
    out, cache = gpt.forward_step(batch[:, :4], None, mask[:, :4])
    rest, _ = gpt.forward_step(batch[:, 4:], cache, mask)
    assert torch.allclose(torch.cat([out, rest], 1), want, atol=1e-5)
    with pytest.raises(ValueError, match="block_size 32"):
        gpt.forward_step(torch.zeros(2, 29, dtype=torch.long), cache)  # 4 + 29 > 32


def test_builds_on_meta_with_the_saved_shapes():
    for kw in (dict(), dict(tie_weights=False, n_layer=1, n_head=4)):
        m = tiny(**kw)
        with torch.device("meta"):
            shell = GPT(**m.distill_factory[1])
        assert all(t.is_meta for t in shell.state_dict().values())
        assert {k: t.shape for k, t in shell.state_dict().items()} == {k: t.shape for k, t in m.state_dict().items()}


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip(tmp_path, tie):
    m = tiny(tie_weights=tie)
    x = torch.randint(0, V, (2, 9))
    save_checkpoint(tmp_path / "lm", m, dict(note="lm"))
    # "distill.models:GPT" rebuilds without trust once it is in OWN_FACTORIES; trusting it works either way
    m2, side = load_checkpoint(tmp_path / "lm", trust_factory=True)
    assert type(m2) is GPT and m2.arch == m.arch and side["note"] == "lm"
    assert (m2.head_weight is m2.wte.weight) == tie
    assert torch.equal(m2(x), m(x))
    m3, _ = load_checkpoint(tmp_path / "lm", model=GPT(**m.arch))
    assert torch.equal(m3(x), m(x))


def greedy_by_full_forwards(model, rows, n):
    out = []
    for r in rows:
        seq = list(r)
        for _ in range(n):
            seq.append(int(model(ids(seq))[0, -1].argmax()))
        out.append(seq[len(r):])
    return out


def test_greedy_equals_argmax_of_full_forwards(gpt):
    rows = [[1, 2, 3, 4, 5], [7, 8], [9, 9, 9]]
    batch, mask = left_pad(rows, pad_id=0)
    want = greedy_by_full_forwards(gpt, rows, 6)
    for use_cache in (True, False):
        seq, comp = generate(gpt, batch, mask, max_new_tokens=6, temperature=0, use_cache=use_cache)
        assert seq.shape == comp.shape == (3, 11) and seq.dtype == torch.long and comp.dtype == torch.bool
        assert torch.equal(seq[:, :5], batch) and seq[:, 5:].tolist() == want
        assert not comp[:, :5].any() and comp[:, 5:].all()


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(gpt):
    batch, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    kw = dict(max_new_tokens=12, temperature=1.5, top_k=20, top_p=0.9)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a, _ = generate(gpt, batch, mask, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    b, _ = generate(gpt, batch, mask, generator=torch.Generator().manual_seed(7), **kw)
    c, _ = generate(gpt, batch, mask, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    d, _ = generate(gpt, batch, mask, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.equal(a, d)


def test_top_k_1_and_tiny_top_p_are_greedy(gpt):
    batch, mask = left_pad([[1, 2, 3], [4, 5]], pad_id=0)
    greedy, _ = generate(gpt, batch, mask, max_new_tokens=8, temperature=0)
    g = torch.Generator().manual_seed(0)
    for kw in (dict(top_k=1), dict(top_p=1e-6), dict(top_k=1, top_p=0.5)):
        seq, _ = generate(gpt, batch, mask, max_new_tokens=8, temperature=2.0, generator=g, **kw)
        assert torch.equal(seq, greedy), kw


class Counter(nn.Module):
    """Predicts ``last token + 1`` (mod V), whatever came before: EOS arrives when it is due."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, attention_mask=None):
        return 50 * self.w * F.one_hot((x + 1) % V, V).float()


def test_eos_masks_and_fills_and_stops_early():
    batch, mask = left_pad([[2, 3], [0]], pad_id=49)
    seq, comp = generate(Counter(), batch, mask, max_new_tokens=9, temperature=0, eos_id=5, pad_id=49)
    assert seq.tolist() == [[2, 3, 4, 5, 49, 49, 49], [49, 0, 1, 2, 3, 4, 5]]  # stopped after 5 steps
    assert comp.tolist() == [[False, False, True, True, False, False, False],
                             [False, False, True, True, True, True, True]]
    seq, comp = generate(Counter(), batch, mask, max_new_tokens=3, eos_id=5, generator=torch.Generator())
    assert seq.tolist() == [[2, 3, 4, 5, 5], [49, 0, 1, 2, 3]]  # no pad_id: filled with EOS; temperature 1
    assert comp[:, 2:].tolist() == [[True, True, False], [True, True, True]]
    seq, comp = generate(Counter(), ids([1]), max_new_tokens=0)
    assert seq.tolist() == [[1]] and comp.tolist() == [[False]]


def test_continuations_are_the_generated_tokens_up_to_and_including_eos():
    # prompts of different lengths: left padding must not leak into a row's continuation
    out = continuations(Counter(), [[2, 3], [0], [7]], pad_id=49, max_new_tokens=4, temperature=0, eos_id=5)
    assert out == [[4, 5], [1, 2, 3, 4], [8, 9, 10, 11]]
    assert continuations(Counter(), [[1]], pad_id=0, max_new_tokens=0) == [[]]


def test_left_pad_truncates_from_the_left():
    batch, mask = left_pad([list(range(1, 11)), torch.tensor([3, 4])], pad_id=0, max_prompt=4)
    assert batch.tolist() == [[7, 8, 9, 10], [0, 0, 3, 4]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]] and batch.dtype == mask.dtype == torch.long
    for bad in (dict(prompts=[[]]), dict(prompts=[]), dict(prompts=[[1.5]]), dict(prompts=[[1]], max_prompt=0),
                dict(prompts=[[1]], pad_id=-1)):
        with pytest.raises(ValueError):
            left_pad(**dict(dict(pad_id=0), **bad))


def test_generate_restores_modes_and_keeps_no_graph():
    m = tiny(dropout=0.1).train()
    m.blocks[0].eval()  # a mixed state comes back as it was
    seq, _ = generate(m, ids([1, 2]), max_new_tokens=3, temperature=0)
    assert m.training and not m.blocks[0].training and m.blocks[1].training and not seq.requires_grad
    eval_seq, _ = generate(m.eval(), ids([1, 2]), max_new_tokens=3, temperature=0)
    assert torch.equal(seq, eval_seq)  # dropout was off


def test_hugging_face_model_with_its_cache_matches_the_rerun_path():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg)
    rows = [[1, 2, 3, 4, 5], [6, 7, 8], [11, 40, 2, 7, 30]]
    batch, mask = left_pad(rows, pad_id=0)
    seq, comp = generate(hf, batch, mask, max_new_tokens=6, temperature=0)
    assert hf.training  # restored
    for i, r in enumerate(rows):  # each prompt alone, re-run on the whole sequence every step
        alone, _ = generate(hf, ids(r), max_new_tokens=6, temperature=0, use_cache=False)
        assert seq[i, 5:].tolist() == alone[0, len(r):].tolist()
    same_len = batch[[0, 2]]
    a, _ = generate(hf, same_len, max_new_tokens=6, temperature=0)
    b, _ = generate(hf, same_len, max_new_tokens=6, temperature=0, use_cache=False)
    assert torch.equal(a, b) and comp[:, 5:].all()


def test_bad_arguments_are_value_errors(gpt):
    for kw, msg in ((dict(vocab_size=0), "vocab_size"), (dict(vocab_size=V, n_embd=30, n_head=4), "divisible"),
                    (dict(vocab_size=V, dropout=1.0), "dropout"), (dict(vocab_size=V, block_size=2.5), "block_size"),
                    (dict(vocab_size=V, n_layer=True), "n_layer"), (dict(vocab_size=V, tie_weights="yes"), "tie")):
        with pytest.raises(ValueError, match=msg):
            GPT(**kw)
    with pytest.raises(ValueError, match="length 33 is longer than block_size 32"):
        gpt(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        gpt(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    x = ids([1, 2, 3])
    for kw, msg in ((dict(max_new_tokens=-1), "max_new_tokens"),
                    (dict(max_new_tokens=2, temperature=-1), "temperature"),
                    (dict(max_new_tokens=2, top_p=0.0), "top_p"), (dict(max_new_tokens=2, top_k=-1), "top_k"),
                    (dict(max_new_tokens=2, eos_id=-3), "eos_id"), (dict(max_new_tokens=2, generator=3), "generator"),
                    (dict(max_new_tokens=31), "33 positions, more than block_size 32"),
                    (dict(max_new_tokens=2, attention_mask=ids([1, 1, 0])), "left-padded"),
                    (dict(max_new_tokens=2, attention_mask=ids([1, 2, 1])), "0 \\(padding\\)")):
        with pytest.raises(ValueError, match=msg):
            generate(gpt, x, **kw)
    assert generate(gpt, x, max_new_tokens=30, temperature=0)[0].shape == (1, 33)  # 32 positions read
    with pytest.raises(ValueError, match="input_ids"):
        generate(gpt, torch.tensor([1.0, 2.0]), max_new_tokens=1)
