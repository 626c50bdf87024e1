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
