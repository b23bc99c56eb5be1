"""The architectures checkpoint jobs train (our own code; no torchvision).

Each builder takes the input shape and the class count, so the same names serve 8x8 digits and 32x32
CIFAR-size images: ``build("lenet5", in_channels=1, input_size=8, num_classes=10)``.

- ``mlp``: flatten, two hidden ReLU layers.
- ``lenet5`` / ``lenet5_binary``: LeNet-5 (two 5x5 conv + pool stages, three linear layers); the
  binary form replaces each hidden ReLU by :class:`BinaryActivation` (sign-like step with a
  straight-through relu' backward, seed 001 §6).
- ``vgg16``: VGG-16 with batch norm, CIFAR size (seed 002 §6).
- ``resnet18``: ResNet-18, CIFAR size (3x3 stem, no max-pool; seed 002 §6).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class _StepSTE(torch.autograd.Function):
    """Forward: ``1{x > 0}``. Backward: relu'(x) = ``1{x > 0}`` times the incoming gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        return grad * (x > 0).to(grad.dtype)


def binary_step(x: Tensor) -> Tensor:
    """The binarized activation ``1{x > 0}`` with the straight-through (relu') gradient."""
    return _StepSTE.apply(x)


class BinaryActivation(nn.Module):
    """:func:`binary_step` as a module."""

    def forward(self, x: Tensor) -> Tensor:
        return binary_step(x)


MLP_HIDDEN = (128, 128)


def mlp(*, in_features: int, num_classes: int = 10, hidden: list[int] | tuple[int, ...] = MLP_HIDDEN) -> nn.Sequential:
    """Flatten, then ``Linear -> ReLU`` for each size in ``hidden``, then a linear output layer. Takes any
    input shape whose elements number ``in_features`` (flat features or images)."""
    if in_features < 1 or any(h < 1 for h in hidden):
        raise ValueError(f"mlp needs in_features and hidden sizes >= 1, got {in_features} and {list(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class LeNet5(nn.Module):
    def __init__(self, *, in_channels: int = 1, input_size: int = 8, num_classes: int = 10, binary: bool = False):
        super().__init__()
        if input_size < 4 or input_size % 4:
            raise ValueError(f"input_size must be a positive multiple of 4, got {input_size}")

        def act() -> nn.Module:
            return BinaryActivation() if binary else nn.ReLU()

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            act(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            act(),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            act(),
            nn.Linear(120, 84),
            act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    def __init__(self, *, in_channels: int = 3, input_size: int = 32, num_classes: int = 10):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"vgg16 needs input_size a multiple of 32, got {input_size}")
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(c, int(v), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(inplace=True),
                ]
                c = int(v)
        self.features = nn.Sequential(*layers)
        side = input_size // 32
        self.classifier = nn.Linear(512 * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, *, in_channels: int = 3, input_size: int = 32, num_classes: int = 10):
        super().__init__()
        if input_size < 8:
            raise ValueError(f"resnet18 needs input_size >= 8, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.layers(out))
        return self.fc(torch.flatten(out, 1))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda *, in_channels, input_size, num_classes, in_features=None, hidden=None: mlp(
        in_features=in_features or in_channels * input_size * input_size,
        num_classes=num_classes,
        hidden=MLP_HIDDEN if hidden is None else hidden,
    ),
    "lenet5": lambda **kw: LeNet5(**kw),
    "lenet5_binary": lambda **kw: LeNet5(binary=True, **kw),
    "vgg16": lambda **kw: VGG16(**kw),
    "resnet18": lambda **kw: ResNet18(**kw),
}


def build(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    input_size: int = 8,
    in_features: int | None = None,
    hidden: list[int] | None = None,
) -> nn.Module:
    """Build architecture ``name`` for ``in_channels x input_size x input_size`` inputs (``mlp``: any input of
    ``in_features`` elements, layer widths ``hidden``) and ``num_classes`` outputs."""
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    if hidden is not None and name != "mlp":
        raise ValueError(f"hidden sizes apply to the mlp only, not to {name!r}")
    for field, v in (("in_channels", in_channels), ("input_size", input_size), ("num_classes", num_classes)):
        if v < 1:
            raise ValueError(f"{field} must be >= 1, got {v}")
    if name == "mlp":
        return ARCHITECTURES[name](
            in_channels=in_channels,
            input_size=input_size,
            num_classes=num_classes,
            in_features=in_features,
            hidden=hidden,
        )
    return ARCHITECTURES[name](in_channels=in_channels, input_size=input_size, num_classes=num_classes)


def build_for(
    name: str, sample_shape: tuple[int, ...], num_outputs: int, *, hidden: list[int] | None = None
) -> nn.Module:
    """Architecture ``name`` for samples of ``sample_shape``: the ``mlp`` takes any shape; the convolutional
    networks take ``(C, S, S)`` images."""
    if name == "mlp":
        return build(name, num_classes=num_outputs, in_features=math.prod(sample_shape), hidden=hidden)
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
        raise ValueError(f"{name} takes square images (C, S, S); the data's samples have shape {sample_shape}")
    return build(name, num_classes=num_outputs, in_channels=sample_shape[0], input_size=sample_shape[1], hidden=hidden)


def default_sparse_parameters(model: nn.Module) -> list[str]:
    """Names of every conv and linear weight (never biases or norm layers): what RVSM sparsifies by default."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear | nn.Conv1d):
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names
