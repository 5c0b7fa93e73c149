"""Extraction, exemplars, grids and export against the database, on a tiny probe world and a seeded network."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command

from analysis.models import (
    ExemplarKind,
    ExemplarSet,
    LayerExtraction,
    RenderedGrid,
    Run,
    RunStatus,
    UnitActivationSummary,
)
from analysis.services.extraction import extraction_run_start, open_activation_cache
from analysis.services.grids import grids_run_start
from tests.worlds import seeded_network

pytestmark = pytest.mark.django_db
SIZE = 64


@pytest.fixture
def world(make_probe_world):
    make_probe_world("tiny", n_images=36, size=SIZE, seed=5)
    return seeded_network(name="seeded", input_size=(SIZE, SIZE))


def extract(**overrides):
    params = {"network": "seeded", "dataset": "tiny", "layers": ["conv3", "conv5"], "batch_size": 8, **overrides}
    run = extraction_run_start(inline=True, **params)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    return run


def test_statistics_equal_brute_force_over_the_cached_maps(world):
    run = extract()
    assert run.result["forward_pass"] and run.result["computed_layers"] == ["conv3", "conv5"]
    extraction = LayerExtraction.objects.get(run=run, layer__name="conv5")
    maps = np.asarray(open_activation_cache(extraction), dtype=np.float32)  # [N, U, h, w]
    assert maps.shape == (36, 128, extraction.map_height, extraction.map_width)
    classes = np.array(
        [name for name in extraction.dataset.images.order_by("index").values_list("object_class__name", flat=True)]
    )
    scores = maps.reshape(36, 128, -1).max(axis=2)
    sums = maps.astype(np.float64).reshape(36, 128, -1).sum(axis=2)  # ties at the maximum: higher map sum first
    for unit in (0, 17, 127):
        summary = UnitActivationSummary.objects.get(extraction=extraction, unit__index=unit)
        expected = np.quantile(maps[:, unit].ravel(), 0.995)
        assert summary.threshold == pytest.approx(float(expected), rel=0, abs=1e-6)
        order = sorted(range(36), key=lambda image: (-scores[image, unit], -sums[image, unit], image))
        top = ExemplarSet.objects.get(extraction=extraction, unit__index=unit, kind=ExemplarKind.TOP_OVERALL)
        assert top.image_indices == order[:15]
        for class_set in ExemplarSet.objects.filter(
            extraction=extraction, unit__index=unit, kind=ExemplarKind.TOP_CLASS
        ).select_related("object_class"):
            members = [image for image in order if classes[image] == class_set.object_class.name]
            assert class_set.image_indices == members[:10]
            for image, (y, x) in zip(class_set.image_indices, class_set.peaks):
                assert maps[image, unit, y, x] == scores[image, unit]
        decile = ExemplarSet.objects.get(extraction=extraction, unit__index=unit, kind=ExemplarKind.DECILE)
        assert all(scores[image, unit] > 0 for image in decile.image_indices)


def test_identical_activations_are_reused_without_a_forward_pass(world, monkeypatch):
    first = extract()
    assert extract().pk == first.pk  # the identical run is reused whole
    # Another run over the same activations (another k) reads the cache and never builds the network.
    monkeypatch.setattr(
        "analysis.engine.networks.load_network",
        lambda *args, **kwargs: pytest.fail("the network was loaded: the cache was not reused"),
    )
    second = extract(k_overall=12)
    assert second.pk != first.pk and not second.result["forward_pass"]
    assert second.result["reused_layers"] == ["conv3", "conv5"]
    old = UnitActivationSummary.objects.filter(extraction__run=first).order_by(
        "extraction__layer__order", "unit__index"
    )
    new = UnitActivationSummary.objects.filter(extraction__run=second).order_by(
        "extraction__layer__order", "unit__index"
    )
    assert [s.threshold for s in old] == [s.threshold for s in new]
    monkeypatch.undo()
    # A changed input (another layer) invalidates: a forward pass for it.
    third = extract(layers=["conv4"])
    assert third.result["forward_pass"] and third.result["computed_layers"] == ["conv4"]


def _extraction_outcome(run) -> dict:
    """Everything an extraction run leaves per layer: cached maps, saved statistics, summaries, exemplar sets."""
    from analysis.storage import local_path

    outcome = {}
    for extraction in LayerExtraction.objects.filter(run=run).select_related("layer"):
        summaries = UnitActivationSummary.objects.filter(extraction=extraction).order_by("unit__index")
        sets = ExemplarSet.objects.filter(extraction=extraction).order_by("unit__index", "kind", "object_class_id")
        outcome[extraction.layer.name] = {
            "maps": np.asarray(open_activation_cache(extraction)).tobytes(),
            "statistics": torch.load(local_path(extraction.stats_path), weights_only=True),
            "summaries": list(
                summaries.values_list("unit__index", "threshold", "max_activation", "active_images", "ceiling_ties")
            ),
            "exemplars": list(
                sets.values_list("unit__index", "kind", "object_class_id", "image_indices", "scores", "peaks")
            ),
        }
    return outcome


def _assert_same_state(left, right, where="statistics"):
    if isinstance(left, dict):
        assert left.keys() == right.keys(), where
        for key in left:
            _assert_same_state(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, torch.Tensor):
        assert left.dtype == right.dtype and torch.equal(left, right), where
    else:
        assert left == right, where


def test_a_sharded_extraction_equals_one_pass_bit_for_bit(world):
    """Shards cut on batch boundaries, run one after another here (on workers, by any of them), merge into exactly
    the maps, statistics, thresholds and exemplars of one pass; a layer already cached is read, not recomputed."""
    from analysis.storage import local_path

    single = extract()
    reference = _extraction_outcome(single)
    conv5 = LayerExtraction.objects.get(run=single, layer__name="conv5")
    shutil.rmtree(local_path(conv5.cache_path))  # conv5 must be computed again; conv3 stays cached
    sharded = extract(shards=3)
    assert sharded.result["shards"] == 3
    assert sharded.result["computed_layers"] == ["conv5"] and sharded.result["reused_layers"] == ["conv3"]
    shard_runs = Run.objects.filter(kind="extract_shard", params__extraction_run=sharded.pk).order_by("params__shard")
    # 36 images in batches of 8 are 5 batches: the shards hold 1, 2 and 2 of them
    assert [(run.params["start"], run.params["stop"], run.status) for run in shard_runs] == [
        (0, 8, RunStatus.SUCCEEDED),
        (8, 24, RunStatus.SUCCEEDED),
        (24, 36, RunStatus.SUCCEEDED),
    ]
    outcome = _extraction_outcome(sharded)
    assert outcome.keys() == reference.keys() == {"conv3", "conv5"}
    for layer in reference:
        assert outcome[layer]["maps"] == reference[layer]["maps"], layer
        _assert_same_state(outcome[layer]["statistics"], reference[layer]["statistics"], layer)
        assert outcome[layer]["summaries"] == reference[layer]["summaries"], layer
        assert outcome[layer]["exemplars"] == reference[layer]["exemplars"], layer
    assert not local_path(f"extractions/{sharded.pk}/shards").exists()  # the shards' files are merged and gone


def test_run_pages_link_a_sharded_extraction_and_its_shards(world, researcher_client):
    run = extract(shards=2)
    shards = list(Run.objects.filter(kind="extract_shard").order_by("params__shard"))
    page = researcher_client.get(run.get_absolute_url()).content.decode()
    assert "<h2>Shards</h2>" in page
    for shard, images in zip(shards, ("0–15", "16–35")):  # 5 batches of 8: 2 and 3 of them
        assert f'<a href="{shard.get_absolute_url()}">{shard.params["shard"]} · run {shard.pk}</a>' in page
        assert f"<td>{images}</td>" in page
    shard_page = researcher_client.get(shards[1].get_absolute_url()).content.decode()
    assert f'Shard 1 (images 16–35) of <a href="{run.get_absolute_url()}">run {run.pk}</a>' in shard_page
    assert "<h2>Shards</h2>" not in researcher_client.get(extract().get_absolute_url()).content.decode()


def test_a_failed_shard_fails_the_extraction_naming_it_and_leaves_no_cache(world, monkeypatch):
    """Nothing half-written: no complete cache under the run's key, no extraction rows, the shards' files gone."""
    from analysis.services import extraction as service
    from analysis.storage import local_path

    extract_range = service._extract_range

    def failing_second_range(**kwargs):
        if kwargs["start"] == 8:
            raise RuntimeError("the GPU fell off the bus")
        return extract_range(**kwargs)

    monkeypatch.setattr(service, "_extract_range", failing_second_range)
    run = extraction_run_start(network="seeded", dataset="tiny", layers=["conv5"], batch_size=8, shards=3, inline=True)
    assert run.status == RunStatus.FAILED
    shards = list(Run.objects.filter(kind="extract_shard").order_by("pk"))
    assert [shard.status for shard in shards] == [RunStatus.SUCCEEDED, RunStatus.FAILED]  # inline: stops at the first
    assert run.error == f"Shard 1 (run {shards[1].pk}) ended failed: RuntimeError: the GPU fell off the bus"
    assert not LayerExtraction.objects.filter(run=run).exists()
    assert not list(local_path("activations").glob("*"))  # no cache, complete or partial
    assert not local_path(f"extractions/{run.pk}/shards").exists()


def test_a_failed_shard_leaves_nothing_in_its_workers_scratch(world, monkeypatch):
    from analysis.services import extraction as service
    from analysis.services.runs import run_start
    from analysis.storage import local_path

    parent = extract(layers=["conv5"])

    def fails_after_writing(**kwargs):
        kwargs["targets"]["conv5"][:] = 1.0  # its maps half-written
        raise RuntimeError("out of memory")

    monkeypatch.setattr(service, "_extract_range", fails_after_writing)
    params = {"extraction_run": parent.pk, "shard": 0, "start": 0, "stop": 8, "compute": ["conv5"]}
    shard, _ = run_start(kind="extract_shard", params=params, inline=True, reuse=False)
    assert shard.status == RunStatus.FAILED and shard.error == "RuntimeError: out of memory"
    assert not local_path(f"extractions/{parent.pk}/shards/0000").exists()


def test_more_shards_than_batches_are_refused_naming_the_limit(world):
    run = extraction_run_start(network="seeded", dataset="tiny", layers=["conv5"], batch_size=8, shards=6, inline=True)
    assert run.status == RunStatus.FAILED
    assert run.error == "6 shards for 5 batches of 8 images: use at most 5 shards, or a smaller batch size."
    assert not Run.objects.filter(kind="extract_shard").exists()


def test_unknown_layer_fails_with_the_layers_listed(world):
    run = extraction_run_start(network="seeded", dataset="tiny", layers=["conv9"], inline=True)
    assert run.status == RunStatus.FAILED and "no layer conv9" in run.error and "conv5" in run.error


def test_activations_beyond_float16_fail_the_run_naming_the_units(make_probe_world):
    """Values the float16 cache cannot hold are never silently stored as inf (nor crash on a NULL threshold)."""
    from analysis.engine.networks import NetworkKind, NetworkSpec
    from analysis.models import LayerExtraction as Extraction
    from analysis.services.networks import network_register

    make_probe_world("tiny", n_images=36, size=SIZE, seed=5)
    network_register(
        name="huge",
        spec=NetworkSpec(
            kind=NetworkKind.MODULE,
            target="tests.real_network_builders:overflowing",
            input_size=(SIZE, SIZE),
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        ),
    )
    run = extraction_run_start(network="huge", dataset="tiny", layers=["1"], batch_size=8, inline=True)
    assert run.status == RunStatus.FAILED
    assert "float16" in run.error and "1 unit reach" in run.error and "unit (largest |value|) 1 (" in run.error
    assert not Extraction.objects.filter(run=run).exists()


def test_grids_are_rendered_under_content_hash_names(world):
    run = extract(layers=["conv5"])
    grids = grids_run_start(extraction_run=run.pk, layer="conv5", inline=True)
    assert grids.status == RunStatus.SUCCEEDED, grids.error + grids.error_detail
    sets = ExemplarSet.objects.filter(extraction__run=run)
    assert not sets.filter(grid__isnull=True).exists()
    assert grids.result["grids"] == sets.count()
    label_words = set(world.layers.values_list("name", flat=True)) | {"car", "bird", "wheel", "conv5", "unit"}
    for grid in RenderedGrid.objects.all():
        assert re.fullmatch(r"grids/[0-9a-f]{2}/[0-9a-f]{64}\.png", grid.path)
        assert not any(word in grid.url for word in label_words)
        from django.conf import settings

        data = (Path(settings.MEDIA_ROOT) / grid.path).read_bytes()
        import hashlib

        assert hashlib.sha256(data).hexdigest() == grid.sha256
    top = sets.filter(kind=ExemplarKind.TOP_OVERALL).first().grid
    assert (top.width, top.height) == (5 * SIZE + 6 * 2, 3 * SIZE + 4 * 2)


def test_export_run_writes_the_exact_maps(world, tmp_path):
    run = extract(layers=["conv4"])
    call_command("export_run", str(run.pk), "--out", str(tmp_path))
    exported = np.load(tmp_path / "conv4.npy")
    extraction = LayerExtraction.objects.get(run=run)
    assert exported.dtype == np.float32 and exported.shape == (36, 128, extraction.map_height, extraction.map_width)
    assert np.array_equal(exported, np.asarray(open_activation_cache(extraction), dtype=np.float32))
    with open(tmp_path / "images.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "image"] and rows[1] == ["0", extraction.dataset.images.get(index=0).path]
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["layers"] == ["conv4"] and meta["network"] == "seeded" and meta["dataset_dir"]
    # The maps are the ones the network computes (up to float16 rounding and thread-order summation).
    from itertools import islice

    from analysis.engine.broden import BrodenReader
    from analysis.engine.networks import capture_forward, load_network, normalize_images
    from analysis.services.networks import network_spec

    reader = BrodenReader(extraction.dataset.root)
    images = torch.from_numpy(np.stack([reader.load_image(row) for row in islice(reader.rows(), 8)]))
    model = load_network(network_spec(world), device="cpu")
    with torch.no_grad():
        direct = capture_forward(model, normalize_images(images.permute(0, 3, 1, 2), world.mean, world.std), ["conv4"])[
            "conv4"
        ]
    np.testing.assert_allclose(exported[:8], direct.numpy(), rtol=2e-3, atol=2e-3)
