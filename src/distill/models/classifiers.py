"""Model builders: an MLP (dropout, max-norm) and a small CNN. Nothing else lives here.

Every model carries ``arch``, the JSON-able keyword arguments that rebuild it, and
``distill_factory`` (``"distill.models:MLP"`` + ``arch``), which :mod:`distill.checkpoints` records
so :func:`distill.load_checkpoint` rebuilds it without unpickling; and ``constrain()``, which the
training loop calls after each optimiser step.
"""
from __future__ import annotations

import torch
from torch import nn


def _max_norm_(linear: nn.Module, max_norm: float | None) -> None:
    """Rescale each unit's incoming weight vector w_j to ||w_j||_2 <= max_norm (in place)."""
    if max_norm is None:
        return
    w = linear.weight.data
    norms = w.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = (max_norm / norms).clamp(max=1.0)
    w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))


class MLP(nn.Module):
    """``in -> [dropout_in] -> (Linear -> ReLU -> [dropout_hidden]) * len(hidden) -> Linear``.

    ``max_norm`` bounds the L2 norm of every unit's incoming weights (Srivastava et al. 2014),
    applied by :meth:`constrain` after each update.
    """

    KEY_NAME = "distill.models.MLP"  # its name in run keys (distill.digest.key_name)

    # Python-side helpers, not part of the forward pass: ``torch.jit.script`` leaves them out
    __jit_unused_properties__ = ["distill_factory", "hidden_layers", "output_layer"]

    def __init__(self, in_features: int, hidden, num_classes: int, dropout_input: float = 0.0,
                 dropout_hidden: float = 0.0, max_norm: float | None = None):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if in_features <= 0 or num_classes <= 1 or any(h <= 0 for h in hidden):
            raise ValueError("MLP needs in_features > 0, num_classes > 1 and positive hidden sizes")
        for name, p in (("dropout_input", dropout_input), ("dropout_hidden", dropout_hidden)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if max_norm is not None and max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.arch = dict(in_features=in_features, hidden=hidden, num_classes=num_classes,
                         dropout_input=dropout_input, dropout_hidden=dropout_hidden, max_norm=max_norm)
        layers: list[nn.Module] = []
        if dropout_input > 0:
            layers.append(nn.Dropout(dropout_input))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout_hidden > 0:
                layers.append(nn.Dropout(dropout_hidden))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.max_norm = max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    @torch.no_grad()
    def constrain(self) -> None:
        for m in self.net:
            if isinstance(m, nn.Linear):
                _max_norm_(m, self.max_norm)

    @property
    def distill_factory(self) -> tuple[str, dict]:
        return "distill.models:MLP", dict(self.arch)

    @property
    def hidden_layers(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)][:-1]

    @property
    def output_layer(self) -> nn.Linear:
        return [m for m in self.net if isinstance(m, nn.Linear)][-1]


class CNN(nn.Module):
    """A small CNN: ``conv(channels, 3x3) -> ReLU -> maxpool 2 -> (Linear -> ReLU -> dropout)
    * len(hidden) -> Linear``. Inputs (flat vectors, ``(H, W)`` or ``(C, H, W)`` examples) are
    viewed as ``in_channels`` images of ``image_shape``."""

    KEY_NAME = "distill.models.CNN"  # its name in run keys (distill.digest.key_name)

    __jit_unused_properties__ = ["distill_factory"]

    def __init__(self, image_shape=(28, 28), channels: int = 32, hidden=(1200, 1200),
                 num_classes: int = 10, dropout_hidden: float = 0.5, max_norm: float | None = None,
                 in_channels: int = 1):
        super().__init__()
        h, w = (int(s) for s in image_shape)
        hidden = [int(x) for x in hidden]
        in_channels = int(in_channels)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.arch = dict(image_shape=[h, w], channels=channels, hidden=hidden,
                         num_classes=num_classes, dropout_hidden=dropout_hidden, max_norm=max_norm)
        if in_channels != 1:  # only then: grey-scale models keep the factory (and run key) they had
            self.arch["in_channels"] = in_channels
        self.image_shape = (h, w)
        self.in_channels = in_channels
        self.features = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        width = channels * (h // 2) * (w // 2)
        layers: list[nn.Module] = []
        for n in hidden:
            layers += [nn.Linear(width, n), nn.ReLU()]
            if dropout_hidden > 0:
                layers.append(nn.Dropout(dropout_hidden))
            width = n
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)
        self.max_norm = max_norm

    @property
    def distill_factory(self) -> tuple[str, dict]:
        return "distill.models:CNN", dict(self.arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, self.image_shape[0], self.image_shape[1])
        return self.head(self.features(x).flatten(1))

    @torch.no_grad()
    def constrain(self) -> None:
        for m in self.head:
            if isinstance(m, nn.Linear):
                _max_norm_(m, self.max_norm)


#: ``--arch`` names of the classifiers (``distill teacher|student``)
ARCHS = {"mlp": MLP, "cnn": CNN}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
