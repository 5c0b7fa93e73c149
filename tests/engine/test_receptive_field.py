"""Tests for analysis.engine.receptive_field: analytic geometry vs the numeric probe."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from analysis.engine.demo_network import DEMO_LAYERS, build_demo_network
from analysis.engine.receptive_field import (
    LayerGeometry,
    ReceptiveFieldError,
    check_receptive_fields,
    probe_receptive_field,
    receptive_field,
    receptive_fields,
    unit_boxes,
    unit_centers,
)
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()


# ------------------------------------------------------------------ hand-computed geometry


def test_single_conv_hand_computed() -> None:
    # k=3, s=2, p=1: unit 0 reads pixels -1..1, i.e. [-1, 2), centre 0.5; unit i centre 0.5 + 2i
    model = nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1))
    assert receptive_field(model, "0", (9, 9), "cpu") == LayerGeometry((3, 3), (2, 2), (0.5, 0.5))


def test_asymmetric_kernel_dilation_and_pool_hand_computed() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 2, (1, 5), padding=(0, 2)),  # y: 1, x: 5; centres unchanged
        nn.Conv2d(2, 2, 3, dilation=2),  # effective 5x5, no padding: centre moves +2 px
        nn.MaxPool2d(2),  # size +1, stride 2, centre +0.5
    )
    rf = receptive_fields(model, (20, 20), "cpu")
    assert rf["0"] == LayerGeometry((1, 5), (1, 1), (0.5, 0.5))
    assert rf["1"] == LayerGeometry((5, 9), (1, 1), (2.5, 2.5))
    assert rf["2"] == LayerGeometry((6, 10), (2, 2), (3.0, 3.0))


# ------------------------------------------------------------------ analytic == probe


@pytest.fixture(scope="module")
def alexnet() -> nn.Module:
    return torchvision.models.alexnet(weights=None).eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def vgg16_meta() -> nn.Module:
    # Geometry needs no weights: build on the meta device (no 500 MB of random weights).
    with torch.device("meta"):
        return torchvision.models.vgg16(weights=None).eval()


def test_known_published_sizes(alexnet: nn.Module) -> None:
    rf = receptive_fields(alexnet, (224, 224), "cpu")
    assert rf["features.10"].size == (163, 163) and rf["features.12"].size == (195, 195)
    assert rf["features.12"].stride == (32, 32)


def _check_against_probe(
    model: nn.Module,
    layers: list[str],
    analytic_size: tuple[int, int],
    analytic_device: str,
    probe_size: tuple[int, int],
) -> None:
    analytic = receptive_fields(model, analytic_size, analytic_device, layers=layers)
    assert list(analytic) == layers
    for name in layers:
        probed = probe_receptive_field(model, name, probe_size, "cpu")
        assert probed == analytic[name], name


def test_alexnet_features_match_probe(alexnet: nn.Module) -> None:
    layers = [f"features.{i}" for i in range(13)]
    _check_against_probe(alexnet, layers, (224, 224), "cpu", (224, 224))


def test_vgg16_conv_layers_match_probe(vgg16_meta: nn.Module) -> None:
    layers = ["features.0", "features.5", "features.12", "features.21", "features.28", "features.30"]
    _check_against_probe(vgg16_meta, layers, (64, 64), "meta", (320, 320))
    assert receptive_field(vgg16_meta, "features.28", (64, 64), "meta").size == (196, 196)


def test_resnet18_blocks_match_probe(resnet18: nn.Module) -> None:
    layers = ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4", "layer3.1.conv2"]
    _check_against_probe(resnet18, layers, (64, 64), "cpu", (320, 320))
    assert receptive_field(resnet18, "layer4", (64, 64), "cpu") == LayerGeometry((435, 435), (32, 32), (0.5, 0.5))


def test_demo_network_matches_probe_both_probe_modes() -> None:
    model = build_demo_network(4, seed=0, widths=(8, 8, 8, 8, 8)).eval()
    layers = [*DEMO_LAYERS, "pool5"]
    analytic = receptive_fields(model, (112, 112), "cpu", layers=layers)
    for name in layers:
        assert probe_receptive_field(model, name, (112, 112), "cpu") == analytic[name], name
        full = probe_receptive_field(model, name, (112, 112), "cpu", collapse_channels=False)
        assert full == analytic[name], name
    # post-ReLU block, its conv and its ReLU share the geometry
    rf = receptive_fields(model, (112, 112), "cpu")
    assert rf["conv5"] == rf["conv5.conv"] == rf["conv5.relu"]
    assert rf["conv5"] == LayerGeometry((81, 81), (8, 8), (6.5, 6.5))


class Branchy(nn.Module):
    """Functional pooling and conv, branches with different centres, a channel concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3))
        self.left = nn.Conv2d(4, 4, 5, padding=0)  # shrinks by 4, centre +2
        self.right = nn.Conv2d(4, 4, 1)
        self.fuse = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = F.conv2d(x, self.weight, padding=2, dilation=2)
        left = self.left(x)
        right = self.right(x)[:, :, 2:-2, 2:-2]  # crop: not a supported op
        both = torch.cat([left, self.left(x)], dim=1)
        return self.fuse(both) + 0.5 * F.avg_pool2d(both, 3, stride=2, padding=1)[:, :4] + right.mean()


