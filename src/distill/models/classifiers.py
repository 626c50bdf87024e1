"""Model builders: an MLP (dropout, max-norm), the paper-style CNN (one convolution and a dense
head), a small convolutional net with global pooling (:class:`ConvNet`, ``--arch cnn``) and a
small residual CNN (:class:`ResNet`, a teacher). Nothing else lives here.

Every model carries ``arch``, the JSON-able keyword arguments that rebuild it, and
``distill_factory`` (``"distill.models:MLP"`` + ``arch``), which :mod:`distill.checkpoints` records
so :func:`distill.load_checkpoint` rebuilds it without unpickling; and, where it has a max-norm
constraint (MLP, CNN), ``constrain()``, which the training loop calls after each optimiser step.
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


class BasicBlock(nn.Module):
    """He et al.'s basic residual block: ``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``,
    the shortcut a strided 1x1 convolution with batch norm where the shape changes, else ``x``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
                         if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _PooledImageNet(nn.Module):
    """The shared front of the global-pooling image nets (:class:`ResNet`, :class:`ConvNet`): their
    checked constructor arguments (recorded as ``arch``) and the view of any input as images."""

    __jit_unused_properties__ = ["distill_factory"]

    def _set_arch(self, in_channels, num_classes, width, depth, image_shape) -> None:
        name = type(self).__name__
        in_channels, num_classes, width, depth = int(in_channels), int(num_classes), int(width), int(depth)
        if in_channels < 1 or num_classes < 2 or width < 1 or depth < 1:
            raise ValueError(f"{name} needs in_channels >= 1, num_classes >= 2, width >= 1 and depth >= 1, got "
                             f"{in_channels}, {num_classes}, {width}, {depth}")
        shape = None if image_shape is None else [int(s) for s in image_shape]
        if shape is not None and (len(shape) != 2 or min(shape) < 1):
            raise ValueError(f"image_shape must be (height, width), got {image_shape!r}")
        self.arch = dict(in_channels=in_channels, num_classes=num_classes, width=width, depth=depth,
                         image_shape=shape)
        self.in_channels, self.image_shape = in_channels, None if shape is None else tuple(shape)

    @property
    def distill_factory(self) -> tuple[str, dict]:
        return f"distill.models:{type(self).__name__}", dict(self.arch)

    def _as_images(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` as it is, ``(B, H, W)`` with one channel, flat ``(B, C*H*W)`` viewed with
        ``image_shape``."""
        if x.dim() == 2:
            if self.image_shape is None:
                raise ValueError(f"{type(self).__name__} got flat inputs {tuple(x.shape)}; build it with "
                                 "image_shape=(H, W) to view them as images")
            x = x.reshape(x.shape[0], self.in_channels, *self.image_shape)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        return x


class ResNet(_PooledImageNet):
    """A small residual CNN with global pooling (He et al. 2016, the CIFAR layout):
    ``stem (conv3x3 -> BN -> ReLU, width) -> layer1 (width) -> layer2 (2 width, stride 2) -> layer3
    (4 width, stride 2) -> global average pooling -> Linear``, each layer ``depth`` :class:`BasicBlock` s.

    Global pooling makes it independent of the image size; ``image_shape`` only says how to view
    flat input vectors (``(B, H*W*C)``, as MNIST's 784) as images; ``(B, H, W)`` and ``(B, C, H, W)``
    inputs are taken as they are. Its blocks are the usual feature-distillation points:
    ``"layer3"`` (the last map, ``[B, 4 width, H/4, W/4]``), ``"layer2.1"`` (a block), ``"pool"``
    (the pooled embedding, ``[B, 4 width, 1, 1]``)."""

    KEY_NAME = "distill.models.ResNet"  # its name in run keys (distill.digest.key_name)

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, depth: int = 2,
                 image_shape=None):
        super().__init__()
        self._set_arch(in_channels, num_classes, width, depth, image_shape)
        in_channels, width, depth = self.in_channels, self.arch["width"], self.arch["depth"]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())

        def layer(cin, cout, stride):
            return nn.Sequential(BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout) for _ in range(depth - 1)))

        self.layer1 = layer(width, width, 1)
        self.layer2 = layer(width, 2 * width, 2)
        self.layer3 = layer(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_images(x)
        h = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(h).flatten(1))


class ConvNet(_PooledImageNet):
    """A small all-convolutional classifier with global pooling (VGG-style stages):
    ``depth`` stages of ``(conv3x3 -> BN -> ReLU) * 2 -> maxpool 2``, widths ``width, 2 width, 4
    width, ...``, then global average pooling and one Linear. Translation-equivariant up to the
    pooling and independent of the image size; ``image_shape`` views flat inputs as images."""

    KEY_NAME = "distill.models.ConvNet"  # its name in run keys (distill.digest.key_name)

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, depth: int = 3,
                 image_shape=None):
        super().__init__()
        self._set_arch(in_channels, num_classes, width, depth, image_shape)
        in_channels, width, depth, shape = self.in_channels, self.arch["width"], self.arch["depth"], self.image_shape
        stages, cin = [], in_channels
        for i in range(depth):
            cout = width * 2 ** i
            stages += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            # pool while the map is larger than 1x1 (a small image keeps its last stages unpooled)
            if shape is None or min(shape) // 2 ** (i + 1) >= 1:
                stages.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = cout
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._as_images(x)
        return self.fc(self.pool(self.features(x)).flatten(1))


#: ``--arch`` names of the classifiers (``distill teacher|student``): the MLP, the small
#: convolutional net with global pooling, the residual net (the paper's one-convolution :class:`CNN`
#: with its dense head stays for the experiments that use it)
ARCHS = {"mlp": MLP, "cnn": ConvNet, "resnet": ResNet}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
