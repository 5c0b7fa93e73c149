"""Tests for analysis.engine.networks: specs, loading, layer discovery, capture."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from analysis.engine import networks as N
from analysis.engine.demo_network import DEMO_LAYERS, build_demo_network, demo_network_target
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()

SMALL = (16, 16, 16, 16, 16)


class TwoConv(nn.Module):
    """A tiny model for loading tests."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 5, 3))
        self.head = nn.Linear(5, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def make_two_conv(num_classes: int = 3) -> TwoConv:
    return TwoConv(num_classes)


NOT_A_MODULE = 42


def returns_int() -> int:
    return 7


# ------------------------------------------------------------------ specs


def test_spec_round_trips_through_json() -> None:
    spec = N.NetworkSpec(
        N.NetworkKind.MODULE,
        "tests.engine.test_networks:make_two_conv",
        weights="/tmp/w.pt",
        kwargs={"num_classes": 3},
        input_size=(48, 64),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        class_names=("a", "b", "c"),
    )
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["kind"] == "module"
    assert N.NetworkSpec.from_dict(data) == spec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "torchvision", "target": ""}, "empty"),
        ({"kind": "torchvision", "target": "alexnet", "input_size": (0, 5)}, "input_size"),
        ({"kind": "torchvision", "target": "alexnet", "std": (1.0, 0.0, 1.0)}, "positive"),
        ({"kind": "torchscript", "target": "x.pt", "weights": "w.pt"}, "TorchScript"),
        ({"kind": "callable", "target": "no_colon"}, "pkg.mod:callable"),
        ({"kind": "keras", "target": "x"}, "is not a valid NetworkKind"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        N.NetworkSpec(**kwargs)


def test_normalize_images_uint8_and_float_agree() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    mean, std = (0.5, 0.2, 0.0), (0.5, 0.1, 1.0)
    out = N.normalize_images(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(N.normalize_images(images.float() / 255, mean, std), out)
    with pytest.raises(ValueError, match="channels"):
        N.normalize_images(images, (0.5,), (0.5,))


# ------------------------------------------------------------------ loading


def test_load_torchvision_architecture_without_weights() -> None:
    spec = N.NetworkSpec("torchvision", "alexnet", kwargs={"num_classes": 7})
    model = N.load_network(spec, device="cpu")
    assert not model.training
    assert model.classifier[-1].out_features == 7


def test_unknown_architecture_suggests_names() -> None:
    with pytest.raises(N.NetworkLoadError, match="unknown torchvision architecture 'resnet181'.*resnet18"):
        N.load_network(N.NetworkSpec("torchvision", "resnet181"), device="cpu")


def test_torchvision_weights_kwarg_is_refused() -> None:
    with pytest.raises(N.NetworkLoadError, match="downloads are disabled"):
        N.load_network(N.NetworkSpec("torchvision", "alexnet", kwargs={"weights": "DEFAULT"}), device="cpu")


def test_state_dict_checkpoint_and_module_prefix(tmp_path) -> None:
    torch.manual_seed(0)
    source = TwoConv()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    spec = N.NetworkSpec("callable", "tests.engine.test_networks:make_two_conv", weights=str(path))
    model = N.load_network(spec, device="cpu")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_plain_state_dict_under_model_key(tmp_path) -> None:
    source = build_demo_network(5, seed=1, widths=SMALL)
    path = tmp_path / "demo.pt"
    torch.save({"model": source.state_dict()}, path)
    spec = N.NetworkSpec(
        "callable",
        demo_network_target(),
        weights=str(path),
        kwargs={"num_classes": 5, "widths": list(SMALL)},
    )
    model = N.load_network(spec, device="cpu")
    x = torch.randn(2, 3, 48, 48)
    source.eval()
    torch.testing.assert_close(model(x), source(x))


def test_mismatched_state_dict_lists_keys(tmp_path) -> None:
    state = TwoConv().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    state["head.weight"] = torch.zeros(9, 5)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    spec = N.NetworkSpec("callable", "tests.engine.test_networks:make_two_conv", weights=str(path))
    with pytest.raises(N.NetworkLoadError) as info:
        N.load_network(spec, device="cpu")
    message = str(info.value)
    assert "1 missing key(s): head.bias" in message
    assert "1 unexpected key(s): extra.weight" in message
    assert "head.weight (file (9, 5), model (3, 5))" in message


def test_missing_and_unreadable_weights(tmp_path) -> None:
    spec = N.NetworkSpec("torchvision", "alexnet", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(N.NetworkLoadError, match="weights file not found"):
        N.load_network(spec, device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(N.NetworkLoadError, match="could not read"):
        N.load_state_dict_file(junk)
    listy = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(N.NetworkLoadError, match="not a state dict"):
        N.load_state_dict_file(listy)


@pytest.mark.parametrize(
    "target, message",
    [
        ("tests.engine.no_such_module:make", "cannot import module"),
        ("tests.engine.test_networks:no_such_callable", "callable not found"),
        ("tests.engine.test_networks:NOT_A_MODULE", "is not callable"),
        ("tests.engine.test_networks:returns_int", "not an nn.Module"),
    ],
)
def test_callable_errors(target: str, message: str) -> None:
    with pytest.raises(N.NetworkLoadError, match=message):
        N.load_network(N.NetworkSpec("callable", target), device="cpu")


def test_callable_failure_is_reported() -> None:
    spec = N.NetworkSpec("callable", "tests.engine.test_networks:make_two_conv", kwargs={"bogus": 1})
    with pytest.raises(N.NetworkLoadError, match="calling .* failed: TypeError"):
        N.load_network(spec, device="cpu")


def test_torchscript_loads_but_refuses_hooks(tmp_path) -> None:
    model = TwoConv().eval()
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), path)
    loaded = N.load_network(N.NetworkSpec("torchscript", str(path)), device="cpu")
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    assert N.is_torchscript(loaded)
    with pytest.raises(N.UnsupportedNetworkError, match="TorchScript"):
        N.discover_layers(loaded, (8, 8), "cpu")
    with pytest.raises(N.NetworkLoadError, match="TorchScript file not found"):
        N.load_network(N.NetworkSpec("torchscript", str(tmp_path / "missing.pt")), device="cpu")


# ------------------------------------------------------------------ layers


def test_discover_layers_demo_network() -> None:
    model = build_demo_network(4, seed=0, widths=SMALL).eval()
    layers = {info.name: info for info in N.discover_layers(model, (112, 112), "cpu")}
    assert [n for n in layers if n in DEMO_LAYERS] == list(DEMO_LAYERS)
    assert (layers["conv1"].channels, layers["conv1"].height, layers["conv1"].width) == (16, 56, 56)
    assert (layers["conv5"].height, layers["conv5"].width) == (13, 13)
    assert layers["conv5"].kind == N.LayerKind.BLOCK
    assert layers["conv5.conv"].kind == N.LayerKind.CONV
    assert layers["conv5.relu"].kind == N.LayerKind.ACTIVATION
    assert layers["pool5"].kind == N.LayerKind.POOL and layers["pool5"].height == 6
    assert "classifier" not in layers  # not a feature map
    assert model.training is False


def test_discover_layers_resnet_blocks_and_reused_modules() -> None:
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    layers = {info.name: info for info in N.discover_layers(model, (64, 64), "cpu")}
    assert (layers["layer4"].channels, layers["layer4"].height) == (512, 2)
    assert layers["layer3.1.conv2"].kind == N.LayerKind.CONV
    assert "layer1.0" in layers and layers["layer1.0"].kind == N.LayerKind.BLOCK
    # BasicBlock runs self.relu twice: each call site is its own layer (torchvision's node names)
    assert layers["layer1.0.relu"].kind == layers["layer1.0.relu_1"].kind == N.LayerKind.ACTIVATION
    names = list(layers)
    assert names.index("layer1.0.relu") < names.index("layer1.0.conv2") < names.index("layer1.0.relu_1")
    assert names.index("layer1.0.relu_1") < names.index("layer1.0")  # the block's output, inner name first
    only_conv = N.discover_layers(model, (64, 64), "cpu", kinds={N.LayerKind.CONV})
    assert {i.kind for i in only_conv} == {N.LayerKind.CONV} and len(only_conv) == 20


def test_discover_layers_hook_fallback_for_untraceable_models() -> None:
    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.conv(x))
            return self.relu(x) if x.sum() >= 0 else x

    model = Branchy().eval()
    assert not N.is_traceable(model)
    layers = {i.name: i for i in N.discover_layers(model, (8, 8), "cpu")}
    assert "conv" in layers and "relu" not in layers  # hooks: a module run twice is ambiguous
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(N.capture_forward(model, x, ["conv"])["conv"], model.conv(x))


def test_get_module_and_unknown_names() -> None:
    model = build_demo_network(4, widths=SMALL)
    assert isinstance(N.get_module(model, "conv3.conv"), nn.Conv2d)
    with pytest.raises(N.UnknownLayerError, match="no layer 'conv6'.*conv"):
        N.get_module(model, "conv6")
    with pytest.raises(N.UnknownLayerError):
        N.get_module(model, "")


@pytest.mark.parametrize("device", DEVICES)
def test_capture_layers_matches_manual_forward(device: str) -> None:
    model = build_demo_network(4, seed=0, widths=SMALL).to(device).eval()
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():
        with N.capture_layers(model, ["conv2", "conv2.conv", "pool5"]) as out:
            logits = model(x)
        expected_pre = model.conv2.conv(model.pool1(model.conv1(x)))
    torch.testing.assert_close(out["conv2.conv"], expected_pre)
    torch.testing.assert_close(out["conv2"], expected_pre.clamp_min(0))
    assert out["pool5"].shape == (2, 16, 3, 3)
    assert out["conv2"].device == x.device
    assert logits.shape == (2, 4)
    assert not model.conv2._forward_hooks  # hooks removed on exit


def test_capture_clone_protects_against_inplace_relu() -> None:
    import torchvision

    model = torchvision.models.alexnet(weights=None).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        out = N.capture_forward(model, x, ["features.0", "features.1"])
    assert (out["features.0"] < 0).any()  # pre-ReLU values survive the in-place ReLU
    torch.testing.assert_close(out["features.1"], out["features.0"].clamp_min(0))


def test_capture_forward_stops_early() -> None:
    model = build_demo_network(4, widths=SMALL).eval()
    ran: list[str] = []
    model.conv3.conv.register_forward_hook(lambda *_: ran.append("conv3"))
    with torch.no_grad():
        out = N.capture_forward(model, torch.randn(1, 3, 64, 64), ["conv1", "conv2"])
    assert list(out) == ["conv1", "conv2"] and ran == []
    with torch.no_grad():
        N.capture_forward(model, torch.randn(1, 3, 64, 64), ["conv1"], stop_early=False)
    assert ran == ["conv3"]


def test_capture_errors() -> None:
    model = build_demo_network(4, widths=SMALL).eval()
    with pytest.raises(N.UnknownLayerError, match="conv9"):
        with N.capture_layers(model, ["conv1", "conv9"]):
            pass
    assert not model.conv1._forward_hooks  # nothing left registered after the error
    with pytest.raises(N.UnknownLayerError, match="conv9"):
        N.capture_forward(model, torch.randn(1, 3, 32, 32), ["conv9"])


class SharedActivation(nn.Module):
    """One ReLU6 called at the stem and at the head, as in the EfficientNet-Lite package."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 6, 1)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.head(self.act(self.stem(x))))


class BlockTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))  # a block (traced through) called twice


def test_each_call_site_of_a_shared_module_is_its_own_layer() -> None:
    import torchvision

    model = SharedActivation().eval()
    layers = {i.name: i for i in N.discover_layers(model, (8, 8), "cpu")}
    assert (layers["act"].channels, layers["act_1"].channels) == (4, 6)
    x = torch.randn(2, 3, 8, 8) * 10
    with torch.no_grad():
        out = N.capture_forward(model, x, ["act", "act_1"])
        stem = model.stem(x).clamp(0, 6)
        torch.testing.assert_close(out["act"], stem)
        torch.testing.assert_close(out["act_1"], model.head(stem).clamp(0, 6))
    resnet = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = N.capture_forward(resnet, x, ["layer1.0.relu", "layer1.0.relu_1", "maxpool"])
        block = resnet.layer1[0]
        first = block.bn1(block.conv1(out["maxpool"])).clamp_min(0)
        torch.testing.assert_close(out["layer1.0.relu"], first)
        second = (block.bn2(block.conv2(first)) + out["maxpool"]).clamp_min(0)
        torch.testing.assert_close(out["layer1.0.relu_1"], second)
    traced = N.trace_network(BlockTwice())
    with pytest.raises(N.UnknownLayerError, match="runs 2 times"):
        traced.resolve("block")
    assert traced.resolve("block.1_1") is not traced.resolve("block.1")


def test_capture_keeps_gradients_when_asked() -> None:
    model = build_demo_network(4, widths=SMALL).eval()
    x = torch.randn(1, 3, 48, 48, requires_grad=True)
    out = N.capture_forward(model, x, ["conv2"], detach=False)["conv2"]
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_state_dict_hash_is_the_weights_identity(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    a = torchvision.models.resnet18(weights=None)
    b = torchvision.models.resnet18(weights=None)
    assert N.state_dict_sha256(a) != N.state_dict_sha256(b)  # one builder, other weights
    b.load_state_dict(a.state_dict())
    assert N.state_dict_sha256(a) == N.state_dict_sha256(b)  # same weights, however loaded
    path = tmp_path / "a.pth"
    torch.save(a.state_dict(), path)
    spec = N.NetworkSpec("torchvision", "resnet18", weights=str(path))
    assert N.state_dict_sha256(N.load_network(spec, device="cpu")) == N.state_dict_sha256(a)
    with torch.no_grad():
        b.fc.bias[0] += 1e-6
    assert N.state_dict_sha256(a) != N.state_dict_sha256(b)


def test_torchvision_preprocessing_defaults_and_channel_order() -> None:
    assert N.torchvision_preprocessing("resnet18") == {
        "input_size": (224, 224),
        "mean": N.IMAGENET_MEAN,
        "std": N.IMAGENET_STD,
    }
    assert N.torchvision_preprocessing("inception_v3")["input_size"] == (299, 299)
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    torch.testing.assert_close(
        N.normalize_images(images, mean, std, "BGR"), N.normalize_images(images.flip(1), mean, std)
    )
    with pytest.raises(ValueError, match="channel_order"):
        N.NetworkSpec("torchvision", "alexnet", channel_order="GBR")


def test_capture_runs_the_whole_network_when_asked() -> None:
    model = SharedActivation().eval()
    traced = N.trace_network(model)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        full = traced.extractor(["act"], full=True)(x)
        torch.testing.assert_close(full[""], model(x))
        assert "head" not in str(traced.extractor(["act"]).code)  # ends at the last requested layer
