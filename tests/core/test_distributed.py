"""Data-parallel training (torch.distributed, gloo): the batch slicing arithmetic, and a
2-process DDP run of ``fit`` that must end with the weights of the single-process run."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from conftest import leave_group_and_exit
from distill import distributed
from distill.data import Dataset
from distill.models.classifiers import MLP
from distill.train.config import TrainConfig, seed_everything
from distill.train.fit import fit
def test_shards_partition_the_batch_in_order():
    for b in (0, 1, 3, 10, 128, 129):
        for w in (1, 2, 3, 8):
            idx = torch.randperm(1000)[:b]
            parts = [distributed.shard(idx, r, w) for r in range(w)]
            assert torch.equal(torch.cat(parts), idx)
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_shard_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        distributed.shard(torch.arange(4), 2, 2)


def test_shard_weights_make_the_ddp_average_the_global_mean():
    torch.manual_seed(0)
    losses = torch.rand(13)  # per-example losses of a global batch of 13
    for w in (2, 3, 5):
        parts = [distributed.shard(losses, r, w) for r in range(w)]
        ddp_avg = sum(distributed.shard_weight(len(p), 13, w) * (p.mean() if len(p) else 0.0)
                      for p in parts) / w
        assert float(ddp_avg) == pytest.approx(float(losses.mean()), rel=1e-6)


def test_epoch_seeds_differ_by_rank_and_epoch():
    seeds = {distributed.epoch_seed(0, r, e) for r in range(4) for e in range(50)}
    assert len(seeds) == 200


def test_not_distributed_by_default():
    assert distributed.world() == (0, 1)
    assert distributed.all_sum(torch.tensor(3.0)).item() == 3.0


def _toy(n=41, d=12, c=3):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, d, generator=g), torch.randint(0, c, (n,), generator=g)
    return Dataset("toy", x, y, x[:20], y[:20], tuple("abc"), "toy-fingerprint")


def _train(run_dir, progress=False, hook=None, dropout=0.0):
    data = _toy()
    # teacher logits from a linear rule of the inputs, peaked enough at T = 4 that the student
    # leaves the constant-prediction loss within 3 epochs (fit's divergence check would stop it)
    rule = torch.randn(12, 3, generator=torch.Generator().manual_seed(3))
    targets = (data.x_train - 0.5) @ rule * 30
    seed_everything(0)
    model = MLP(12, [16, 16], 3, dropout_hidden=dropout, max_norm=1.0)
    if hook is not None:
        model.register_forward_pre_hook(hook)
    # batch 10 over 41 rows: the last global batch has one row, so one process gets none
    cfg = TrainConfig(epochs=3, batch_size=10, lr=0.1, temperature=4.0, hard_weight=0.3)
    return fit(model, data, cfg, teacher=targets, run_dir=run_dir, progress=progress, log=lambda *a: None)


class Interrupt(Exception):
    pass


def _bomb(at: int):
    """A forward pre-hook that raises :class:`Interrupt` at the ``at``-th training forward pass."""
    calls = {"n": 0}

    def bomb(module, inputs):
        if module.training:
            calls["n"] += 1
            if calls["n"] == at:
                raise Interrupt

    return bomb


def _worker(rank, world_size, rdv, out, other, dropout=0.0, bomb_at=None):
    """One DDP process; process 1 gets ``other`` as its run folder (as on another machine).
    With ``bomb_at`` every process is interrupted at that training step (before its all-reduce)."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world_size)
    try:
        hook = _bomb(bomb_at) if bomb_at else None
        try:
            res = _train(out if rank == 0 else other, hook=hook, dropout=dropout)
        except Interrupt:
            # a job stopped mid-epoch: note that this process got here, leave the group, and end
            # the process without interpreter teardown, as a killed job does (CI once saw a child
            # abort, "terminate called without an active exception", after such a stop; 70 runs of
            # the stop alone did not reproduce it)
            Path(f"{out}.rank{rank}.stopped").touch()
            distributed.shutdown()
            os._exit(0)
        # safetensors + JSON, no pickle (the project loads nothing through pickle, tests included)
        save_file(res.model.state_dict(), f"{out}.rank{rank}.safetensors")
        Path(f"{out}.rank{rank}.json").write_text(json.dumps(dict(test=res.test, history=len(res.history),
                                                                  skipped=res.skipped, resumed_from=res.resumed_from)))
        leave_group_and_exit()
    finally:
        distributed.shutdown()


def _spawn(tmp_path, out, tag, dropout=0.0, bomb_at=None):
    mp.spawn(_worker, args=(2, str(tmp_path / f"rdv-{tag}"), str(out), str(tmp_path / f"elsewhere-{tag}"), dropout,
                            bomb_at), nprocs=2, join=True)
    if bomb_at:
        assert all(Path(f"{out}.rank{r}.stopped").exists() for r in range(2))  # both were interrupted
        return None
    return [dict(json.loads(Path(f"{out}.rank{r}.json").read_text()), weights=load_file(f"{out}.rank{r}.safetensors"))
            for r in range(2)]


