"""Mixed precision: ``TrainConfig(precision="bf16")`` runs the forward passes under
bfloat16 autocast with float32 master weights and a float32 loss."""
import pytest
import torch

from distill.cli import build_parser
from distill.losses import Distillation
from distill.models.classifiers import MLP
from distill.train.config import TrainConfig, seed_everything
from distill.train.fit import fit
from conftest import quiet




def _model(seed=0, hidden=32):
    seed_everything(seed)
    return MLP(64, [hidden], 10)


def test_precision_is_validated():
    assert TrainConfig().precision == "fp32"
    assert TrainConfig(precision="bf16").to_dict()["precision"] == "bf16"
    for bad in ("fp16", "BF16", None, 16):
        with pytest.raises(ValueError, match="precision must be one of"):
            TrainConfig(precision=bad)


def test_bf16_trains_close_to_fp32_with_float32_weights_and_loss(toy):
    seen = []

    class Recording(Distillation):  # the objective must receive float32 logits
        def __call__(self, out, teacher_out, labels, **kw):
            seen.append((out.dtype, teacher_out.dtype))
            return super().__call__(out, teacher_out, labels, **kw)

    teacher = fit(_model(7, 64), toy, TrainConfig(epochs=3, lr=0.3), progress=False, log=quiet).model
    results = {}
    for prec in ("fp32", "bf16"):
        seen.clear()
        cfg = TrainConfig(epochs=3, lr=0.3, jitter=1, precision=prec,  # jitter: the teacher runs per batch
                          objective=Recording(temperature=2.0, hard_weight=0.3))
        res = fit(_model(), toy, cfg, teacher=teacher, progress=False, log=quiet)
        assert {d for pair in seen for d in pair} == {torch.float32}
        assert all(p.dtype == torch.float32 for p in res.model.parameters())
        results[prec] = res
    e32, e16 = results["fp32"].test["errors"], results["bf16"].test["errors"]
    assert e32 < 30 and abs(e16 - e32) <= 6, (e32, e16)  # 200 test images, chance ~180
    w32 = torch.cat([p.flatten() for p in results["fp32"].model.parameters()])
    w16 = torch.cat([p.flatten() for p in results["bf16"].model.parameters()])
    assert not torch.equal(w32, w16)  # bf16 really ran: rounding makes the weights differ
    assert (w32 - w16).norm() / w32.norm() < 0.1  # ... but only a little


def test_precision_keys_the_run_folder(toy, tmp_path):
    folders = {prec: fit(_model(), toy, TrainConfig(epochs=1, precision=prec), run_dir=tmp_path / "{key}",
                         progress=False, log=quiet).run_dir for prec in ("fp32", "bf16")}
    assert folders["fp32"] != folders["bf16"]
    again = fit(_model(), toy, TrainConfig(epochs=1, precision="bf16"), run_dir=tmp_path / "{key}",
                progress=False, log=quiet)
    assert again.skipped and again.run_dir == folders["bf16"]


def test_cli_precision_flag():
    ap = build_parser()
    for cmd in ("teacher", "student"):
        assert ap.parse_args([cmd, "--out", "o"]).precision == "fp32"
        assert ap.parse_args([cmd, "--out", "o", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        ap.parse_args(["student", "--out", "o", "--precision", "fp16"])
