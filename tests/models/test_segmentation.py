"""Dense prediction: pixel-wise and channel-wise distillation losses, the MNIST
segmentation set, the DeepLab-v3-style teacher and MobileNet-style student, dense metrics, fit
on label masks, the CLI and the experiment on tiny settings."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import distill
from distill import losses as L
from distill.data.segmentation import (
    IGNORE_INDEX,
    SegmentationDataset,
    check_masks,
    load_segmentation_npz,
    make_canvases,
    mnist_segmentation,
)
from distill.errors import DistillError
from distill.metrics import confusion_matrix, evaluate, iou_from_confusion, segmentation_metrics
from distill.models.classifiers import count_params
from distill.models.segmentation import DeepLabV3, MobileNetSeg


def dense_batch(b=3, c=5, h=4, w=6, seed=0, ignore_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    v = 2 * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (b, h, w), generator=g)
    y[torch.rand(b, h, w, generator=g) < ignore_frac] = IGNORE_INDEX
    return z, v, y


def rows(t):
    return t.movedim(1, -1).reshape(-1, t.shape[1])


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("T, hw, sw", [(1.0, 0.1, 1.0), (4.0, 0.5, 1.0), (20.0, 0.0, 2.0)])
def test_pixelwise_equals_classification_loss_on_flattened_pixels(T, hw, sw):
    z, v, y = dense_batch(ignore_frac=0.0)
    dense = L.pixelwise_distillation_loss(z, v, y, T, hw, sw)
    flat = L.distillation_loss(rows(z), rows(v), y.reshape(-1), T, hw, sw)
    assert torch.allclose(dense, flat, rtol=1e-12, atol=1e-12)
    # with ignored pixels: the classification loss on the labelled pixels only
    z, v, y = dense_batch(seed=1)
    keep = y.reshape(-1) != IGNORE_INDEX
    dense = L.pixelwise_distillation_loss(z, v, y, T, hw, sw)
    flat = L.distillation_loss(rows(z)[keep], rows(v)[keep], y.reshape(-1)[keep], T, hw, sw)
    assert torch.allclose(dense, flat, rtol=1e-12, atol=1e-12)
    # and the general [B, C, *] shape: a 1-D sequence of positions, a 3-D volume
    for shape in ((2, 4, 7), (2, 4, 2, 3, 2)):
        g = torch.Generator().manual_seed(2)
        z, v = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        yy = torch.randint(0, 4, (shape[0],) + shape[2:], generator=g)
        assert torch.allclose(L.pixelwise_distillation_loss(z, v, yy, T, hw, sw),
                              L.distillation_loss(rows(z), rows(v), yy.reshape(-1), T, hw, sw), atol=1e-6)


def test_ignored_pixels_contribute_nothing_in_value_and_gradient():
    z, v, y = dense_batch(seed=3)
    ign = y == IGNORE_INDEX
    assert ign.any() and (~ign).any()
    z1 = z.clone().requires_grad_()
    loss1 = L.pixelwise_distillation_loss(z1, v, y, 4.0, 0.3)
    loss1.backward()
    # change the logits (student and teacher) at ignored pixels wildly: same value, same gradient
    z2, v2 = z.clone(), v.clone()
    m = ign[:, None].expand_as(z)
    z2[m], v2[m] = 50 * torch.randn(int(m.sum()), dtype=z.dtype), -30.0
    z2.requires_grad_()
    loss2 = L.pixelwise_distillation_loss(z2, v2, y, 4.0, 0.3)
    loss2.backward()
    assert torch.allclose(loss1, loss2, rtol=1e-12)
    assert torch.equal(z1.grad[m], torch.zeros_like(z1.grad[m])) and torch.equal(z2.grad[m], z1.grad[m])
    assert torch.allclose(z1.grad[~m], z2.grad[~m])
    # the hard term alone, and CWD with the mask, ignore them too
    z3 = z.clone().requires_grad_()
    L.DenseHardLabels()(z3, None, y).backward()
    assert torch.equal(z3.grad[m], torch.zeros_like(z3.grad[m]))
    z4 = z.clone().requires_grad_()
    L.ChannelWiseDistillation(temperature=2.0)(z4, v, y).backward()
    assert torch.isfinite(z4.grad).all() and torch.equal(z4.grad[m], torch.zeros_like(z4.grad[m]))
    # every pixel ignored: 0 with a zero gradient, not NaN
    z5 = z.clone().requires_grad_()
    allign = torch.full_like(y, IGNORE_INDEX)
    loss5 = L.pixelwise_distillation_loss(z5, v, allign, 2.0, 0.5)
    loss5.backward()
    assert loss5.item() == 0.0 and torch.equal(z5.grad, torch.zeros_like(z5.grad))


def test_pixelwise_gradient_matches_its_formula():
    z, v, y = dense_batch(seed=4)
    T, hw, sw = 3.0, 0.4, 1.5
    zz = z.clone().requires_grad_()
    L.pixelwise_distillation_loss(zz, v, y, T, hw, sw).backward()
    keep = (y != IGNORE_INDEX)[:, None].to(z.dtype)
    n = float(keep.sum())
    q, p = torch.softmax(z / T, 1), torch.softmax(v / T, 1)
    onehot = F.one_hot(y.clamp(max=z.shape[1] - 1), z.shape[1]).movedim(-1, 1).to(z.dtype)
    expect = (sw * T * (q - p) + hw * (torch.softmax(z, 1) - onehot)) / n * keep
    assert torch.allclose(zz.grad, expect, atol=1e-12)


def direct_cwd(z, v, T, mask=None):
    """CWD by loops, straight from Shu et al.'s formula."""
    b, c = z.shape[:2]
    total = 0.0
    for i in range(b):
        keep = torch.ones(z[i, 0].numel(), dtype=torch.bool) if mask is None else mask[i].reshape(-1)
        if not keep.any():
            continue
        for k in range(c):
            zs, vs = z[i, k].reshape(-1)[keep] / T, v[i, k].reshape(-1)[keep] / T
            p = torch.exp(vs) / torch.exp(vs).sum()
            q = torch.exp(zs) / torch.exp(zs).sum()
            total = total + (p * (torch.log(p) - torch.log(q))).sum()
    return total * T * T / (b * c)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_cwd_against_a_direct_computation_and_its_gradient(T):
    z, v, y = dense_batch(seed=5)
    assert torch.allclose(L.channel_wise_distillation_loss(z, v, T), direct_cwd(z, v, T), rtol=1e-10)
    mask = y != IGNORE_INDEX
    mask[1] = False  # an image with no kept positions contributes 0
    assert torch.allclose(L.channel_wise_distillation_loss(z, v, T, mask), direct_cwd(z, v, T, mask), rtol=1e-10)
    zz = z.clone().requires_grad_()
    L.channel_wise_distillation_loss(zz, v, T).backward()
    b, c = z.shape[:2]
    phi_z = torch.softmax(z.reshape(b, c, -1) / T, -1).reshape(z.shape)
    phi_v = torch.softmax(v.reshape(b, c, -1) / T, -1).reshape(z.shape)
    assert torch.allclose(zz.grad, T * (phi_z - phi_v) / (b * c), atol=1e-12)
    assert float(L.channel_wise_distillation_loss(v, v, T)) == pytest.approx(0.0, abs=1e-12)
    # the objective: soft_weight * CWD over labelled pixels + hard_weight * dense CE
    obj = L.ChannelWiseDistillation(temperature=T, hard_weight=0.7, soft_weight=2.0)
    expect = 2.0 * direct_cwd(z, v, T, y != IGNORE_INDEX) + 0.7 * L.dense_hard_cross_entropy(z, y)
    assert torch.allclose(obj(z, v, y), expect, rtol=1e-10)