def test_ddp_fit_matches_single_process(tmp_path):
    single = _train(tmp_path / "single")
    ranks = _spawn(tmp_path, tmp_path / "ddp", "a")
    for k, v in single.model.state_dict().items():
        for r in ranks:  # both processes end with the single-process weights
            assert torch.allclose(r["weights"][k], v, atol=1e-5), k
    assert ranks[0]["test"] == ranks[1]["test"]
    assert ranks[0]["test"]["errors"] == single.test["errors"]
    assert ranks[0]["history"] == 3 and ranks[1]["history"] == 0  # process 0 evaluates each epoch
    side = json.loads((tmp_path / "ddp" / "model.json").read_text())  # written once, by process 0
    assert side["test"]["errors"] == single.test["errors"]
    assert not (tmp_path / "ddp" / "state.json").exists()
    assert not (tmp_path / "elsewhere-a").exists()  # process 1 writes nothing


def test_ddp_resumes_from_process_0s_checkpoint_then_skips(tmp_path):
    reference = _train(None)
    with pytest.raises(Interrupt):
        _train(tmp_path / "b", hook=_bomb(5 * 2 + 2))  # in epoch 3 (5 batches per epoch)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["epoch"] == 2
    # process 1 looks at an empty folder ("another machine"): it must take process 0's state
    ranks = _spawn(tmp_path, tmp_path / "b", "b")
    for r in ranks:
        assert r["resumed_from"] == 2 and not r["skipped"]
        for k, v in reference.model.state_dict().items():
            assert torch.allclose(r["weights"][k], v, atol=1e-5), k
    again = _spawn(tmp_path, tmp_path / "b", "c")
    assert all(r["skipped"] for r in again)
    for k, v in ranks[0]["weights"].items():
        assert torch.equal(again[1]["weights"][k], v)


def test_ddp_resume_with_dropout_ends_where_the_uninterrupted_ddp_run_does(tmp_path):
    """Dropout draws per process and per epoch (distributed.epoch_seed): a DDP run interrupted in
    epoch 3 and resumed under DDP ends with the uninterrupted DDP run's weights."""
    whole = _spawn(tmp_path, tmp_path / "whole", "w", dropout=0.3)
    plain = _train(None).model.state_dict()  # = the DDP run without dropout (test above)
    assert any(not torch.allclose(whole[0]["weights"][k], v, atol=1e-3) for k, v in plain.items())  # dropout acts
    _spawn(tmp_path, tmp_path / "cut", "x", dropout=0.3, bomb_at=5 * 2 + 2)  # both processes stop in epoch 3
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["epoch"] == 2
    assert not (tmp_path / "cut" / "model.json").exists()
    resumed = _spawn(tmp_path, tmp_path / "cut", "y", dropout=0.3)
    for r in resumed:
        assert r["resumed_from"] == 2 and not r["skipped"]
        for k, v in whole[0]["weights"].items():
            assert torch.equal(r["weights"][k], v), k
    assert resumed[0]["test"] == whole[0]["test"]


def _torchrun() -> list[str]:
    """torchrun on a free port, picked now (a fixed port collides with other runs on the machine)."""
    exe = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [exe, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_cli_refuses_reproduce_under_torchrun(tmp_path):
    r = subprocess.run([*_torchrun(), "-m", "distill",
                        "reproduce", "mnist", "--preset", "tiny", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode != 0
    assert "only the `teacher` and `student` commands" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_cli_student_trains_under_torchrun(tmp_path, mnist):
    r = subprocess.run([*_torchrun(), "-m", "distill",
                        "student", "--train-size", "300", "--test-size", "100", "--epochs", "2", "--hidden", "32",
                        "--no-progress", "--out", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("student-hard:") == 1  # one report, from process 0
    side = json.loads((tmp_path / "s" / "model.json").read_text())
    assert side["test"]["n"] == 100 and len(side["history"]) == 2
    assert side["config"]["lr"] == 0.1  # hard labels


def test_a_surviving_rank_says_its_peer_stopped_in_one_line(monkeypatch, capsys):
    # what a collective raises on the rank that survives when its peer is killed mid-run
    from distill import cli
    def peer_gone(args):
        raise torch.distributed.DistBackendError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    monkeypatch.setitem(cli.COMMANDS, "student", peer_gone)
    monkeypatch.setattr(distributed, "init_from_env", lambda device=None: False)
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    assert cli.main(["student", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "another process of this torchrun job failed or was killed" in err and "rerun the same command" in err


def test_fsdp_on_the_cpu_refuses_a_torch_older_than_its_floor(monkeypatch):
    model = MLP(4, [8], 3)
    monkeypatch.setattr(distributed.torch, "__version__", "2.7.1+cpu")
    with pytest.raises(ValueError, match=r"needs torch >= 2\.9.*this is torch 2\.7\.1\+cpu.*parallel='ddp'"):
        distributed.fsdp_twin(model)
    assert all(q.numel() for q in model.parameters())  # nothing was sharded or emptied