def test_functional_ops_and_concat_match_probe() -> None:
    model = Branchy().eval()
    rf = receptive_fields(model, (64, 64), "cpu")
    assert "stem" in rf and "right" in rf
    assert rf["left"] == rf["left_1"]  # called twice per forward: two call sites, one geometry here
    stem = receptive_field(model, "stem", (64, 64), "cpu")
    assert stem == probe_receptive_field(model, "stem", (64, 64), "cpu")
    assert rf["fuse"] == probe_receptive_field(model, "fuse", (96, 96), "cpu")


class Union(nn.Module):
    """Two branches whose unit 0 sees different pixels, joined by addition."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3)  # unit 0 reads pixels 0..2
        # shift right/down by 2 (negative padding crops): unit 0 reads pixels -2..0
        self.b = nn.Sequential(nn.ZeroPad2d((2, -2, 2, -2)), nn.Conv2d(3, 2, 3))
        self.join = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.join(self.a(x) + self.b(x))


def test_union_rule_hand_computed() -> None:
    model = Union().eval()
    rf = receptive_fields(model, (16, 16), "cpu")
    assert rf["a"] == LayerGeometry((3, 3), (1, 1), (1.5, 1.5))
    assert rf["b"] == LayerGeometry((3, 3), (1, 1), (-0.5, -0.5))
    # union of [0, 3) and [-2, 1): [-2, 3)
    assert rf["join"] == LayerGeometry((5, 5), (1, 1), (0.5, 0.5))
    assert probe_receptive_field(model, "join", (16, 16), "cpu") == rf["join"]


def test_slicing_is_unsupported() -> None:
    class Crop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.out = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.conv(x)[:, :, 1:-1, 1:-1])

    with pytest.raises(ReceptiveFieldError, match="no receptive field for layer 'out'.*getitem"):
        receptive_field(Crop().eval(), "out", (16, 16), "cpu")


class Shuffle(nn.Module):
    """ShuffleNet-style layout ops: chunk, channel shuffle by view + transpose, channel indexing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.unsqueeze(x[:, 0], 1) * 0.5 + x  # channel indexing, as transform_input does
        a, b = self.stem(x).chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(x)


def test_layout_ops_keep_geometry_and_match_probe() -> None:
    model = Shuffle().eval()
    rf = receptive_fields(model, (32, 32), "cpu")
    assert rf["head"] == probe_receptive_field(model, "head", (64, 64), "cpu")
    # stem: 3 px, jump 2, centre 0.5; branch: 7 px; head (k3 s2 p0): 7 + 2*2 = 11 px, centre 0.5 + 2
    assert rf["head"] == LayerGeometry((11, 11), (4, 4), (2.5, 2.5))


# ------------------------------------------------------------------ errors


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.gate = nn.Sigmoid()
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.out(y * self.gate(self.pool(y)))


