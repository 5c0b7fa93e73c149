"""Network Dissection runs against the database, on a tiny probe world: the service equals the naive reference,
shards merge exactly, the null baselines behave, export files are exact, the pages render for researchers only."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.urls import reverse
from torch import nn

from analysis import selectors
from analysis.engine.demo_network import demo_network_target
from analysis.engine.dissection import BatchLabels, DissectionTally
from analysis.engine.dissection_sparse import (
    AnchoredUpsample,
    PlainUpsample,
    prepare_labels,
    tally_add_active,
    tally_add_sparse,
)
from analysis.engine.networks import NetworkKind, NetworkSpec
from analysis.engine.upsample import upsample_anchored, upsample_plain
from analysis.models import Concept, LayerDissection, LayerExtraction, RotationTest, Run, RunStatus, UnitDissection
from analysis.services.dissection import dissection_run_start, dissection_tally_load, rotation_run_start
from analysis.services.extraction import open_activation_cache
from analysis.services.networks import network_register
from analysis.services.runs import RunInputError
from analysis.storage import local_path
from benchmarks.dissection_reference import reference_iou, reference_tally
from tests.worlds import probe_world_register

pytestmark = pytest.mark.django_db
SIZE = 64  # images (masks are half: 32 x 32); the networks take 112 px, so the extraction resizes
INPUT = (112, 112)
COUNTS = ("intersection", "activation_cat", "truth", "activation", "category_images", "label_images")


class PlantedNet(nn.Module):
    """A network with known units: ``conv`` is a 1×1 convolution with hand-set weights (unit 0 fires on red
    pixels, unit 1 is dead, units 2 and 3 on blue and green), ``pool`` averages 4×4 blocks (28×28 maps)."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.tensor([[1.0, -0.5, -0.5], [0.0, 0.0, 0.0], [-0.5, -0.5, 1.0], [-0.5, 1.0, -0.5]]).view(
                    4, 3, 1, 1
                )
            )
            self.conv.bias.copy_(torch.tensor([-1.0, -1.0, -1.0, -1.0]))

    def forward(self, x):
        return self.head(self.pool(self.relu(self.conv(x))))


def planted_network(num_classes: int = 7) -> nn.Module:
    torch.manual_seed(0)  # the head's weights: the same on every build (registration checks it)
    return PlantedNet(num_classes).eval()


