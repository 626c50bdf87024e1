"""Rotation and scaling in the augmentation pipeline: against closed forms, the draw order, run keys."""
import pytest
import torch

from distill.data.augment import Augment, affine
from distill.train.config import TrainConfig


def test_a_quarter_turn_is_rot90_and_no_turn_is_the_identity():
    x = torch.rand(3, 2, 6, 6)
    left = affine(x, (6, 6), torch.full((3,), 90.0), torch.ones(3))
    right = affine(x, (6, 6), torch.full((3,), -90.0), torch.ones(3))
    torch.testing.assert_close(left, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(right, torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(affine(x, (6, 6), torch.zeros(3), torch.ones(3)), x, atol=1e-6, rtol=0)
    flat = x[:, :1].reshape(3, 36)  # flat images keep their shape
    assert affine(flat, (6, 6), torch.full((3,), 90.0), torch.ones(3)).shape == (3, 36)


def test_scaling_a_linear_ramp_divides_its_slope():
    # bilinear sampling is exact on a linear function: scaled by s about the centre, the ramp
    # x (the column's centred coordinate) reads x / s at every output pixel
    w = 8
    xc = (2 * torch.arange(w, dtype=torch.float32) + 1) / w - 1
    img = xc.expand(5, w).reshape(1, 5, w)
    out = affine(img, (5, w), torch.zeros(1), torch.full((1,), 2.0))
    torch.testing.assert_close(out, (xc / 2).expand(5, w).reshape(1, 5, w), atol=1e-6, rtol=0)


def test_angles_and_scales_are_drawn_in_range_after_every_other_parameter():
    aug = Augment(shift=2, rotate=15, scale=0.1)
    p = aug.draw(4000, torch.Generator().manual_seed(0))
    assert p["angle"].abs().max() <= 15 and p["angle"].abs().max() > 14
    assert ((p["scale"] >= 0.9) & (p["scale"] <= 1.1)).all() and p["scale"].std() > 0.05
    shift_only = Augment(shift=2).draw(4000, torch.Generator().manual_seed(0))
    assert torch.equal(p["shift"], shift_only["shift"])  # the shifts of earlier runs are unchanged
    table = Augment(rotate=5, views=3).table(7)
    assert table["angle"].shape == (7, 3) and table["angle"].abs().max() <= 5


def test_rotate_and_scale_enter_run_keys_only_when_set():
    assert "rotate" not in TrainConfig(augment=Augment(shift=2)).to_dict()["augment"]
    d = TrainConfig(augment=Augment(shift=2, rotate=10)).to_dict()["augment"]
    assert d["rotate"] == 10 and "scale" not in d


@pytest.mark.parametrize("kw", [dict(rotate=-1), dict(rotate=200), dict(scale=-0.1), dict(scale=0.95)])
def test_bad_rotation_or_scale_is_refused(kw):
    with pytest.raises(ValueError, match="augment (rotate|scale)"):
        Augment(**kw)


def test_apply_rotates_images_of_a_flat_dataset_and_needs_their_shape():
    aug = Augment(rotate=90)
    x = torch.rand(2, 16)
    p = dict(angle=torch.tensor([90.0, 0.0]), scale=torch.ones(2))
    out = aug.apply(x, (4, 4), p)
    torch.testing.assert_close(out[0].reshape(4, 4), torch.rot90(x[0].reshape(4, 4)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="rotate"):
        aug.apply(x, None, p)
