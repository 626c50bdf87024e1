"""`distill export` of language models: inputs ``input_ids`` / ``attention_mask`` with dynamic batch
and length axes, output ``logits``, checked against PyTorch on right-padded token sequences of
several lengths (the recorded training text when at hand, else random token ids)."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import distill
import distill.data.text as text
import distill.tools.export as E
from distill.errors import DistillError
from distill.models.lm import GPT
from distill.tools.export import export_checkpoint, export_metadata, onnx_session

from conftest import one_line_error, run

onnx_missing = None
try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
except ImportError as e:
    onnx_missing = f"the export extra is not installed ({e}); pip install -e '.[test]' installs it"
needs_onnx = pytest.mark.skipif(onnx_missing is not None, reason=onnx_missing or "")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

V, BLOCK = 37, 16


def _sequences(vocab: int, n: int = 12, seed: int = 0) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [g.integers(1, vocab, 3 + i % 13).tolist() for i in range(n)]


def _fit(run_dir: Path, model, seqs, meta=None, **data_kw):
    torch.manual_seed(0)
    data = text.padded(seqs, pad_id=0, max_len=BLOCK, **data_kw)
    distill.fit(model, data, distill.TrainConfig(epochs=1, batch_size=4), run_dir=run_dir, progress=False,
                log=lambda *a, **k: None, meta=meta)
    return run_dir / "model"


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A GPT checkpoint written by distill.fit, with no tokenizer and no recorded text."""
    root = tmp_path_factory.mktemp("lm")
    return _fit(root / "run", GPT(V, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16), _sequences(V), vocab_size=V)