@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker, probe_world_files):
    """Built once for the module (committed, outside the tests' rolled-back transactions) and deleted after it:
    the tiny probe world, the seeded demo network and the planted network, and their extractions (conv5, pool)."""
    from analysis.models import Dataset, Network
    from analysis.services.extraction import extraction_run_start

    with django_db_blocker.unblock():
        first_run = (Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
        world = {"n_images": 36, "size": SIZE, "seed": 5}
        probe_world_register(name="tiny", root=probe_world_files(**world), **world)
        for name, target in (("seeded", demo_network_target()), ("planted", f"{__name__}:planted_network")):
            network_register(
                name=name,
                spec=NetworkSpec(
                    kind=NetworkKind.MODULE,
                    target=target,
                    kwargs={"num_classes": 7},
                    input_size=INPUT,
                    mean=(0.5, 0.5, 0.5),
                    std=(0.25, 0.25, 0.25),
                ),
            )
        for network, layer in (("seeded", "conv5"), ("planted", "pool")):
            extraction = extraction_run_start(
                network=network, dataset="tiny", layers=[layer], batch_size=36, inline=True
            )
            assert extraction.status == RunStatus.SUCCEEDED, extraction.error + extraction.error_detail
        yield
        Network.objects.filter(name__in=["seeded", "planted"]).delete()
        Dataset.objects.filter(name="tiny").delete()
        Run.objects.filter(pk__gte=first_run).delete()


@pytest.fixture
def world(shared_world, db):
    from analysis.models import Network

    network = Network.objects.get(name="seeded")
    assert network.layers.get(name="conv5").rf_stride_y == 8  # geometry known: anchored upsampling applies
    return network


def dissect(**overrides) -> Run:
    params = {"network": "seeded", "dataset": "tiny", "layer": "conv5", **overrides}
    run = dissection_run_start(inline=True, **params)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    return run


def reference_inputs(dissection: LayerDissection):
    """Masks read straight from the Broden files (independently of the service's loader) and the label table."""
    from analysis.engine.broden import BrodenReader

    reader = BrodenReader(dissection.dataset.root)
    pixel, image_labels = [], []
    for position, row in enumerate(reader.rows()):
        segmentation = reader.load_segmentation(row)
        layers = [entry.layers for entry in segmentation.values() if entry.layers.shape[0]]
        pixel.append(np.concatenate(layers))
        image_labels += [(position, label) for entry in segmentation.values() for label in entry.image_labels]
    depth = max(stack.shape[0] for stack in pixel)
    padded = np.zeros((len(pixel), depth, *pixel[0].shape[1:]), dtype=np.int64)
    for position, stack in enumerate(pixel):
        padded[position, : stack.shape[0]] = stack
    concepts = dict(Concept.objects.filter(dataset=dissection.dataset).values_list("number", "category"))
    label_category = np.full(max(concepts) + 1, -1, dtype=np.int64)
    for number, category in concepts.items():
        label_category[number] = dissection.categories.index(category)
    return padded, image_labels, label_category


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_tally_equals_the_dense_tally_and_the_reference(seed, monkeypatch):
    """The runs' sparse path (only pixels that can pass T are upsampled) gives the dense engine's and the naive
    reference's counts exactly, on data that exercises every label rule: out-of-study ids, pixel labels that
    repeat a whole-image label, one label in several layers, negative maps and a unit that is 0 almost everywhere
    (T = 0: active everywhere under >=)."""
    gen = torch.Generator().manual_seed(seed)
    n, units, size = 7, 5, (13, 11)
    raw = torch.randn((n, units, 5, 4), generator=gen)
    raw[:, 4] = torch.relu(raw[:, 4] - 2.8)  # mostly zero
    label_category = torch.tensor([-1, 0, 0, 1, 1, 2, 2, -1, 3, 3])
    pixel = torch.randint(0, 10, (n, 3, *size), generator=gen)
    pixel[:, 2] = torch.where(torch.rand((n, *size), generator=gen) < 0.6, 0, pixel[:, 2])
    image = torch.tensor([[0, 8], [1, 9], [1, 3], [3, 8], [5, 7], [6, 2], [6, 2]])
    labels = BatchLabels(pixel, image)
    thresholds = torch.from_numpy(
        np.quantile(raw.transpose(0, 1).reshape(units, -1).numpy(), 0.97, axis=1).astype(np.float32)
    )
    assert thresholds[4] == 0
    prepared = prepare_labels(labels, label_category, 4)
    # When candidates are too dense a batch takes the dense path (forced here), with the same counts.
    monkeypatch.setattr("analysis.engine.dissection_sparse.DENSE_FALLBACK_FRACTION", 0.0)
    fallback = DissectionTally(thresholds, label_category, 4)
    used_sparse = tally_add_sparse(
        fallback, raw, labels, AnchoredUpsample(rf_stride=(2.4, 2.9), rf_offset=(1.3, 0.7), input_size=(26, 22))
    )
    monkeypatch.setattr("analysis.engine.dissection_sparse.DENSE_FALLBACK_FRACTION", float("inf"))  # force sparse
    for upsample in (
        AnchoredUpsample(rf_stride=(2.4, 2.9), rf_offset=(1.3, 0.7), input_size=(26, 22)),
        PlainUpsample(),
    ):
        up = upsample(raw, size)
        for strict in (False, True):
            dense = DissectionTally(thresholds, label_category, 4, strict_threshold=strict)
            dense.add(up, labels)
            sparse = DissectionTally(thresholds, label_category, 4, strict_threshold=strict)
            for part in (slice(0, 3), slice(3, n)):  # two batches
                part_labels = BatchLabels(
                    pixel[part],
                    image[(image[:, 0] >= part.start) & (image[:, 0] < part.stop)] - torch.tensor([part.start, 0]),
                )
                active = upsample.active(raw[part], thresholds, size, strict=strict)
                assert active is not None
                tally_add_active(sparse, active, part_labels)
            shared = DissectionTally(thresholds, label_category, 4, strict_threshold=strict)
            tally_add_active(shared, upsample.active(raw, thresholds, size, strict=strict), prepared)
            expected = reference_tally(
                up.numpy(), thresholds.numpy(), pixel.numpy(), image.tolist(), label_category.numpy(), 4, strict=strict
            )
            for name in COUNTS:
                assert torch.equal(getattr(sparse, name), getattr(dense, name)), (type(upsample), strict, name)
                assert torch.equal(getattr(shared, name), getattr(dense, name)), (type(upsample), strict, name)
                assert np.array_equal(getattr(dense, name).numpy(), expected[name]), (type(upsample), strict, name)
            assert (sparse.images, sparse.pixels) == (dense.images, dense.pixels) == (n, n * size[0] * size[1])
            if isinstance(upsample, AnchoredUpsample) and not strict:
                assert not used_sparse and all(torch.equal(getattr(fallback, k), getattr(dense, k)) for k in COUNTS)
            # the near-dead unit: under >= active everywhere, under > only where it is positive
            dead_active = int(dense.activation[4])
            assert (dead_active < dense.pixels // 10) if strict else dead_active == dense.pixels


def test_dissection_equals_the_naive_reference_and_the_command_prints_its_id(world):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "dissect", "--network", "seeded", "--dataset", "tiny", "--layer", "conv4", "--inline", stdout=out, stderr=err
    )
    run = Run.objects.get(pk=int(out.getvalue().strip()))
    assert run.kind == "dissect" and run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    dissection = LayerDissection.objects.get(run=run)
    # conv4 had no extraction: the dissection ran one first and used its cache and thresholds.
    extraction = LayerExtraction.objects.get(layer__name="conv4", layer__network=world)
    assert dissection.extraction == extraction and extraction.run.kind == "extract"
    assert run.result["extraction_run"] == extraction.run_id and dissection.complete

    maps = np.asarray(open_activation_cache(extraction), dtype=np.float32)  # [36, 128, 13, 13]
    assert maps.shape == (36, 128, 13, 13)
    thresholds = np.quantile(maps.transpose(1, 0, 2, 3).reshape(128, -1), 0.995, axis=1).astype(np.float32)
    stored = dissection_tally_load(dissection)
    assert np.array_equal(stored["thresholds"], thresholds)
    layer, network = dissection.layer, world
    upsampled = upsample_anchored(
        torch.from_numpy(maps),
        (SIZE // 2, SIZE // 2),
        rf_stride=(layer.rf_stride_y, layer.rf_stride_x),
        rf_offset=(layer.rf_offset_y, layer.rf_offset_x),
        input_size=(network.input_height, network.input_width),
    ).numpy()
    pixel, image_labels, label_category = reference_inputs(dissection)
    expected = reference_tally(upsampled, thresholds, pixel, image_labels, label_category, len(dissection.categories))
    for name in COUNTS:
        assert np.array_equal(stored[name], expected[name]), name
    iou = reference_iou(expected, label_category)
    assert np.array_equal(stored["iou"], iou)
    assert stored["intersection"].sum() > 0 and int(stored["pixels"]) == 36 * (SIZE // 2) ** 2

    # Per-unit rows: the label is the top concept (ties to the lower id), a detector when IoU > 0.04.
    best = iou.max(axis=1)
    results = {
        result.unit.index: result
        for result in UnitDissection.objects.filter(dissection=dissection).select_related("unit", "concept")
    }
    assert len(results) == 128
    for unit, result in results.items():
        assert result.iou == best[unit]
        assert (result.concept.number if result.concept else -1) == (
            int(np.argmax(iou[unit])) if best[unit] > 0 else -1
        )
        assert result.is_detector == (best[unit] > 0.04 and not result.saturated)
        assert [concept["iou"] for concept in result.top_concepts] == sorted(iou[unit][iou[unit] > 0], reverse=True)[:5]
    detectors = [result for result in results.values() if result.is_detector]
    assert dissection.n_detectors == len(detectors) > 0
    assert dissection.n_unique_detectors == len({result.concept_id for result in detectors})
    assert sum(entry["detectors"] for entry in dissection.per_category.values()) == len(detectors)
    # An identical request reuses the finished run.
    assert dissection_run_start(network="seeded", dataset="tiny", layer="conv4").pk == run.pk


def test_two_shards_equal_one(world):
    one = LayerDissection.objects.get(run=dissect(upsample="plain"))
    run = dissect(upsample="plain", shards=2)
    two = LayerDissection.objects.get(run=run)
    shard_runs = Run.objects.filter(pk__in=run.result["shard_runs"]).order_by("pk")
    assert [shard.kind for shard in shard_runs] == ["dissect_shard", "dissect_shard"]
    assert [shard.params["start"] for shard in shard_runs] == [0, 18]
    assert all(shard.status == RunStatus.SUCCEEDED for shard in shard_runs)
    assert [shard.result["merged_here"] for shard in shard_runs] == [False, True]  # the last one merged
    # the run pages' links between a dissection and its shards
    assert selectors.run_shards_of(run) == list(shard_runs) and selectors.run_shards_of(shard_runs[0]) == []
    assert all(selectors.run_shard_parent(shard) == run for shard in shard_runs)
    a, b = dissection_tally_load(one), dissection_tally_load(two)
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    folder = local_path(two.directory)
    assert folder.is_dir() and not list(folder.glob("shard-*.npz"))  # partial counts removed once merged

    def rows(dissection):
        return list(dissection.unit_results.order_by("unit__index").values_list("concept", "iou", "is_detector"))

    assert rows(one) == rows(two)
    # The plain resize is F.interpolate: the counts equal the reference on plainly resized maps.
    maps = torch.from_numpy(np.asarray(open_activation_cache(one.extraction), dtype=np.float32))
    pixel, image_labels, label_category = reference_inputs(one)
    expected = reference_tally(
        upsample_plain(maps, (SIZE // 2, SIZE // 2)).numpy(),
        a["thresholds"],
        pixel,
        image_labels,
        label_category,
        len(one.categories),
    )
    assert np.array_equal(a["intersection"], expected["intersection"])


def test_shuffled_masks_undo_the_planted_detections_and_saturated_units_are_not_detectors(shared_world, db):
    real = LayerDissection.objects.get(run=dissect(network="planted", layer="pool"))
    shuffled = LayerDissection.objects.get(run=dissect(network="planted", layer="pool", baseline="shuffled"))
    results = {r.unit.index: r for r in real.unit_results.select_related("unit", "concept")}
    # Units 0, 2 and 3 fire on reddish, bluish and greenish pixels: with their own images' masks they detect.
    assert all(results[unit].is_detector and results[unit].iou > 0.09 for unit in (0, 2, 3))
    assert results[0].concept.category == "color"
    # Against other images' masks every one of these unit–concept detections falls below chance level 0.04.
    real_iou, shuffled_iou = dissection_tally_load(real)["iou"], dissection_tally_load(shuffled)["iou"]
    for unit in (0, 2, 3):
        number = results[unit].concept.number
        assert shuffled_iou[unit, number] < 0.04 and shuffled_iou[unit, number] < real_iou[unit, number] / 2
    assert shuffled.n_detectors < real.n_detectors
    assert not shuffled.unit_results.filter(
        is_detector=True, concept__in=[r.concept for r in results.values() if r.is_detector]
    ).exists()
    # Unit 1 is dead: T = 0, so under S >= T its mask is every pixel. It keeps its (high) IoU but is no detector.
    dead = results[1]
    assert dead.threshold == 0 and dead.saturated and not dead.is_detector and dead.iou > 0.04
    assert dead.active_pixels == real.mask_pixels and real.n_saturated == 1
    # With the published code's strict S > T the dead unit is never active.
    strict = LayerDissection.objects.get(run=dissect(network="planted", layer="pool", strict_threshold=True))
    dead = strict.unit_results.get(unit__index=1)
    assert dead.active_pixels == 0 and not dead.saturated and dead.concept is None and dead.iou == 0


def test_rotation_alpha_zero_reproduces_the_unrotated_counts(world):
    dissection = LayerDissection.objects.get(run=dissect())
    run = rotation_run_start(
        network="seeded",
        dataset="tiny",
        layer="conv5",
        alphas=[0, 1],
        seeds=[3, 4],
        full_rotation_repeats=2,
        inline=True,
    )
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    test = RotationTest.objects.get(run=run)
    assert [(p["seed"], p["alpha"]) for p in test.points] == [(3, 0.0), (4, 0.0), (3, 1.0), (4, 1.0)]
    for point in test.points:
        if point["alpha"] == 0:
            assert point["detectors"] == dissection.n_detectors
            assert point["unique"] == dissection.n_unique_detectors
            assert point["per_category"] == {
                name: {"detectors": entry["detectors"], "unique": entry["unique"]}
                for name, entry in dissection.per_category.items()
            }
    tally = dissection_tally_load(dissection)
    with np.load(local_path(test.directory) / "rotation.npz") as data:
        assert list(data["alpha"]) == [0.0, 1.0, 1.0] and list(data["seed"]) == [-1, 3, 4]  # α = 0 computed once
        assert np.array_equal(data["thresholds"][0], tally["thresholds"])  # recomputed, and identical at α = 0
        for name in COUNTS:
            assert np.array_equal(data[name][0], tally[name]), name
        assert not np.array_equal(data["thresholds"][1], tally["thresholds"])  # rotated units: other thresholds
        assert not np.array_equal(data["thresholds"][1], data["thresholds"][2])  # another seed, another Q
        assert data["images"] == 36 and data["truth"][2].sum() == tally["truth"].sum()


def test_rotation_repeats_the_complete_rotation_ten_times_by_default(world, client, make_user):
    """ND'18 §3.2 / Fig. 8: α = 1 is measured on 10 random rotations; the curve's other α on the run's seeds."""
    run = rotation_run_start(
        network="seeded", dataset="tiny", layer="conv5", alphas=[0, 0.5, 1], seeds=[2], inline=True
    )
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    assert run.params["full_rotation_repeats"] == 10
    test = RotationTest.objects.get(run=run)
    at = {alpha: [p["seed"] for p in test.points if p["alpha"] == alpha] for alpha in (0.0, 0.5, 1.0)}
    assert at == {0.0: [2], 0.5: [2], 1.0: list(range(2, 12))}
    with np.load(local_path(test.directory) / "rotation.npz") as data:
        assert len(data["alpha"]) == 1 + 1 + 10 and len(set(map(bytes, data["thresholds"][2:]))) == 10
    complete = [p["unique"] for p in test.points if p["alpha"] == 1.0]
    client.force_login(make_user("rita", "researcher"))
    page = client.get(reverse("analysis:rotation_test", args=["seeded", "conv5"])).content.decode()
    mean = f"{statistics.fmean(complete):.1f}".rstrip("0").rstrip(".")
    assert "Complete rotation (α = 1), 10 random rotations" in page and f"<strong>{mean}</strong>" in page
    assert f"± {statistics.stdev(complete):.1f} (sd)" in page
    assert "seeds 2, 3, 4, 5, 6, 7, 8, 9, 10, 11" in page
    with pytest.raises(RunInputError, match="these ask for 65"):  # 64 curve rotations plus 1 more at α = 1
        rotation_run_start(
            network="seeded",
            dataset="tiny",
            layer="conv5",
            alphas=[0.5, 1],
            seeds=list(range(32)),
            full_rotation_repeats=33,
        )


def test_export_files_are_exact(world, tmp_path):
    run = dissect()
    dissection = LayerDissection.objects.get(run=run)
    call_command("export_run", str(run.pk), "--out", str(tmp_path), stdout=io.StringIO())
    data = dissection_tally_load(dissection)
    names = dict(Concept.objects.filter(dataset=dissection.dataset).values_list("number", "name"))
    numbers = {name: number for number, name in names.items()}
    with open(tmp_path / "tally.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["unit", "concept", "category", "iou", "intersection", "activation", "truth"]
    present = np.flatnonzero(data["truth"] > 0)
    assert len(rows) - 1 == 128 * len(present)
    for unit, concept, category, iou, intersection, activation, truth in rows[1:]:
        unit, number = int(unit), numbers[concept]
        g = int(data["label_category"][number])
        assert category == dissection.categories[g]
        assert float(iou) == data["iou"][unit, number]
        assert int(intersection) == data["intersection"][unit, number] and int(truth) == data["truth"][number]
        assert int(activation) == data["activation_cat"][unit, g]
        union = int(activation) + int(truth) - int(intersection)
        assert float(iou) == (int(intersection) / union if union else 0.0)
    with open(tmp_path / "thresholds.csv") as handle:
        thresholds = list(csv.reader(handle))
    assert thresholds[0] == ["unit", "threshold"] and len(thresholds) == 129
    assert [np.float32(float(value)) for _, value in thresholds[1:]] == list(data["thresholds"])
    assert [int(unit) for unit, _ in thresholds[1:]] == list(range(128))
    with open(tmp_path / "units.csv") as handle:
        units = list(csv.DictReader(handle))
    results = {r.unit.index: r for r in dissection.unit_results.select_related("unit", "concept")}
    summaries = {s.unit.index: s for s in dissection.extraction.unit_summaries.select_related("unit")}
    assert [int(row["unit"]) for row in units] == list(range(128))
    for row in units:
        result, summary = results[int(row["unit"])], summaries[int(row["unit"])]
        assert row["label"] == (result.concept.name if result.concept else "") and float(row["iou"]) == result.iou
        assert row["is_detector"] == str(int(result.is_detector)) and row["saturated"] == str(int(result.saturated))
        expected = "dead" if summary.max_activation <= 0 else "saturated" if summary.threshold == 0 else "live"
        assert row["status"] == expected == summary.unit_status
    assert {row["status"] for row in units} >= {"live"}
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["params"]["quantile"] == 0.995 and meta["params"]["upsample"] == "anchored"
    assert meta["params"]["iou_threshold"] == 0.04 and meta["quantile"] == 0.995
    assert meta["layer"] == "conv5" and meta["network"] == "seeded"
    assert Path(meta["dataset_dir"]).is_absolute() and (Path(meta["dataset_dir"]) / "index.csv").exists()
    assert meta["activations_run"] == dissection.extraction.run_id
    assert Run.objects.get(pk=meta["activations_run"]).kind == "extract"


def test_pages_render_for_researchers_and_refuse_others(world, client, make_user):
    run = dissect()
    dissect(baseline="shuffled")
    rotation = rotation_run_start(
        network="seeded", dataset="tiny", layer="conv5", alphas=[0, 1], seeds=[0], inline=True
    )
    assert rotation.status == RunStatus.SUCCEEDED, rotation.error
    dissection = LayerDissection.objects.get(run=run)
    detector = dissection.unit_results.filter(is_detector=True).select_related("concept", "unit").first()
    pages = [
        reverse("analysis:layer_dissection", args=["seeded", "conv5"]),
        reverse("analysis:layer_dissection", args=["seeded", "conv5"]) + f"?run={run.pk}",
        reverse("analysis:network_dissection", args=["seeded"]),
        reverse("analysis:rotation_test", args=["seeded", "conv5"]),
        reverse("analysis:concept_detail", args=["tiny", detector.concept.number]),
        reverse("analysis:unit_detail", args=["seeded", "conv5", detector.unit.index]),
        reverse("analysis:layer_detail", args=["seeded", "conv5"]) + "?sort=iou",
        reverse("analysis:dissection_start", args=["seeded", "conv5"]),
        reverse("analysis:rotation_start", args=["seeded", "conv5"]),
    ]
    client.force_login(make_user("rita", "researcher"))
    contents = {}
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        contents[url] = response.content.decode()
    summary = contents[pages[0]]
    assert 'class="chart"' in summary and "Detector units" in summary and "shuffled masks" in summary
    assert contents[pages[3]].count('class="chart"') == 2 and "Random-rotation test" in contents[pages[3]]
    assert f"unit {detector.unit.index}" in contents[pages[4]]
    unit_page = contents[pages[5]]
    assert "Network Dissection" in unit_page and detector.concept.name in unit_page and "detector" in unit_page
    layer_page = contents[pages[6]]
    ordered = list(dissection.unit_results.order_by("-iou", "unit__index").values_list("unit__index", flat=True))
    positions = [layer_page.index(f"units/{index}/") for index in ordered[:5]]
    assert positions == sorted(positions) and "by IoU" in layer_page  # sorted by IoU, best first
    assert client.get(reverse("analysis:layer_dissection", args=["seeded", "conv5"]) + "?run=999999").status_code == 404
    # Starting from the layer page creates a run and shows it.
    response = client.post(
        pages[7], {"dataset": "tiny", "upsample": "plain", "baseline": "none", "shards": 2, "iou_threshold": 0.04}
    )
    started = Run.objects.of_kind("dissect").get(params__shards=2)
    assert response.status_code == 302 and response["Location"] == started.get_absolute_url()
    assert started.params["upsample"] == "plain" and started.status == RunStatus.QUEUED
    client.force_login(make_user("eve", "expert"))
    for url in pages:
        assert client.get(url).status_code == 403, url
