"""``distill bench``: the quick mode runs every in-process section in seconds and
writes its figures as JSON; the helpers it measures with are right."""
import json

import pytest

from distill.tools import bench as bench
from distill.cli import main


def test_quick_bench_writes_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--skip", "ddp", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("machine: ") and "torch" in text and "threads" in text
    for figure in ("matrix product fp32 / bf16", "fit / bare loop, tensors", "fit / bare loop, loader",
                   "student epoch: store vs teacher on the fly", "epoch bf16 vs fp32", "fp32 student", "bf16 student"):
        assert f"| {figure}" in text, figure
    res = json.loads(out.read_text())
    assert {"machine", "settings", "peak", "overhead", "store", "precision"} <= set(res) and "ddp" not in res
    m = res["machine"]
    assert m["cores"] >= 1 and m["torch_threads"] >= 1 and "env" in m and "cpu" in m
    pr = res["precision"]
    for prec in ("fp32", "bf16"):
        assert pr[prec]["examples_per_s"] > 0 and 0 < pr[prec]["peak_fraction"]
        assert len(pr[prec]["test_errors"]) == 1
    assert res["overhead"]["ratio tensors"] > 0 and res["store"]["speedup"] > 0


def test_bench_rejects_unknown_sections():
    with pytest.raises(ValueError, match="unknown bench section"):
        bench.run(quick=True, skip=["gpu"], log=lambda *a: None)


def test_flops_and_busy_warning():
    assert bench.mlp_flops_per_example(784, [800, 800], 10) == 6 * (784 * 800 + 800 * 800 + 800 * 10)
    assert bench.busy_warning(dict(busy_cpus=0.1, cores=2, load_average=[0.1])) is None
    assert "under load" in bench.busy_warning(dict(busy_cpus=1.5, cores=2, load_average=[2.0]))
    assert 0 <= bench.busy_cpus(0.05) <= 64
