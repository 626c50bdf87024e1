import pytest
import torch

from distill.augment import jitter
from distill.models import CNN, MLP, build_model, count_params


def test_mlp_shapes_params_and_rebuild():
    m = MLP(784, [800, 800], 10)
    assert count_params(m) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    assert m(torch.zeros(5, 784)).shape == (5, 10)
    m2 = build_model(m.arch)
    assert count_params(m2) == count_params(m)


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
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model({"kind": "transformer"})


def test_cnn_forward():
    m = CNN((28, 28), channels=4, hidden=[16], num_classes=10)
    assert m(torch.zeros(3, 784)).shape == (3, 10)


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
