"""The demo network: a small AlexNet-like CNN that trains on CPU in minutes.

Layout for the default 112 x 112 RGB input (``[B, 3, 112, 112]`` float, normalised)::

    conv1  5x5 stride 2 pad 2, 48 ch  -> 56 x 56      (conv1.conv, then conv1.relu)
    pool1  3x3 max, stride 2         -> 27 x 27
    conv2  5x5 pad 2, 96 ch           -> 27 x 27
    pool2  3x3 max, stride 2         -> 13 x 13
    conv3  3x3 pad 1, 128 ch          -> 13 x 13
    conv4  3x3 pad 1, 128 ch          -> 13 x 13
    conv5  3x3 pad 1, 128 ch          -> 13 x 13
    pool5  3x3 max, stride 2         -> 6 x 6
    avgpool adaptive to 6 x 6 (the identity at 112 px; lets smaller inputs run)
    classifier: flatten, dropout, linear 4608 -> 256, ReLU, dropout, linear 256 -> num_classes

It is AlexNet's conv2..pool5 geometry at half the input resolution (conv5 maps are 13 x 13 as in
AlexNet at 227 px) with a cheaper first layer; no batch norm, as the design asks.

Naming (my choice): each ``convK`` is a :class:`ConvReLU` block with children ``conv`` and
``relu``, so the dotted name ``convK`` is the *post-ReLU* map that unit studies use,
``convK.conv`` the pre-ReLU map, and the receptive field of ``convK`` is that of its conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_WIDTHS",
    "DEMO_INPUT_SIZE",
    "DEMO_LAYERS",
    "ConvReLU",
    "DemoNet",
    "build_demo_network",
    "demo_network_target",
]

DEFAULT_WIDTHS: tuple[int, int, int, int, int] = (48, 96, 128, 128, 128)
DEMO_INPUT_SIZE: tuple[int, int] = (112, 112)
DEMO_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")


class ConvReLU(nn.Module):
    """``Conv2d`` followed by a (not in-place) ``ReLU``; the block's output is post-ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x))


class DemoNet(nn.Module):
    """Five conv layers ``conv1``..``conv5`` (post-ReLU outputs), max pooling after conv1, conv2
    and conv5, no batch norm, a two-layer classifier.

    Args:
        num_classes: number of logits.
        widths: output channels of conv1..conv5 (default 48, 96, 128, 128, 128).
        hidden: width of the classifier's hidden layer.
        dropout: dropout probability in the classifier (my choice 0.3: the demo set is small).

    Input ``float32 [B, 3, H, W]`` (112 x 112 by default; anything >= 29 px runs), output
    ``float32 [B, num_classes]`` logits.
    """

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        *,
        hidden: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths must give 5 channel counts, got {tuple(widths)}")
        if num_classes < 1:
            raise ValueError("num_classes must be positive")
        w1, w2, w3, w4, w5 = (int(w) for w in widths)
        self.widths = (w1, w2, w3, w4, w5)
        self.num_classes = int(num_classes)
        self.conv1 = ConvReLU(3, w1, 5, stride=2, padding=2)
        self.pool1 = nn.MaxPool2d(3, stride=2)
        self.conv2 = ConvReLU(w1, w2, 5, padding=2)
        self.pool2 = nn.MaxPool2d(3, stride=2)
        self.conv3 = ConvReLU(w2, w3, 3, padding=1)
        self.conv4 = ConvReLU(w3, w4, 3, padding=1)
        self.conv5 = ConvReLU(w4, w5, 3, padding=1)
        self.pool5 = nn.MaxPool2d(3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(w5 * 36, hidden),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool5(self.conv5(self.conv4(self.conv3(x))))
        return self.classifier(self.avgpool(x))


def _init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-normal (fan_in, ReLU gain) weights, zero biases; the last linear layer gets a
    small normal init (std 0.01) so initial logits are near zero."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if linears and m is linears[-1]:
                    nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    m.bias.zero_()


def build_demo_network(
    num_classes: int, seed: int = 0, widths: Sequence[int] = DEFAULT_WIDTHS, **kwargs: float
) -> DemoNet:
    """A :class:`DemoNet` on CPU, float32, initialised from ``seed`` alone (a private
    ``torch.Generator``; the global RNG is neither used nor changed). Extra keyword arguments
    (``hidden``, ``dropout``) go to :class:`DemoNet`."""
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG
        model = DemoNet(num_classes, widths, **kwargs)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    _init_weights(model, generator)
    return model


def demo_network_target() -> str:
    """The ``"pkg.mod:callable"`` string that builds the demo network, for a ``NetworkSpec`` of
    kind ``callable`` (with ``kwargs={"num_classes": n}`` and the trained weights file)."""
    return f"{__name__}:build_demo_network"
