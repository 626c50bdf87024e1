"""Language models under torchrun (gloo, 2 processes on the CPU): a GPT trained on sequences of
different lengths, so that the two processes hold different numbers of valid tokens, ends with
the weights of the single-process run, with DDP (``accumulate`` 1 and 2) and with FSDP2
(``parallel="fsdp"``: sharded training, the full state saved by process 0, a resume from it).

One spawn of 2 processes runs every scenario in turn (module fixture ``ranks``), to keep the
start-up cost of the processes to one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import distill
from conftest import leave_group_and_exit
from distill import distributed
from distill.data.prompts import prompt_pairs
from distill.data.text import padded
from distill.train.onpolicy import OnPolicy
from distill.models import GPT

V = 40
FORWARDS_PER_EPOCH = 6  # batches of 8, 8, 3 (19 sequences), 2 micro-batches each (accumulate=2)


def _ragged(n=19, seed=0, lo=2, hi=12):
    """``n`` right-padded sequences of 2..12 tokens: every process's slice counts other tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return padded([torch.randint(1, V, (k,), generator=g) for k in lengths], pad_id=0, max_len=hi, vocab_size=V)


def _cfg(**kw):
    """SGD with momentum, under which equal gradients give equal weights. AdamW divides each step
    by the root of the second moment: the attention's key biases have gradient 0 up to rounding (a
    constant added to all of a query's scores leaves its softmax unchanged), so AdamW moves them by
    lr-sized steps of rounding noise, which ``_close(..., adam=True)`` leaves out."""
    base = dict(epochs=2, batch_size=8, optimizer="sgd", lr=0.3, momentum=0.9, schedule="constant", divergence=None)
    return distill.TrainConfig(**dict(base, **kw))


def _adam(**kw):
    return _cfg(optimizer="adamw", lr=1e-2, **kw)


class Interrupt(Exception):
    pass


def _hooks(tokens: list, bomb_at: int | None):
    """A forward pre-hook that notes the valid tokens of every training forward (``tokens``, with
    the class of the module run first) and raises :class:`Interrupt` at the ``bomb_at``-th."""
    calls = {"n": 0}

    def hook(module, args, kwargs):
        if module.training:
            calls["n"] += 1
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            if not tokens:
                tokens.append(type(module).__name__)
            tokens.append(int(mask.sum()) if mask is not None else -1)
            if bomb_at is not None and calls["n"] == bomb_at:
                raise Interrupt
    return hook


def _prompted(n=19, seed=0):
    """``n`` prompts of 1..5 tokens with completions of 2..6 (EOS = 0 ends none of them)."""
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randint(1, V, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g),
              torch.randint(1, V, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)) for _ in range(n)]
    return prompt_pairs(pairs, eos_id=0, pad_id=0, vocab_size=V)


