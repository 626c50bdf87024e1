import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.data.augment import jitter
from distill.checkpoints import import_factory, load_checkpoint, save_checkpoint
from distill.errors import DistillError
from distill.models.classifiers import CNN, MLP, count_params


def _rebuild(model):
    """A fresh model from the model's own factory (as load_checkpoint does) with its weights."""
    target, kwargs = model.distill_factory
    fresh = import_factory(target)(**json.loads(json.dumps(kwargs)))  # the kwargs survive JSON
    fresh.load_state_dict(model.state_dict())
    return fresh


def test_mlp_formula_params_and_rebuild():
    torch.manual_seed(0)
    m = MLP(784, [800, 800], 10).eval()
    assert count_params(m) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    x = torch.rand(5, 784)
    l1, l2, l3 = (layer for layer in m.net if isinstance(layer, nn.Linear))
    want = l3(torch.relu(l2(torch.relu(l1(x)))))
    assert torch.allclose(m(x), want, atol=1e-6)
    assert torch.equal(m(x.view(5, 28, 28)), m(x))  # images are flattened
    m2 = _rebuild(m).eval()
    assert type(m2) is MLP and m2.arch == m.arch and "kind" not in m.arch
    assert m.distill_factory == ("distill.models:MLP", m.arch)
    assert torch.equal(m2(x), m(x))


def test_dropout_and_max_norm_survive_the_rebuild(tmp_path):
    torch.manual_seed(0)
    m = MLP(20, [30, 30], 4, dropout_input=0.2, dropout_hidden=0.5, max_norm=0.7)
    save_checkpoint(tmp_path / "m", m)
    for m2 in (_rebuild(m), load_checkpoint(tmp_path / "m")[0]):
        assert m2.arch == m.arch and m2.max_norm == 0.7
        assert [d.p for d in m2.net if isinstance(d, nn.Dropout)] == [0.2, 0.5, 0.5]
        m.eval(), m2.eval()
        x = torch.randn(6, 20)
        assert torch.equal(m2(x), m(x))
        with torch.no_grad():
            for p in m2.parameters():
                p.mul_(50)
        m2.constrain()
        for layer in [*m2.hidden_layers, m2.output_layer]:
            norms = layer.weight.norm(dim=1)
            assert (norms <= 0.7 + 1e-5).all() and norms.max() > 0.69  # bounded, and it was active


def test_max_norm_bounds_each_units_incoming_weights():
    torch.manual_seed(0)
    m = MLP(20, [30], 4, max_norm=0.5)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(10)
    big = m.hidden_layers[0].weight.norm(dim=1)
    m.constrain()
    norms = m.hidden_layers[0].weight.norm(dim=1)
    assert (norms <= 0.5 + 1e-6).all()
    # rows already inside the ball are untouched; rows outside are rescaled, direction kept
    assert torch.allclose(norms, big.clamp(max=0.5), atol=1e-5)


def test_dropout_only_in_training_mode():
    m = MLP(10, [50], 3, dropout_input=0.2, dropout_hidden=0.5)
    x = torch.randn(4, 10)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    assert not torch.equal(a, m(x))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="dropout"):
        MLP(10, [5], 2, dropout_hidden=1.0)
    with pytest.raises(ValueError, match="max_norm"):
        MLP(10, [5], 2, max_norm=0)
    with pytest.raises(ValueError, match="num_classes > 1"):
        MLP(10, [5], 1)
    with pytest.raises(DistillError, match="cannot import the model factory"):
        import_factory("distill.models:Transformer")
    with pytest.raises(DistillError, match="'package.module:callable'"):
        import_factory("distill.models.classifiers.MLP")


def test_cnn_forward_formula_and_rebuild():
    torch.manual_seed(0)
    m = CNN((6, 8), channels=4, hidden=[16], num_classes=10, dropout_hidden=0.5, max_norm=1.5).eval()
    x = torch.rand(3, 48)
    conv = m.features[0]
    lin1, lin2 = (layer for layer in m.head if isinstance(layer, nn.Linear))
    h = F.max_pool2d(torch.relu(F.conv2d(x.view(3, 1, 6, 8), conv.weight, conv.bias, padding=1)), 2)
    assert h.shape == (3, 4, 3, 4)
    want = lin2(torch.relu(lin1(h.flatten(1))))
    assert torch.allclose(m(x), want, atol=1e-6)
    assert torch.equal(m(x.view(3, 1, 6, 8)), m(x))
    m2 = _rebuild(m).eval()
    assert type(m2) is CNN and m2.arch == m.arch and m2.image_shape == (6, 8)
    assert torch.equal(m2(x), m(x))
    assert [d.p for d in m2.head if isinstance(d, nn.Dropout)] == [0.5]
    with torch.no_grad():
        lin1.weight.mul_(100)
    m.constrain()
    assert (lin1.weight.norm(dim=1) <= 1.5 + 1e-5).all()