def _padded_batch(b: int, n: int, seed: int):
    """``b`` rows of ``n`` random token ids, right-padded: row 1 holds half, row 2 one token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    if b > 1:
        mask[1, max(1, n // 2):] = 0
    if b > 2:
        mask[2, 1:] = 0
    return ids, mask


@needs_onnx
def test_lm_onnx_export_has_dynamic_batch_and_length(gpt_run):
    notes = []
    out = gpt_run.parent / "gpt.onnx"
    res = export_checkpoint(gpt_run, out, "onnx", log=notes.append)
    assert res.method == "torch.onnx.export" and res.max_abs_diff <= 1e-4 and res.n_checked == 8
    assert res.inputs.startswith(f"8 sequences of random token ids in [0, {V}) of lengths 16, 1, 8, 5, 2, 15, 4, 12")
    assert notes == []  # no text recorded: the result says the check ran on random token ids
    sess = onnx_session(out)
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == [
        ("input_ids", "tensor(int64)", ["batch", "seq"]), ("attention_mask", "tensor(int64)", ["batch", "seq"])]
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("logits", ["batch", "seq", V])]
    model, side = distill.load_checkpoint(gpt_run)
    diffs = {}
    for b in (1, 3):
        for n in (1, 5, BLOCK):
            ids, mask = _padded_batch(b, n, seed=10 * b + n)
            got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
            with torch.no_grad():
                ref = model(ids, mask).numpy()
            assert got.shape == (b, n, V)
            real = mask.bool().numpy()
            diffs[b, n] = float(np.abs(got - ref)[real].max())
            assert diffs[b, n] < 1e-4, (b, n, diffs)
    print("max |ONNX Runtime - PyTorch| at the real tokens:", diffs)
    meta = export_metadata(out)
    assert meta["task"] == "lm" and meta["vocab_size"] == V and meta["block_size"] == BLOCK
    assert meta["tokenizer"] is None and meta["weights_sha256"] == side["weights_sha256"]
    assert meta["trained_block_size"] == side["block_size"] == 14  # the longest sequence fit was given
    assert meta["inputs"] == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"]}
    assert sorted(p.name for p in gpt_run.parent.iterdir()) == [".lock", "gpt.onnx", "metrics.csv", "model.json",
                                                                 "model.safetensors"]  # no scratch left


@needs_onnx
def test_lm_export_through_the_cli_checks_on_the_recorded_text(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"the {a} sat on the {b} mat." for a in ("cat", "dog", "fox") for b in ("red", "old"))
                      * 30)
    tok = text.train_bpe([corpus.read_text()], 300)
    ids = tok.encode(corpus.read_text())
    seqs = [ids[7 * i:7 * i + 3 + i % 13] for i in range(12)]
    stem = _fit(tmp_path / "run", GPT(tok.vocab_size, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16), seqs,
                vocab_size=tok.vocab_size, tokenizer_digest=tok.digest, meta=dict(dataset=str(corpus)))
    tok.save(stem.parent)  # as `distill teacher --task lm` leaves it
    code, out, err = run(capsys, "export", stem, "--format", "onnx", "--out", tmp_path / "lm.onnx")
    assert code == 0, err
    assert out.startswith(f"onnx: wrote {tmp_path / 'lm.onnx'} (") and "over 8 inputs (limit 0.0001)" in out
    assert f"token windows of lengths 16, 1, 8, 5, 2, 15, 4, 12 from {corpus}, tokenized by " \
           f"{stem.parent / 'tokenizer.json'}" in out
    diff = float(out.split("max |ONNX Runtime - PyTorch| = ")[1].split()[0])
    assert diff <= 1e-4
    meta = export_metadata(tmp_path / "lm.onnx")
    assert meta["tokenizer"] == tok.digest and meta["vocab_size"] == tok.vocab_size and meta["task"] == "lm"

    # TorchScript: traced on a padded batch, checked at every length
    code, out, err = run(capsys, "export", stem, "--format", "torchscript")
    assert code == 0 and out.startswith(f"torchscript: wrote {stem.with_suffix('.pt')}"), err
    assert "torch.jit.trace" in out and "traced, not scripted" in out
    loaded = torch.jit.load(str(stem.with_suffix(".pt")))
    model, _ = distill.load_checkpoint(stem)
    for b, n in ((1, 5), (3, BLOCK)):
        x, mask = _padded_batch(b, n, seed=n)
        with torch.no_grad():
            real = mask.bool()
            assert (loaded(x, mask)[real] - model(x, mask)[real]).abs().max() < 1e-4
    assert export_metadata(stem.with_suffix(".pt"))["tokenizer"] == tok.digest

    # bad input: one line, exit 2, nothing written
    files = {p: p.read_bytes() for p in stem.parent.iterdir() if p.is_file()}
    err = one_line_error(capsys, "export", stem, "--format", "onnx", "--input-shape", "5")
    assert "--input-shape is for classifiers" in err and "length up to 16" in err
    for target, what in ((stem.parent / "tokenizer.json", "the checkpoint's tokenizer"),
                         (corpus, "the checkpoint's training text")):
        err = one_line_error(capsys, "export", stem, "--format", "torchscript", "--out", target)
        assert f"--out {target} is {what}" in err, err
    assert "is a folder" in one_line_error(capsys, "export", stem, "--format", "torchscript", "--out", tmp_path)
    assert {p: p.read_bytes() for p in stem.parent.iterdir() if p.is_file()} == files and corpus.is_file()

    # a tokenizer.json that is not the checkpoint's: random token ids, and the log says why
    text.train_bpe(["another text altogether, another tokenizer"], 270).save(stem.parent)
    notes = []
    res = export_checkpoint(stem, tmp_path / "other.pt", "torchscript", log=notes.append)
    assert res.inputs.startswith("8 sequences of random token ids")
    assert notes == [f"[export] checking on random token ids: {stem.parent / 'tokenizer.json'} is not the tokenizer "
                     f"{stem} was trained with"]


class FixedLengthLM(nn.Module):
    """Turns the length into a number: a trace holds at the example's length only, and
    torch.export cannot make the length dynamic."""

    def __init__(self, vocab_size: int = 11, block_size: int = 8):
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.emb = nn.Embedding(vocab_size, 4)
        self.head = nn.Linear(4, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        ramp = torch.linspace(0, 1, int(input_ids.shape[1])).unsqueeze(-1)
        return self.head(self.emb(input_ids) + ramp)


def test_an_lm_that_does_not_trace_is_one_line(tmp_path, capsys):
    distill.save_checkpoint(tmp_path / "m", FixedLengthLM(), dict(task="lm", vocab_size=11, block_size=8),
                            factory=("test_export_lm:FixedLengthLM", {}))
    err = one_line_error(capsys, "export", tmp_path / "m", "--format", "torchscript", "--trust-factory")
    assert "the traced TorchScript module of FixedLengthLM fails on 7 sequence(s) of length 8" in err
    assert "ONNX is the format for language models: --format onnx" in err and "m.pt was not written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    if onnx_missing is None:
        err = one_line_error(capsys, "export", tmp_path / "m", "--format", "onnx", "--trust-factory")
        assert err.startswith("distill: error: the ONNX export of FixedLengthLM fixed the length of input_ids to 4")
        assert "Python number (int(), .item())" in err and "m.onnx was not written" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_a_failed_or_interrupted_lm_export_writes_nothing(gpt_run, tmp_path, monkeypatch):
    class Off:
        def __init__(self, m):
            self.m = m

        def eval(self):
            return self

        def __call__(self, ids, mask):
            return self.m(ids, mask) + 1e-3

    out = tmp_path / "lm.pt"
    out.write_bytes(b"old")
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:60]
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    killed = tmp_path / f".distill-export.{host}.{proc.pid}.k1ll3d"  # what a killed export leaves
    killed.mkdir()
    real = torch.jit.load
    with monkeypatch.context() as m:
        m.setattr(torch.jit, "load", lambda *a, **k: Off(real(*a, **k)))
        with pytest.raises(DistillError, match=r"differs from PyTorch by up to 0.001 on 8 token sequences .*lm.pt "
                                               r"was not written; it was traced.*ONNX is the format"):
            export_checkpoint(gpt_run, out, "torchscript", log=lambda *a: None)
    assert not killed.exists()  # swept
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["lm.pt"]

    def interrupted(step):
        if step.startswith("export written"):
            raise KeyboardInterrupt

    monkeypatch.setattr(E, "fault_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(gpt_run, out, "torchscript", log=lambda *a: None)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["lm.pt"]


@needs_onnx
def test_a_hugging_face_gpt2_exports(tmp_path):
    pytest.importorskip("transformers")
    from distill.models import causal_lm

    model = causal_lm(dict(model_type="gpt2", vocab_size=V, n_positions=BLOCK, n_embd=16, n_layer=1, n_head=2,
                           bos_token_id=0, eos_token_id=0))
    stem = tmp_path / "run" / "model"  # saved as fit saves it (factory distill.models:causal_lm), untrained
    distill.save_checkpoint(stem, model, dict(task="lm", vocab_size=V, block_size=BLOCK))
    res = export_checkpoint(stem, tmp_path / "hf.onnx", "onnx", log=lambda *a: None)
    assert res.max_abs_diff <= 1e-4 and res.n_checked == 8
    sess = onnx_session(tmp_path / "hf.onnx")
    model, _ = distill.load_checkpoint(stem)
    ids, mask = _padded_batch(3, 5, seed=1)
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.abs(got - ref)[mask.bool().numpy()].max() < 1e-4
    meta = export_metadata(tmp_path / "hf.onnx")
    assert meta["block_size"] == BLOCK and meta["factory"]["target"] == "distill.models:causal_lm"