def _train(cfg, run_dir=None, bomb_at=None, tokens=None):
    torch.manual_seed(0)
    model = GPT(V, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model.register_forward_pre_hook(_hooks(tokens if tokens is not None else [], bomb_at), with_kwargs=True)
    held = dict(val=_ragged(6, seed=1), test=_ragged(5, seed=2)) if cfg.select == "best" else {}
    if cfg.on_policy is not None:  # the student's own completions, scored by a fixed teacher
        torch.manual_seed(1)
        teacher = GPT(V, block_size=16, n_layer=1, n_head=2, n_embd=16)
        return distill.fit(model, _prompted(), cfg, teacher=teacher, progress=False, log=lambda *a: None)
    return distill.fit(model, _ragged(), cfg, run_dir=run_dir, progress=False, log=lambda *a: None, **held)


def _on_policy():
    """Greedy on-policy steps: each process's completions depend on the weights and its prompts only,
    so the run must end where the single-process run does once the step's tokens are all-summed."""
    return _cfg(objective=distill.TokenDistillation(), on_policy=OnPolicy(lam=1.0, max_new_tokens=4, temperature=0.0))


def _scenarios(out: Path):
    """``(name, config, run folder, interrupted at)`` run in turn by every process."""
    fsdp = _adam(parallel="fsdp", accumulate=2, select="best", epochs=3)
    return [("ddp1", _cfg(), None, None),
            ("ddp2", _cfg(accumulate=2), None, None),
            ("fsdp-sgd", _cfg(parallel="fsdp", accumulate=2), None, None),
            ("fsdp", fsdp, out / "fsdp", None),
            ("cut", fsdp, out / "cut", FORWARDS_PER_EPOCH + 1),  # the first forward of epoch 2
            ("resumed", fsdp, out / "cut", None),
            ("onpolicy", _on_policy(), None, None)]


def _worker(rank, world_size, rdv, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world_size)
    out = Path(out)
    try:
        for name, cfg, run_dir, bomb_at in _scenarios(out):
            tokens: list = []
            # process 1 is told another folder (as on another machine): it must write nothing
            where = run_dir if rank == 0 or run_dir is None else out / f"elsewhere-{name}"
            try:
                res = _train(cfg, where, bomb_at, tokens)
            except Interrupt:  # every process stops at the same forward
                Path(out / f"{name}.rank{rank}.json").write_text(json.dumps(dict(stopped=True)))
                if rank == 0:  # the state saved after epoch 1 (the resume below replaces it)
                    for suffix in (".safetensors", ".json"):
                        shutil.copy(run_dir / f"state{suffix}", out / f"{name}-state{suffix}")
                continue
            save_file({k: v.contiguous() for k, v in res.model.state_dict().items()},
                      str(out / f"{name}.rank{rank}.safetensors"))
            Path(out / f"{name}.rank{rank}.json").write_text(json.dumps(dict(
                tokens=tokens, history=res.history, val=res.val, test=res.test, resumed_from=res.resumed_from,
                epoch=res.epoch, params=[type(q).__name__ for q in res.model.parameters()])))
        leave_group_and_exit()
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm-ddp")
    mp.spawn(_worker, args=(2, str(out / "rdv"), str(out)), nprocs=2, join=True)

    def read(name):
        got = []
        for r in range(2):
            rec = json.loads((out / f"{name}.rank{r}.json").read_text())
            if not rec.get("stopped"):
                rec["weights"] = load_file(str(out / f"{name}.rank{r}.safetensors"))
            got.append(rec)
        return got
    return out, {name: read(name) for name, *_ in _scenarios(out)}


def _close(a: dict, b: dict, rtol: float, adam: bool = False) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if adam and k.endswith("attn.c_attn.bias"):  # q, k, v biases: leave out k's (see _cfg)
            x, y = torch.cat([x[:16], x[32:]]), torch.cat([y[:16], y[32:]])
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol / 10, msg=k)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ddp_lm_matches_one_process(ranks, accumulate):
    _, got = ranks
    single = _train(_cfg(accumulate=accumulate)).model.state_dict()
    both = got[f"ddp{accumulate}"]
    for r in both:
        assert r["tokens"][0] == "GPT"  # DDP runs the module itself
        _close(r["weights"], single, 1e-5)
    # the processes held different numbers of valid tokens: the step's count is all-summed
    assert sum(both[0]["tokens"][1:]) != sum(both[1]["tokens"][1:])
    assert len(both[0]["history"]) == 2 and both[1]["history"] == []  # process 0 evaluates


def test_ddp_on_policy_samples_per_process_and_matches_one_process(ranks):
    _, got = ranks
    single = _train(_on_policy())
    both = got["onpolicy"]
    for r in both:
        _close(r["weights"], single.model.state_dict(), 1e-5)
    # every step rolled out (λ = 1) on both processes; the processes held different token counts
    assert [h["on_policy_steps"] for h in both[0]["history"]] == [h["on_policy_steps"] for h in single.history] == [3, 3]
    assert sum(both[0]["tokens"][1:]) != sum(both[1]["tokens"][1:])