class GlobalBias(SqueezeExcite):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.out(y + self.pool(y))  # adding a global value: not a channel gate


def test_unsupported_ops_are_reported_not_guessed() -> None:
    model = SqueezeExcite().eval()
    rf = receptive_fields(model, (16, 16), "cpu")
    assert rf["out"] == rf["conv"]  # a squeeze-excitation gate is the identity for geometry
    assert rf["pool"].size == (18, 18)  # global pooling of a 3x3 field over 16 px
    model = GlobalBias().eval()
    assert "out" not in receptive_fields(model, (16, 16), "cpu")
    with pytest.raises(ReceptiveFieldError, match="broadcasts.*global"):
        receptive_field(model, "out", (16, 16), "cpu")


def test_probe_input_too_small_is_an_error(resnet18: nn.Module) -> None:
    with pytest.raises(ReceptiveFieldError, match="larger input_size"):
        probe_receptive_field(resnet18, "layer4", (128, 128), "cpu")
    with pytest.raises(ReceptiveFieldError, match="larger input_size"):
        probe_receptive_field(resnet18, "layer4", None, "cpu", max_input_size=128)


def test_probe_picks_its_input_size(vgg16_meta: nn.Module) -> None:
    expected = receptive_field(vgg16_meta, "features.30", (64, 64), "meta")
    assert probe_receptive_field(vgg16_meta, "features.30", None, "cpu") == expected


def test_torchscript_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3)))
    with pytest.raises(ReceptiveFieldError, match="TorchScript"):
        receptive_fields(scripted, (8, 8), "cpu")
    with pytest.raises(ReceptiveFieldError, match="TorchScript"):
        probe_receptive_field(scripted, "0", (8, 8), "cpu")


# ------------------------------------------------------------------ centres and boxes


GEOMETRY = LayerGeometry(size=(11, 7), stride=(4, 2), offset=(3.5, 1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_unit_centers(device: str) -> None:
    cy, cx = unit_centers(GEOMETRY, 3, 4, device=device)
    assert cy.device.type == torch.device(device).type and cy.dtype == torch.float32
    assert cy.tolist() == [3.5, 7.5, 11.5]
    assert cx.tolist() == [1.0, 3.0, 5.0, 7.0]


@pytest.mark.parametrize("device", DEVICES)
def test_unit_boxes_match_naive_loop(device: str) -> None:
    out_h, out_w = 3, 4
    boxes = unit_boxes(GEOMETRY, out_h, out_w, device=device)
    assert boxes.shape == (out_h * out_w, 4) and boxes.device.type == torch.device(device).type
    expected = []
    for i in range(out_h):
        for j in range(out_w):
            cy = GEOMETRY.offset[0] + i * GEOMETRY.stride[0]
            cx = GEOMETRY.offset[1] + j * GEOMETRY.stride[1]
            h, w = GEOMETRY.size
            expected.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    torch.testing.assert_close(boxes.cpu(), torch.tensor(expected))
    clipped = unit_boxes(GEOMETRY, out_h, out_w, device=device, clip_to=(12, 8)).cpu()
    assert clipped[:, 0::2].min() >= 0 and clipped[:, 0::2].max() <= 8
    assert clipped[:, 1::2].min() >= 0 and clipped[:, 1::2].max() <= 12
    assert clipped[0].tolist() == [0.0, 0.0, 4.5, 9.0]


def test_boxes_are_pixel_aligned_for_a_real_layer(alexnet: nn.Module) -> None:
    geometry = receptive_field(alexnet, "features.0", (224, 224), "cpu")
    boxes = unit_boxes(geometry, 2, 2, device="cpu")
    # unit (0, 0) of conv1 reads pixels -2..8, i.e. the edges [-2, 9)
    assert boxes[0].tolist() == [-2.0, -2.0, 9.0, 9.0]
    assert torch.equal(boxes, boxes.round())


def test_geometry_dict_round_trip() -> None:
    assert LayerGeometry.from_dict(GEOMETRY.to_dict()) == GEOMETRY


# ------------------------------------------------------------------ modern blocks and the sampled check


class SamePadConv(nn.Conv2d):
    """TensorFlow-style static SAME padding: a Conv2d subclass holding a ZeroPad2d (as the
    EfficientNet-Lite package builds its convs)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, image: int = 32) -> None:
        super().__init__(cin, cout, k, stride, groups=groups, bias=False)
        out = -(-image // stride)
        pad = max((out - 1) * stride + k - image, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, None, self.stride, 0, self.dilation, self.groups)


class MobileBlocks(nn.Module):
    """SAME-padding stem, an inverted residual (expand, depthwise, SE gate, project, skip), a dilated
    grouped conv, one ReLU6 shared by stem and head, global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SamePadConv(3, 8, 3, stride=2, image=32)
        self.bn0 = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.expand = nn.Conv2d(8, 16, 1)
        self.depthwise = SamePadConv(16, 16, 5, stride=1, groups=16, image=16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.project = nn.Conv2d(16, 8, 1)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.head = nn.Conv2d(8, 12, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.stem(x)))
        y = F.silu(self.depthwise(F.silu(self.expand(x))))
        y = y * torch.sigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))))
        x = x + self.project(y)
        x = self.act(self.head(F.relu(self.dilated(x))))
        return self.pool(x).flatten(1)