def test_jitter_translates_within_range():
    img = torch.zeros(1, 8, 8)
    img[0, 4, 4] = 1.0
    x = img.reshape(1, 64).repeat(500, 1)
    out = jitter(x, (8, 8), 2, torch.Generator().manual_seed(0)).reshape(500, 8, 8)
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert torch.equal(out.sum((1, 2)), torch.ones(500))  # the pixel is moved, never lost
    assert set(rows.tolist()) == {2, 3, 4, 5, 6} and set(cols.tolist()) == {2, 3, 4, 5, 6}
    # an edge pixel shifted outward disappears (zero fill), not wraps
    edge = torch.zeros(200, 64)
    edge[:, 0] = 1.0
    moved = jitter(edge, (8, 8), 2, torch.Generator().manual_seed(1))
    assert (moved.sum(1) < 1).any() and (moved[:, 7] == 0).all()
    assert torch.equal(jitter(x, (8, 8), 0), x)


# ---------------------------------------------------------------- the residual CNN

def test_resnet_shapes_and_feature_points():
    from distill.models.classifiers import ARCHS, ConvNet, ResNet

    assert ARCHS["resnet"] is ResNet and ARCHS["cnn"] is ConvNet and ARCHS["mlp"] is MLP
    torch.manual_seed(0)
    m = ResNet(1, 10, width=4, depth=2, image_shape=(28, 28)).eval()
    x = torch.rand(3, 784)
    out = m(x)
    assert out.shape == (3, 10)
    assert torch.equal(m(x.view(3, 28, 28)), out) and torch.equal(m(x.view(3, 1, 28, 28)), out)
    assert m(torch.rand(2, 1, 20, 20)).shape == (2, 10)  # global pooling: any image size
    seen = {}
    for name in ("stem", "layer1", "layer2.1", "layer3", "pool"):
        m.get_submodule(name).register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, o.shape))
    m(x)
    assert seen == {"stem": (3, 4, 28, 28), "layer1": (3, 4, 28, 28), "layer2.1": (3, 8, 14, 14),
                    "layer3": (3, 16, 7, 7), "pool": (3, 16, 1, 1)}
    assert len(m.layer2) == 2 and not isinstance(m.layer2[0].shortcut, nn.Identity)
    assert isinstance(m.layer1[0].shortcut, nn.Identity)
    rgb = ResNet(3, 5, width=4, depth=1, image_shape=(8, 8)).eval()
    assert rgb(torch.rand(2, 3 * 64)).shape == (2, 5) and rgb(torch.rand(2, 3, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="image_shape"):
        ResNet(1, 10, width=4)(torch.rand(2, 784))
    for bad in (dict(num_classes=1), dict(width=0), dict(depth=0), dict(in_channels=0)):
        with pytest.raises(ValueError, match="ResNet needs"):
            ResNet(**{**dict(in_channels=1, num_classes=10), **bad})
    with pytest.raises(ValueError, match="image_shape"):
        ResNet(1, 10, image_shape=(28,))


def test_resnet_parameters_scale_with_width_and_depth():
    from distill.models.classifiers import ResNet

    n = {w: count_params(ResNet(1, 10, width=w, depth=2)) for w in (8, 16, 32)}
    # the 3x3 convolutions dominate: about 4x the parameters for 2x the width
    assert 3.5 < n[16] / n[8] < 4.1 and 3.7 < n[32] / n[16] < 4.1
    assert count_params(ResNet(1, 10, width=16, depth=3)) > 1.4 * n[16]
    # the default, width 32 and depth 2: about 0.7M parameters (a teacher for MNIST)
    assert 0.6e6 < n[32] < 0.8e6


def test_resnet_saves_and_loads_through_its_factory(tmp_path):
    from distill.models.classifiers import ResNet

    torch.manual_seed(0)
    m = ResNet(1, 4, width=4, depth=1, image_shape=(8, 8))
    m.train()
    m(torch.rand(16, 64) * 3)  # move the batch-norm statistics off their initial values
    m.eval()
    assert m.distill_factory == ("distill.models:ResNet", m.arch)
    assert json.loads(json.dumps(m.arch)) == m.arch
    save_checkpoint(tmp_path / "r", m)
    x = torch.rand(5, 64)
    for m2 in (_rebuild(m).eval(), load_checkpoint(tmp_path / "r")[0]):
        assert type(m2) is ResNet and m2.arch == m.arch and not m2.training
        assert torch.equal(m2.layer1[0].bn1.running_mean, m.layer1[0].bn1.running_mean)
        assert torch.equal(m2(x), m(x))