def test_fsdp_lm_matches_one_process(ranks):
    _, got = ranks
    single = _train(_cfg(parallel="fsdp", accumulate=2)).model.state_dict()
    # one process with parallel="fsdp" trains as with "ddp" (nothing is sharded)
    torch.testing.assert_close(single, _train(_cfg(accumulate=2)).model.state_dict(), rtol=0, atol=0)
    both = got["fsdp-sgd"]
    for r in both:  # every process gets the passed model back, whole, with the trained weights
        assert r["tokens"][0] == "FSDPGPT"  # it trained a sharded copy
        assert set(r["params"]) == {"Parameter"}
        _close(r["weights"], single, 1e-4)
    # the last batch of 3 is cut 1 | 2: the process with 1 runs an empty second micro-batch, as FSDP2
    # needs the same forwards (weight gathers) on every process
    assert len(both[0]["tokens"]) == len(both[1]["tokens"]) == 1 + 2 * FORWARDS_PER_EPOCH
    assert len(got["ddp2"][0]["tokens"]) != len(got["ddp2"][1]["tokens"])  # DDP needs no such thing


def test_fsdp_lm_evaluates_and_saves_full_weights(ranks, tmp_path):
    out, got = ranks
    single = _train(_adam(parallel="fsdp", accumulate=2, select="best", epochs=3), tmp_path / "single")
    fsdp = got["fsdp"]
    assert single.epoch == 2  # select="best" keeps epoch 2 of 3: not the last weights
    for r in fsdp:
        assert r["epoch"] == 2
        _close(r["weights"], single.model.state_dict(), 1e-4, adam=True)
        assert r["val"]["nll"] == pytest.approx(single.val["nll"], rel=1e-3)
    # evaluation every epoch under FSDP2 (every process runs the forward; process 0 records)
    hist = fsdp[0]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and fsdp[1]["history"] == []
    for h, s in zip(hist, single.history):
        assert h["val_nll"] == pytest.approx(s["val_nll"], rel=1e-3)
        assert h["test_nll"] == pytest.approx(s["test_nll"], rel=1e-3)
    # process 0 wrote the whole model (plain tensors), the one the single process writes
    saved, _ = distill.load_checkpoint(out / "fsdp" / "model")
    _close(saved.state_dict(), single.model.state_dict(), 1e-4, adam=True)
    _close(saved.state_dict(), fsdp[0]["weights"], 0.0)
    assert not (out / "elsewhere-fsdp").exists()


def test_fsdp_state_is_the_full_state_and_resumes(ranks, tmp_path):
    out, got = ranks
    cfg = _adam(parallel="fsdp", accumulate=2, select="best", epochs=3)
    assert all(r.get("stopped") for r in got["cut"])
    # the state process 0 saved after epoch 1 under FSDP2 = the single process's: whole weights and
    # whole optimiser state (AdamW's moments, per parameter index), so either resumes the other
    with pytest.raises(Interrupt):
        _train(cfg, tmp_path / "single-cut", bomb_at=FORWARDS_PER_EPOCH + 1)
    mine = load_file(str(tmp_path / "single-cut" / "state.safetensors"))
    theirs = load_file(str(out / "cut-state.safetensors"))
    assert json.loads((tmp_path / "single-cut" / "state.json").read_text())["epoch"] == 1
    assert json.loads((out / "cut-state.json").read_text())["epoch"] == 1
    kept = [k for k in mine if k.startswith(("model.", "optim."))]
    assert any(k.endswith(".exp_avg") for k in kept) and any(k.endswith(".step") for k in kept)
    assert sorted(k for k in theirs if k.startswith(("model.", "optim."))) == sorted(kept)
    _close({k: theirs[k] for k in kept}, {k: mine[k] for k in kept}, 1e-4, adam=True)
    # ... and the 2-process run resumed from it ends where the uninterrupted one does
    resumed = got["resumed"]
    single = _train(cfg).model.state_dict()
    for r in resumed:
        assert r["resumed_from"] == 1
        _close(r["weights"], single, 1e-4, adam=True)
        _close(r["weights"], got["fsdp"][0]["weights"], 1e-5)  # = the uninterrupted 2-process run
    assert [h["epoch"] for h in resumed[0]["history"]] == [1, 2, 3] and resumed[0]["epoch"] == 2