def test_same_padding_depthwise_dilated_se_and_shared_activation() -> None:
    model = MobileBlocks().eval()
    rf = receptive_fields(model, (32, 32), "cpu")
    # stem: k3 s2, SAME pads (0, 1) at 32 px -> unit 0 reads pixels 0..2
    assert rf["stem"] == rf["act"] == LayerGeometry((3, 3), (2, 2), (1.5, 1.5))
    # depthwise k5 s1 (SAME pads 2 each side) on stride 2: +8 px; centre unchanged
    assert rf["depthwise"] == LayerGeometry((11, 11), (2, 2), (1.5, 1.5))
    assert rf["add"] == rf["depthwise"]  # SE gate is the identity; the skip is inside the field
    # dilated k3 d2 (effective 5) on stride 2: +8 px
    assert rf["dilated"] == LayerGeometry((19, 19), (2, 2), (1.5, 1.5))
    assert rf["act_1"] == rf["head"] == rf["dilated"]  # the shared ReLU6's second call site
    checks = check_receptive_fields(model, rf, (32, 32), "cpu")
    assert all(checks[name].verified for name in ("stem", "act", "depthwise", "add", "dilated", "act_1")), checks
    assert checks["pool"].verified is None and "1x1" in checks["pool"].detail


def test_sampled_check_catches_a_wrong_geometry() -> None:
    model = MobileBlocks().eval()
    right = receptive_fields(model, (32, 32), "cpu", layers=["depthwise"])["depthwise"]
    wrong = LayerGeometry((right.size[0] - 4, right.size[1] - 4), right.stride, right.offset)
    checks = check_receptive_fields(model, {"depthwise": right, "depthwise.conv2d": wrong}, (32, 32), "cpu")
    assert checks["depthwise"].verified is True
    assert checks["depthwise.conv2d"].verified is False and "expected" in checks["depthwise.conv2d"].detail


@pytest.mark.parametrize(
    ("arch", "layer", "expected"),
    [
        # well-known theoretical receptive fields at 224 px
        ("resnet18", "layer4", LayerGeometry((435, 435), (32, 32), (0.5, 0.5))),
        ("resnet18", "layer1.0.relu_1", LayerGeometry((27, 27), (4, 4), (0.5, 0.5))),  # 7, pool 11, 19, 27
        ("alexnet", "features.12", LayerGeometry((195, 195), (32, 32), (31.5, 31.5))),
        ("vgg16", "features.30", LayerGeometry((212, 212), (32, 32), (16.0, 16.0))),
    ],
)
def test_torchvision_receptive_fields_are_the_known_values(arch: str, layer: str, expected: LayerGeometry) -> None:
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None).eval()
    assert receptive_field(model, layer, (224, 224), "meta") == expected
