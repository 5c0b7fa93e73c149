"""Registering networks from the command line: torchvision + local weights, module:callable, errors."""

import pytest
import torch
import torchvision
from django.core.management import call_command
from django.core.management.base import CommandError

from analysis.models import Layer, Network, Unit

pytestmark = pytest.mark.django_db


def test_register_torchvision_resnet18_with_a_local_weights_file(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    call_command(
        "register_network", "--name", "r18", "--arch", "resnet18", "--weights", str(weights), "--input-size", "128"
    )
    output = capsys.readouterr().out
    assert "registered network r18" in output and "layer3.1.conv2" in output
    network = Network.objects.get(name="r18")
    assert network.weights_sha256 and (network.input_height, network.input_width) == (128, 128)
    layer4 = Layer.objects.get(network=network, name="layer4")
    assert (layer4.units, layer4.out_height, layer4.rf_stride_y, layer4.rf_size_y) == (512, 4, 32, 435)
    assert layer4.rf_verified  # the analytic geometry equals the numeric probe
    assert Unit.objects.filter(layer=layer4).count() == 512
    dotted = Layer.objects.get(network=network, name="layer3.1.conv2")
    assert dotted.rf_verified and dotted.units == 256


def test_weights_that_do_not_fit_are_refused_with_the_keys_named(tmp_path):
    weights = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), weights)
    with pytest.raises(CommandError) as error:
        call_command("register_network", "--name", "bad", "--arch", "resnet18", "--weights", str(weights))
    assert "features.0.weight" in str(error.value) or "conv1.weight" in str(error.value)
    assert not Network.objects.exists()


def test_missing_weights_file_and_unknown_arch(tmp_path):
    with pytest.raises(CommandError, match="not found|No such file|does not exist"):
        call_command("register_network", "--name", "bad", "--arch", "resnet18", "--weights", str(tmp_path / "none.pth"))
    with pytest.raises(CommandError, match="resnet1234"):
        call_command("register_network", "--name", "bad", "--arch", "resnet1234")


def test_register_module_callable_demo_network(capsys):
    call_command(
        "register_network",
        "--name",
        "demo",
        "--module",
        "analysis.engine.demo_network:build_demo_network",
        "--kwargs",
        '{"num_classes": 5}',
        "--input-size",
        "112",
    )
    network = Network.objects.get(name="demo")
    names = list(network.layers.values_list("name", flat=True))
    assert {"conv1", "conv2", "conv3", "conv4", "conv5"} <= set(names)
    assert all(layer.rf_verified for layer in network.layers.filter(name__in=["conv1", "conv3", "conv5"]))


def test_torchscript_is_refused_with_a_clear_reason(tmp_path):
    scripted = torch.jit.script(torchvision.models.alexnet(weights=None))
    path = tmp_path / "alexnet.ts"
    scripted.save(str(path))
    with pytest.raises(CommandError) as error:
        call_command("register_network", "--name", "ts", "--torchscript", str(path))
    assert "TorchScript" in str(error.value) or "hook" in str(error.value)
