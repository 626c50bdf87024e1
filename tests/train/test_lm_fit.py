"""fit on language models: next-token batches of named tensors, gradient accumulation normalised
over the step's tokens, the teacher on the fly, LM metrics, tied weights in checkpoints, Hugging
Face models saved so that transformers loads them back, and the CLI's --task lm."""
from __future__ import annotations

import random

import pytest
import torch

import distill
from conftest import one_line_error, quiet, run
from distill.data.text import TokenBlocks, padded
from distill.losses.functional import next_token_pairs
from distill.models import GPT

V = 40


def _ragged(n=16, seed=0, lo=3, hi=12):
    """``n`` sequences of different lengths, right-padded (the padding differs per row)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return padded([torch.randint(1, V, (k,), generator=g) for k in lengths], pad_id=0, max_len=hi, vocab_size=V)


def _gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(V, block_size=16, n_layer=1, n_head=2, n_embd=16, **kw)


def _cfg(**kw):
    return distill.TrainConfig(**dict(dict(epochs=1, batch_size=16, optimizer="sgd", lr=0.5, momentum=0.0), **kw))


def test_accumulation_gives_the_weights_of_one_batch():
    """2 micro-batches of 8 sequences of different lengths = one batch of 16: the loss of a step is
    the sum over all its valid tokens divided by their number, not the mean of two means."""
    data = _ragged()
    one = distill.fit(_gpt(), data, _cfg(), progress=False, log=quiet).model
    two = distill.fit(_gpt(), data, _cfg(accumulate=2), progress=False, log=quiet).model
    for (k, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    # the mean of the micro-batches' means would weight a token of a short half more: not the same step
    ids, mask = data.input_ids, data.attention_mask
    m = _gpt()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for half in (slice(0, 8), slice(8, 16)):
        s = m(ids[half], mask[half])
        s, _, t, valid = next_token_pairs(s, None, data.y[half])
        (torch.nn.functional.cross_entropy(s[valid], t[valid]) / 2).backward()
    opt.step()
    diff = max(float((a - b).abs().max()) for a, b in zip(one.state_dict().values(), m.state_dict().values()))
    assert diff > 1e-4


def test_padding_and_its_ids_do_not_count():
    """Changing the ids at padded positions (attention mask 0) changes nothing that is trained."""
    data = _ragged()
    ids = data.input_ids.masked_fill(data.attention_mask == 0, 7)
    other = TokenBlocks(ids, data.attention_mask, vocab_size=V)
    a = distill.fit(_gpt(), data, _cfg(), progress=False, log=quiet).model
    b = distill.fit(_gpt(), other, _cfg(), progress=False, log=quiet).model
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y)


def test_distilled_student_with_metrics_and_checkpoint(tmp_path):
    data, test = _ragged(32, seed=1), _ragged(8, seed=2)
    teacher = distill.fit(_gpt(3), data, _cfg(epochs=2, optimizer="adamw", lr=1e-2), progress=False, log=quiet).model
    cfg = _cfg(optimizer="adamw", lr=1e-2, objective=distill.TokenDistillation(divergence="jsd", temperature=2.0))
    res = distill.fit(_gpt(4), data, cfg, teacher=teacher, test=test, run_dir=tmp_path / "s", progress=False,
                      log=quiet)
    m = res.test
    assert m["n"] == int((test.y[:, 1:] != -100).sum())
    assert m["perplexity"] == pytest.approx(torch.tensor(m["nll"]).exp().item())
    assert 0 <= m["agreement"] <= 1 and m["kl"] >= 0
    loaded, side = distill.load_checkpoint(tmp_path / "s" / "model")
    assert side["task"] == "lm" and side["vocab_size"] == V
    x = {"input_ids": test.input_ids, "attention_mask": test.attention_mask}
    torch.testing.assert_close(loaded(**x), res.model(**x))
    # the same call again is the finished run
    again = distill.fit(_gpt(4), data, cfg, teacher=teacher, test=test, run_dir=tmp_path / "s", progress=False,
                        log=quiet)
    assert again.skipped


def test_vocabulary_mismatch_is_refused():
    data = _ragged()
    torch.manual_seed(0)
    small = GPT(V - 1, block_size=16, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ValueError, match="vocabulary"):
        distill.fit(small, data, _cfg(), progress=False, log=quiet)


def test_hugging_face_student_saved_for_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=V, n_positions=16, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)  # tied input and output embeddings
    data = _ragged()
    res = distill.fit(model, data, _cfg(optimizer="adamw", lr=1e-2), teacher=None, run_dir=tmp_path / "hf",
                      progress=False, log=quiet)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "hf")
    ours, side = distill.load_checkpoint(tmp_path / "hf" / "model")  # distill's own, rebuilt from the config
    assert side["factory"]["target"] == "distill.models:causal_lm"
    x = dict(input_ids=data.input_ids[:2], attention_mask=data.attention_mask[:2])
    ref = res.model(**x).logits
    torch.testing.assert_close(back(**x).logits, ref)
    torch.testing.assert_close(ours(**x).logits, ref)
    assert ours.lm_head.weight.data_ptr() == ours.transformer.wte.weight.data_ptr()  # still tied


def _text(folder, docs=3, lines=120, seed=0):
    random.seed(seed)
    words = "the cat sat on a mat and dog ran to big red house it was very good day sun".split()
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(docs):
        (folder / f"doc{d}.txt").write_text("\n".join(" ".join(random.choice(words) for _ in range(10))
                                                      for _ in range(lines)))
    return folder


def test_cli_lm_teacher_student_evaluate_generate(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    data = _text(tmp_path / "text")
    base = ["--task", "lm", "--data", data, "--no-progress", "--epochs", "1", "--lr", "3e-3"]
    code, out, err = run(capsys, "teacher", *base, "--tokenizer", "bpe:300", "--block-size", "16", "--layers", "1",
                         "--heads", "2", "--embd", "16", "--out", tmp_path / "t")
    assert code == 0, err
    assert "teacher: test nll" in out
    code, out, err = run(capsys, "student", *base, "--teacher", tmp_path / "t" / "model", "--layers", "1",
                         "--heads", "1", "--embd", "8", "--divergence", "reverse_kl", "--accumulate", "2",
                         "--out", tmp_path / "s")
    assert code == 0, err
    assert "agreement" in out
    code, out, err = run(capsys, "evaluate", tmp_path / "s" / "model", "--data", data, "--json")
    assert code == 0, err
    assert '"test_perplexity"' in out
    code, out, err = run(capsys, "generate", tmp_path / "t" / "model", "--prompt", "the cat", "--max-new-tokens", "5",
                         "--temperature", "0")
    assert code == 0 and out.startswith("the cat"), err
    # another tokenizer than the teacher's; an empty file; lm flags without --task lm
    assert "another tokenizer" in one_line_error(capsys, "student", *base, "--tokenizer", "bpe:280", "--teacher",
                                                 tmp_path / "t" / "model", "--out", tmp_path / "bad")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "no text" in one_line_error(capsys, "teacher", "--task", "lm", "--data", tmp_path / "empty.txt",
                                       "--out", tmp_path / "e")
    assert "add --task lm" in one_line_error(capsys, "teacher", "--data", data, "--tokenizer", "bpe:300",
                                             "--out", tmp_path / "x")
    assert "--divergence needs --teacher" in one_line_error(capsys, "student", *base, "--divergence", "jsd", "--out",
                                                         tmp_path / "y")


def test_student_from_the_top_k_store(tmp_path):
    """A teacher's top-k store: built once, looked up by block; at k = V (renormalised over all of
    the vocabulary) it trains the student the on-the-fly teacher trains, up to float16 rounding."""
    data = _ragged(32, seed=1)
    teacher = distill.fit(_gpt(3), data, _cfg(epochs=2, optimizer="adamw", lr=1e-2), progress=False, log=quiet).model
    cfg = _cfg(objective=distill.TokenDistillation())  # SGD: weights move in proportion to the gradients
    dense = distill.fit(_gpt(4), data, cfg, teacher=teacher, progress=False, log=quiet).model
    stored = distill.Teacher(teacher, store=tmp_path / "store", top_k=V)
    top = distill.fit(_gpt(4), data, cfg, teacher=stored, progress=False, log=quiet).model
    assert any(p.name.startswith("tokens-") for p in (tmp_path / "store").iterdir())
    for a, b in zip(dense.state_dict().values(), top.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)
    small = distill.fit(_gpt(4), data, cfg, teacher=distill.Teacher(teacher, store=tmp_path / "store", top_k=4),
                        progress=False, log=quiet).model
    assert max(float((a - b).abs().max()) for a, b in zip(dense.state_dict().values(), small.state_dict().values())) > 1e-3


def test_a_language_models_epoch_records_its_fidelity_to_the_teacher_per_token():
    from distill.metrics import lm_evaluate

    data, val = _ragged(seed=1), _ragged(n=6, seed=2)
    teacher = distill.fit(_gpt(3), data, _cfg(), progress=False, log=quiet).model
    r = distill.fit(_gpt(4), data, _cfg(), teacher=teacher, val=val, progress=False, log=quiet)
    want = lm_evaluate(r.model, distill.as_source(val), teacher=distill.Teacher(teacher).forward)
    rec = r.history[-1]
    for k in ("agreement", "top5_agreement", "kl", "ece", "teacher_ece"):
        assert rec[f"val_{k}"] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