def test_dense_losses_reject_bad_input():
    z, v, y = dense_batch()
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 4, 6\)"):
        L.pixelwise_distillation_loss(z, v, y[:, :2], 2.0)
    bad = y.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="0..4 or be the ignore index 255"):
        L.pixelwise_distillation_loss(z, v, bad, 2.0)
    with pytest.raises(ValueError, match="differ in shape"):
        L.pixelwise_distillation_loss(z, v[:, :3], y, 2.0)
    with pytest.raises(ValueError, match=r"\(batch, classes, \*positions\)"):
        L.pixelwise_distillation_loss(z[:, :, 0, 0], v[:, :, 0, 0], y[:, 0, 0], 2.0)
    with pytest.raises(ValueError, match="labels are required"):
        L.pixelwise_distillation_loss(z, v, None, 2.0, hard_weight=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        L.channel_wise_distillation_loss(z * float("nan"), v, 2.0)
    with pytest.raises(ValueError, match="both 0"):
        L.PixelwiseDistillation(2.0, hard_weight=0, soft_weight=0)
    with pytest.raises(ValueError, match="temperature"):
        L.ChannelWiseDistillation(temperature=0)
    # unlabeled: all positions count, hard weight 0
    assert torch.allclose(L.pixelwise_distillation_loss(z, v, None, 2.0, 0.0),
                          L.soft_cross_entropy(rows(z), rows(v), 2.0))


# ---------------------------------------------------------------- data

def fake_mnist(n_train=200, n_test=100, seed=0):
    """Stand-in MNIST: random 28x28 'strokes' (a blob per image) with labels 0..9."""
    from distill.data import Dataset

    g = torch.Generator().manual_seed(seed)

    def draw(n):
        img = torch.zeros(n, 28, 28)
        for i in range(n):
            r, c = torch.randint(4, 16, (2,), generator=g).tolist()
            img[i, r:r + 8, c:c + 6] = 1.0
            img[i, r - 1, c:c + 6] = 0.3  # an edge band
        return img.reshape(n, -1), torch.arange(n) % 10

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset("fake", xtr, ytr, xte, yte, tuple(str(i) for i in range(10)), "fake", (28, 28))


def test_canvases_are_deterministic_and_labelled_by_stroke():
    m = fake_mnist()
    a = mnist_segmentation(m, train=20, test=10, size=48)
    b = mnist_segmentation(m, train=30, test=10, size=48)
    assert a.fingerprint == mnist_segmentation(m, train=20, test=10, size=48).fingerprint
    assert torch.equal(a.x_train, b.x_train[:20]) and torch.equal(a.y_train, b.y_train[:20])  # prefixes agree
    assert a.fingerprint != b.fingerprint
    assert a.x_train.shape == (20, 1, 48, 48) and a.y_train.shape == (20, 48, 48)
    x, y = a.x_train[:, 0], a.y_train
    assert torch.equal(y[x <= 25 / 255], torch.zeros_like(y[x <= 25 / 255]))            # background = 0
    assert ((y[x > 127 / 255] >= 1) & (y[x > 127 / 255] <= 10)).all()                   # digits 1..10
    band = (x > 25 / 255) & (x <= 127 / 255)
    assert band.any() and (y[band] == IGNORE_INDEX).all()                               # ignore band
    assert a.num_classes == 11 and a.classes[0] == "background" and a.classes[1] == "0"
    # 2..4 digits per canvas: each placed digit contributes one 8x6 stroke block of 48 pixels
    counts = ((y >= 1) & (y <= 10)).flatten(1).sum(1)
    assert counts.min() >= 48 and counts.max() <= 4 * 48


def test_train_canvases_use_train_digits_only():
    """Mark train digits with label 0 and test digits with label 9: train canvases hold class 1 only."""
    m = fake_mnist()
    from dataclasses import replace

    m = replace(m, y_train=torch.zeros_like(m.y_train), y_test=torch.full_like(m.y_test, 9))
    d = mnist_segmentation(m, train=15, test=15, size=40)
    assert set(d.y_train.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert set(d.y_test.unique().tolist()) <= {0, 10, IGNORE_INDEX}


def test_digits_are_not_reused_within_a_split():
    imgs = np.zeros((40, 28, 28), np.uint8)
    for i in range(40):  # digit i has intensity 130 + i: each canvas of one digit says which digit it holds
        imgs[i, 10:18, 10:18] = 130 + i
    canvases, _ = make_canvases(imgs, np.arange(40) % 10, 40, size=28, digits=(1, 1), seed=3)
    used = [int(c.max()) - 130 for c in canvases]
    assert sorted(used) == list(range(40))  # all 40 digits, none twice
    canvases, _ = make_canvases(imgs, np.arange(40) % 10, 41, size=28, digits=(1, 1), seed=3)
    assert [int(c.max()) - 130 for c in canvases[:40]] == used  # then a new round begins


def test_masks_are_checked():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(DistillError, match=r"masks of shape \(8, 7\) do not match images of shape \(1, 8, 8\)"):
        check_masks(x, torch.zeros(4, 8, 7, dtype=torch.long), 3)
    y = torch.zeros(4, 8, 8, dtype=torch.long)
    y[1, 2, 3] = 5
    with pytest.raises(DistillError, match="holds class 5, outside the 3 classes 0..2 and not the ignore index 255"):
        check_masks(x, y, 3)
    y[1, 2, 3] = 255
    check_masks(x, y, 3)
    with pytest.raises(DistillError, match="integer classes"):
        check_masks(x, y.float(), 3)


def test_validation_split_and_subset():
    d = mnist_segmentation(fake_mnist(), train=12, test=6, size=32)
    rest, (xv, yv) = d.validation_split(4)
    assert len(rest.x_train) == 8 and torch.equal(xv, d.x_train[8:]) and rest.fingerprint != d.fingerprint
    s = d.subset(train=5, test=2)
    assert len(s.x_train) == 5 and len(s.x_test) == 2 and isinstance(s, SegmentationDataset)


@pytest.mark.slow
def test_real_mnist_segmentation_fingerprint(mnist):
    from distill.data.segmentation import mnist_segmentation as build

    d = build(mnist, train=8, test=4)
    assert d.fingerprint == build(mnist, train=8, test=4).fingerprint
    assert d.x_train.shape == (8, 1, 64, 64)


# ---------------------------------------------------------------- models

def test_models_shapes_params_and_factories(tmp_path):
    torch.manual_seed(0)
    t, s = DeepLabV3(), MobileNetSeg()
    assert count_params(t) >= 300_000 and count_params(s) <= count_params(t) / 10
    x = torch.rand(2, 1, 64, 64)
    assert t(x).shape == (2, 11, 64, 64) and s(x).shape == (2, 11, 64, 64)
    assert s(x.reshape(2, -1)).shape == (2, 11, 64, 64)  # flat inputs are viewed as images
    assert any(isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1 for m in t.modules())
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in s.modules())
    for model in (DeepLabV3(num_classes=3, image_shape=(16, 16), width=4, aspp=8, rates=(1, 2)),
                  MobileNetSeg(num_classes=3, image_shape=(16, 16), width=4)):
        model.eval()
        distill.save_checkpoint(tmp_path / type(model).__name__, model, {})
        back, _ = distill.load_checkpoint(tmp_path / type(model).__name__)
        xx = torch.rand(2, 1, 16, 16)
        assert type(back) is type(model) and torch.equal(back.eval()(xx), model(xx))


# ---------------------------------------------------------------- metrics

def test_iou_metrics_by_hand():
    # 1 image, 3 classes, 6 pixels: truth [0 0 1 1 2 255], prediction [0 1 1 1 0 2]
    y = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    logits = F.one_hot(pred, 3).movedim(-1, 1).float() * 5
    m = confusion_matrix(logits, y)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = segmentation_metrics(logits, y)
    # IoU_0 = 1 / (2 + 2 - 1) = 1/3; IoU_1 = 2 / (3 + 2 - 2) = 2/3; IoU_2 = 0 / (1 + 0 - 0) = 0
    assert r["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx(1 / 3) and r["miou_fg"] == pytest.approx(1 / 3)
    assert r["pixel_accuracy"] == pytest.approx(3 / 5) and r["errors"] == 2 and r["n"] == 5 and r["ignored"] == 1
    assert r["nll"] == pytest.approx(float(F.cross_entropy(logits[..., :5], y[:, :5])))
    # a class absent from truth and prediction is left out of the means
    out = iou_from_confusion(torch.tensor([[3, 0, 0], [0, 2, 0], [0, 0, 0]]))
    assert out["per_class_iou"] == [1.0, 1.0, None] and out["miou"] == 1.0 and out["miou_fg"] == 1.0


def test_evaluate_streams_dense_metrics_equal_to_the_whole():
    torch.manual_seed(0)
    model = MobileNetSeg(num_classes=4, image_shape=(16, 16), width=4).eval()
    x = torch.rand(10, 1, 16, 16)
    y = torch.randint(0, 4, (10, 16, 16))
    y[:, :2] = IGNORE_INDEX
    whole = segmentation_metrics(model(x).detach(), y)
    streamed = evaluate(model, (x, y), batch_size=3)
    for k in ("errors", "n", "ignored", "per_class_iou"):
        assert streamed[k] == whole[k]
    assert streamed["nll"] == pytest.approx(whole["nll"], rel=1e-5) and streamed["miou"] == pytest.approx(whole["miou"])


# ---------------------------------------------------------------- fit on masks

def tiny_seg(n=24, size=16, classes=3, seed=0):
    """Blobs of class 1 or 2 on background 0, an ignore ring: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(2, size - 8, (2,), generator=g).tolist()
        cls = 1 + i % (classes - 1)
        x[i, 0, r:r + 6, c:c + 6] = 0.5 * cls
        y[i, r - 1:r + 7, c - 1:c + 7] = IGNORE_INDEX
        y[i, r:r + 6, c:c + 6] = cls
    return x, y


def test_fit_trains_dense_models_with_every_objective(tmp_path):
    x, y = tiny_seg(n=16)
    cfg = dict(epochs=2, batch_size=8, optimizer="adam", lr=0.01)
    torch.manual_seed(0)
    teacher = distill.fit(MobileNetSeg(3, (16, 16), width=8), (x, y),
                          distill.TrainConfig(objective=L.DenseHardLabels(), **cfg), test=(x, y),
                          run_dir=tmp_path / "t", progress=False)
    assert set(teacher.test) >= {"miou", "miou_fg", "pixel_accuracy", "per_class_iou", "errors", "nll"}
    assert teacher.history[-1]["test_errors"] == teacher.test["errors"]
    for objective in (L.PixelwiseDistillation(2.0, 0.5), L.ChannelWiseDistillation(2.0),
                      L.PixelwiseDistillation(2.0, hard_weight=0.0)):
        torch.manual_seed(0)
        r = distill.fit(MobileNetSeg(3, (16, 16), width=4), (x, y), distill.TrainConfig(objective=objective, **cfg),
                        teacher=teacher.model, val=(x, y), progress=False)
        assert np.isfinite(r.history[-1]["train_loss"]) and 0 <= r.val["miou"] <= 1
    back, side = distill.load_checkpoint(tmp_path / "t" / "model")
    assert side["num_classes"] == 3 and side["test"]["miou"] == teacher.test["miou"]


def test_fit_rejects_bad_dense_input():
    x, y = tiny_seg(n=8)
    model = MobileNetSeg(3, (16, 16), width=4)
    dense = distill.TrainConfig(epochs=1, objective=L.DenseHardLabels())
    with pytest.raises(ValueError, match=r"label masks have shape \(16, 15\)"):
        distill.fit(model, (x, y[:, :, :15]), dense, progress=False)
    bad = y.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="masks hold class 7 but the model predicts 3 classes"):
        distill.fit(model, (x, bad), dense, progress=False)
    with pytest.raises(ValueError, match="masks, which HardLabels cannot take"):
        distill.fit(model, (x, y), distill.TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="jitter shifts the images but not their label masks"):
        distill.fit(model, (x, y), distill.TrainConfig(epochs=1, jitter=1, objective=L.DenseHardLabels()),
                    progress=False)
    with pytest.raises(ValueError, match=r"labels are masks of shape \(16, 16\)"):
        distill.fit(distill.models.classifiers.MLP(256, [4], 3), (x, y), dense, progress=False)


def test_map_style_dataset_of_masks():
    from torch.utils.data import TensorDataset

    x, y = tiny_seg(n=8)
    torch.manual_seed(0)
    r = distill.fit(MobileNetSeg(3, (16, 16), width=4), TensorDataset(x, y),
                    distill.TrainConfig(epochs=1, batch_size=4, objective=L.DenseHardLabels()), test=(x, y),
                    progress=False)
    assert r.test["n"] == int((y != IGNORE_INDEX).sum())


# ---------------------------------------------------------------- CLI and experiment

def write_npz(path, n=8, **over):
    x, y = tiny_seg(n=n)
    arrays = dict(x_train=x[:, 0].numpy(), y_train=y.numpy(), x_test=x[:4, 0].numpy(), y_test=y[:4].numpy())
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def test_cli_trains_dense_teacher_and_student(tmp_path, capsys):
    from distill.cli import main

    data = write_npz(tmp_path / "seg.npz")
    common = ["--data", str(data), "--epochs", "1", "--batch-size", "4", "--no-progress", "--width", "4",
              "--optimizer", "adam"]
    assert main(["teacher", "--arch", "deeplab", "--out", str(tmp_path / "t")] + common) == 0
    out = capsys.readouterr().out
    assert "teacher:" in out and "mIoU" in out
    assert main(["student", "--arch", "mobilenet", "--teacher", str(tmp_path / "t" / "model"), "--temperature", "2",
                 "--out", str(tmp_path / "s")] + common) == 0
    assert "student-distilled" in capsys.readouterr().out
    assert main(["student", "--arch", "mobilenet", "--teacher", str(tmp_path / "t" / "model"), "--cwd",
                 "--out", str(tmp_path / "c")] + common) == 0
    assert main(["evaluate", str(tmp_path / "s" / "model"), "--data", str(data), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= rec["test_miou"] <= 1 and rec["test_miou_fg"] is not None


@pytest.mark.parametrize("over, msg", [
    (dict(y_train=np.zeros((8, 16, 15), np.int64)), r"masks of shape \(16, 15\) do not match images"),
    (dict(y_test=np.full((4, 16, 16), 7, np.int64), classes=np.array(["bg", "a", "b"])),
     "holds class 7, outside the 3 classes 0..2 and not the ignore index 255"),
])
def test_cli_bad_masks_are_one_line_errors(tmp_path, capsys, over, msg):
    from distill.cli import main

    data = write_npz(tmp_path / "bad.npz", **over)
    code = main(["teacher", "--data", str(data), "--arch", "deeplab", "--epochs", "1", "--out",
                 str(tmp_path / "t"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("distill: error:")
    import re

    assert re.search(msg, err), err


def test_npz_loader_rejects_missing_arrays(tmp_path):
    np.savez(tmp_path / "x.npz", x_train=np.zeros((2, 4, 4)))
    with pytest.raises(DistillError, match="lacks y_train, x_test, y_test"):
        load_segmentation_npz(tmp_path / "x.npz")


def test_cli_segmentation_flags_need_masks(tmp_path, capsys):
    from distill.cli import main

    np.savez(tmp_path / "cls.npz", x_train=np.random.rand(6, 4, 4).astype(np.float32), y_train=np.arange(6) % 2)
    code = main(["teacher", "--data", str(tmp_path / "cls.npz"), "--arch", "deeplab", "--epochs", "1", "--out",
                 str(tmp_path / "t"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--arch deeplab is for segmentation" in err and len(err.splitlines()) == 1
    data = write_npz(tmp_path / "seg.npz")
    code = main(["student", "--data", str(data), "--cwd", "--epochs", "1", "--out", str(tmp_path / "s"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--cwd needs --teacher" in err


def test_experiment_tiny_end_to_end(tmp_path, mnist, monkeypatch):
    from distill.cli import EXPERIMENTS
    from distill.experiments import segmentation as exp

    assert EXPERIMENTS["segmentation"][0] == "distill.experiments.segmentation"
    monkeypatch.setattr(exp, "load_mnist_seg", lambda data_dir, log, train, test: mnist_segmentation(
        mnist, train, test))
    records = exp.run("tiny", out=tmp_path / "out", progress=False, log=lambda *a: None)
    assert [r["model"] for r in records] == ["teacher", "student-hard", "student-pixelwise", "student-cwd"]
    assert all(0 <= r["test_miou"] <= 1 and 0 <= r["val_miou"] <= 1 for r in records)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "mIoU gap closed by pixelwise distillation" in md


def test_figure_of_predictions(tmp_path):
    from distill.experiments.segmentation import figure

    d = mnist_segmentation(fake_mnist(20, 20), train=4, test=3, size=32)
    model = MobileNetSeg(11, (32, 32), width=4)
    path = figure(tmp_path, d, {"student": model}, 2)
    assert path.name == "segmentation.png" and path.stat().st_size > 1000


def test_readme_dense_example_runs(tmp_path, monkeypatch):
    """The Python block of docs/segmentation.md ("Dense prediction"), on 24 generated canvases for
    one epoch."""
    import re
    from pathlib import Path

    import distill.data

    text = (Path(__file__).resolve().parents[2] / "docs" / "segmentation.md").read_text(encoding="utf-8")
    assert text.startswith("# Dense prediction (segmentation)\n")
    block = re.search(r"^```python\n(.*?)^```", text, re.M | re.S).group(1)
    assert "load_mnist_seg(train=3000, test=1000)" in block and "validation_split(500)" in block
    block = (block.replace("train=3000, test=1000", "train=24, test=8").replace("validation_split(500)",
                                                                                "validation_split(8)")
             .replace("epochs=8", "epochs=1"))
    fake = fake_mnist()
    monkeypatch.setattr(distill.data, "load_mnist_seg", lambda train, test: mnist_segmentation(fake, train, test))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "docs/segmentation.md example", "exec"), scope)
    assert 0 <= scope["student"].test["miou"] <= 1 and len(scope["student"].test["per_class_iou"]) == 11


def test_experiment_tune_reports_validation_miou(tmp_path, mnist, monkeypatch):
    from distill.experiments import segmentation as exp

    monkeypatch.setattr(exp, "load_mnist_seg", lambda data_dir, log, train, test: mnist_segmentation(
        mnist, train, test))
    monkeypatch.setattr(exp, "TUNE_LR", (0.003, 0.01))
    monkeypatch.setattr(exp, "TUNE_PIXELWISE", ())
    monkeypatch.setattr(exp, "TUNE_CWD", ((1.0, 1.0, 3.0),))
    monkeypatch.setattr(exp, "TUNE_WIDTHS", (4, 6))
    monkeypatch.setattr(exp, "TUNE_SEEDS", (0, 1))
    records = exp.run("tiny", out=tmp_path / "tune", progress=False, log=lambda *a: None, tune=True)
    hard = {r["lr"]: r["val_miou"] for r in records[:5] if r["model"] == "student-hard"}
    best = max(hard, key=hard.get)
    assert [(r["model"], r.get("lr")) for r in records[:6]] == [
        ("teacher", None), ("student-hard", 0.003), ("student-pixelwise", 0.003), ("student-hard", 0.01),
        ("student-pixelwise", 0.01), ("student-cwd", best)]
    # step 3: hard and the preset's CWD (T = 4, soft weight 3) at each width and seed, at the chosen lr
    step3 = records[6:]
    assert [(r["model"], r["width"], r["seed"], r["lr"]) for r in step3] == [
        (m, w, s, best) for w in (4, 6) for s in (0, 1) for m in ("student-hard", "student-cwd")]
    assert all(r["temperature"] == 4.0 and r["soft_weight"] == 3.0 for r in step3 if r["model"] == "student-cwd")
    assert step3[0]["val_miou"] == hard[best]  # width 4, seed 0: step 1's run, reused
    md = (tmp_path / "tune" / "results.md").read_text()
    assert "validation mIoU" in md and f"| student-cwd | 4 | 0 | {best} | 1.0 | 1.0 | 3.0 |" in md
    t = records[0]["val_miou"]
    for w in (4, 6):
        h = [r["val_miou"] for r in step3 if r["width"] == w and r["model"] == "student-hard"]
        c = [r["val_miou"] for r in step3 if r["width"] == w and r["model"] == "student-cwd"]
        per = ", ".join(f"{100 * exp.gap_closed(t, a, b):.0f} %" for a, b in zip(h, c))
        assert f"| {w} | " in md and per in md
