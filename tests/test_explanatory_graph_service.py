"""Explanatory-graph runs against the database on a tiny probe world: the run stores what the engine infers at the
right image-plane positions, instability rows equal a naive computation from the cache and the boxes, the purity
read applies the 30 % rule, exports are complete, the command prints the run id, and the pages render."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from analysis.engine.explanatory_graph import PATCH_FRACTION, energy_top_k
from analysis.models import AnnotatedBox, ExplanatoryGraph, GraphEdge, GraphInstability, GraphNode, Run, RunStatus
from analysis.services.explanatory_graph import (
    graph_inference_arrays,
    graph_purity_candidates,
    graph_purity_inferences,
    graph_run_start,
    purity_patch_picture,
)
from analysis.services.exports import run_export
from analysis.services.extraction import open_activation_cache
from tests.worlds import probe_world_register, seeded_network

pytestmark = pytest.mark.django_db
SIZE = 64  # images; the network takes 112 px, so positions scale by 64/112 onto the images
INPUT = (112, 112)
PARAMS = dict(
    network="egnet",
    dataset="egworld",
    layers=["conv4", "conv5"],
    nodes_per_filter=[3, 2],
    iterations=3,
    neighbours=4,
    batch_size=36,
    landmarks=["head", "torso", "body"],
    top_images=5,
)


@pytest.fixture(scope="module")
def shared_graph(django_db_setup, django_db_blocker, probe_world_files):
    """A 36-image probe world, a seeded demo network and a learned graph over conv5 → conv4 (built once)."""
    import torch

    from analysis.models import Dataset, Network

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than they save on a shared machine
    with django_db_blocker.unblock():
        first_run = (Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
        world = {"n_images": 36, "size": SIZE, "seed": 5}
        probe_world_register(name="egworld", root=probe_world_files(**world), **world)
        seeded_network(name="egnet", input_size=INPUT)
        run = graph_run_start(inline=True, **PARAMS)
        assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
        yield run.pk
        Network.objects.filter(name="egnet").delete()
        Dataset.objects.filter(name="egworld").delete()
        Run.objects.filter(pk__gte=first_run).delete()
    torch.set_num_threads(threads)


@pytest.fixture
def graph(shared_graph, db):
    return ExplanatoryGraph.objects.select_related("network", "dataset").get(run_id=shared_graph)


def _centres(layer):
    cy = layer.rf_offset_y + layer.rf_stride_y * np.arange(layer.out_height)
    cx = layer.rf_offset_x + layer.rf_stride_x * np.arange(layer.out_width)
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def test_the_graph_is_learned_top_down_and_stored(graph):
    assert graph.layers == ["conv5", "conv4"]
    assert graph.params["nodes_per_filter"] == [2, 3]  # given per named layer, stored top first
    assert GraphNode.objects.filter(graph=graph, layer__name="conv5").count() == 128 * 2
    assert GraphNode.objects.filter(graph=graph, layer__name="conv4").count() == 128 * 3
    assert graph.n_nodes == 640 and graph.n_edges == GraphEdge.objects.filter(graph=graph).count() == 384 * 4
    assert not GraphEdge.objects.filter(graph=graph, child__level=0).exists()
    assert set(GraphEdge.objects.filter(graph=graph).values_list("parent__level", flat=True)) == {0}
    edge = GraphEdge.objects.select_related("child", "parent").filter(graph=graph).first()
    assert edge.dx == pytest.approx(edge.child.mu_x - edge.parent.mu_x)
    ranks = sorted(GraphNode.objects.filter(graph=graph, level=1).values_list("rank", flat=True))
    assert ranks == list(range(1, 385))
    assert graph.run.result["graph"] == graph.pk


def test_top_layer_inference_is_f_times_the_node_density_squared_at_receptive_field_centres(graph):
    """A naive recomputation from the cache, the saved μ/σ and the layer's receptive-field centres."""
    layer = graph.network.layers.get(name="conv5")
    extraction = layer.extractions.get(run_id=graph.extraction_runs["conv5"])
    maps = np.asarray(open_activation_cache(extraction), dtype=np.float64)
    saved = np.load(Path(graph.directory) / "conv5.npz")
    units, scores = graph_inference_arrays(graph, "conv5")
    plane = 112.0
    centres = _centres(layer) / plane
    train = np.array(graph.dataset.images.filter(split="train").order_by("index").values_list("index", flat=True))
    peak_mean = maps[train].reshape(len(train), 128, -1).max(2).mean(0)
    normaliser = np.where(peak_mean > 0, peak_mean, 1.0)
    totals = GraphNode.objects.filter(graph=graph, level=0)
    for node in totals.order_by("rank")[:5]:
        mu = saved["mu"][node.filter, node.node] / plane
        s2 = saved["fit_sigma2"][node.filter, node.node] / plane**2
        f = np.clip(maps[:, node.filter].reshape(36, -1) / normaliser[node.filter], 0, None)
        log_density = -((centres - mu) ** 2).sum(1) / (2 * s2) - math.log(2 * math.pi * s2)
        with np.errstate(divide="ignore"):
            log_s = np.log(f) + 2 * log_density[None, :]  # in logs: far from μ, S underflows float64
        fired = np.isfinite(log_s.max(1))
        assert fired.any()
        assert (np.asarray(units[fired, node.flat]) == log_s[fired].argmax(1)).mean() >= 0.97
        assert (np.asarray(units[~fired, node.flat]) == 0).all() and (np.asarray(scores[~fired, node.flat]) == 0).all()
        np.testing.assert_allclose(np.asarray(scores[:, node.flat]), np.exp(log_s.max(1)), rtol=2e-3, atol=1e-30)
        assert node.score_total == pytest.approx(float(np.asarray(scores[:, node.flat], dtype=np.float64).sum()))
        assert node.mu_x == pytest.approx(saved["mu"][node.filter, node.node, 1])


def test_raw_filter_instability_equals_a_naive_computation(graph):
    layer = graph.network.layers.get(name="conv4")
    summary = graph.instability["conv4"]
    assert summary["nodes"] is not None and summary["filters"] is not None
    row = GraphInstability.objects.get(graph=graph, layer=layer, kind="filter", rank=1)
    extraction = layer.extractions.get(run_id=graph.extraction_runs["conv4"])
    maps = np.asarray(open_activation_cache(extraction), dtype=np.float64).reshape(36, 128, -1)
    strength = maps.max(2).clip(0, None).sum(0)
    assert row.filter == int(np.argmax(strength))
    val = list(graph.dataset.images.filter(split="val").order_by("index").values_list("index", flat=True))
    centres = _centres(layer) * (SIZE / 112)
    expected = []
    for name in graph.landmarks:
        found = []
        for index in val:
            box = (
                AnnotatedBox.objects.filter(
                    image__dataset=graph.dataset, image__index=index, kind="part", concept__name=name
                )
                .order_by("instance", "object_index", "id")
                .first()
            )
            if box is not None:
                found.append((index, ((box.y1 + box.y2) / 2, (box.x1 + box.x2) / 2)))
        found.sort(key=lambda item: (-maps[item[0], row.filter].max(), item[0]))
        found = found[:5]
        if len(found) < 2:
            continue
        distances = [
            np.hypot(*(centres[maps[i, row.filter].argmax()] - np.array(c))) / math.hypot(SIZE, SIZE) for i, c in found
        ]
        expected.append(np.std(distances))
        assert row.per_landmark[name] == pytest.approx(np.std(distances), rel=1e-9)
    assert expected and row.instability == pytest.approx(np.mean(expected), rel=1e-9)
    nodes = GraphInstability.objects.filter(graph=graph, layer=layer, kind="node")
    assert nodes.count() == summary["node_patterns"] == 384
    assert summary["nodes"] == pytest.approx(
        np.mean([v for v in nodes.values_list("instability", flat=True) if v is not None])
    )


def test_purity_inferences_take_thirty_percent_of_the_energy(graph):
    node = GraphNode.objects.filter(graph=graph, level=1).order_by("rank").first()
    groups = graph_purity_inferences(graph, layer="conv4", filter_index=node.filter, node=node.node)
    _, scores = graph_inference_arrays(graph, "conv4")
    expected = energy_top_k(np.asarray(scores[:, node.flat]), 0.3)
    assert [group[0].image_index for group in groups] == expected.tolist()
    item = groups[0][0]
    side = PATCH_FRACTION * 112 * SIZE / 112
    assert item.box[2] - item.box[0] == pytest.approx(side)
    assert ((item.box[0] + item.box[2]) / 2, (item.box[1] + item.box[3]) / 2) == pytest.approx(item.centre[::-1])
    peaks = graph_purity_inferences(graph, layer="conv4", filter_index=node.filter, mode="peaks")
    maps_mode = graph_purity_inferences(graph, layer="conv4", filter_index=node.filter, mode="maps")
    assert all(len(group) == 1 for group in peaks)
    assert maps_mode and all(len(group) >= 1 for group in maps_mode)
    candidates = graph_purity_candidates(graph, layer="conv4")
    assert len(candidates) == 128 and [node.rank for node, _ in candidates] == list(range(1, 129))
    assert candidates[0] == (node, len(groups))
    picture = purity_patch_picture(graph, groups)
    assert picture.width > 0 and picture.height > 0


def test_export_writes_nodes_edges_and_instability(graph, tmp_path):
    files = {path.name: path for path in run_export(run=graph.run, out_dir=tmp_path)}
    assert set(files) == {"nodes.csv", "edges.csv", "instability.csv", "run.json"}
    with open(files["nodes.csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["layer", "filter", "node", "mu_x", "mu_y", "score_total"]
    assert len(rows) == 640
    with open(files["edges.csv"]) as handle:
        assert sum(1 for _ in handle) == 1 + 384 * 4
    with open(files["instability.csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert {row["kind"] for row in rows} == {"node", "filter"}
    assert list(rows[0])[-3:] == graph.landmarks


def test_the_command_prints_the_run_id(graph):
    out = io.StringIO()
    call_command(
        "learn_graph",
        "--network",
        "egnet",
        "--dataset",
        "egworld",
        "--layer",
        "conv4",
        "--layer",
        "conv5",
        "--nodes",
        "3",
        "--nodes",
        "2",
        "--iterations",
        "3",
        "--neighbours",
        "4",
        "--batch-size",
        "36",
        "--landmark",
        "head",
        "--landmark",
        "torso",
        "--landmark",
        "body",
        "--top-images",
        "5",
        "--inline",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert out.getvalue().strip() == str(graph.run_id)  # identical parameters: the finished run is reused


def test_pages_render_for_researchers_only(graph, researcher_client):
    node = GraphNode.objects.filter(graph=graph, level=1).order_by("rank").first()
    urls = [
        reverse("analysis:network_graphs", args=["egnet"]),
        reverse("analysis:graph_detail", args=[graph.run_id]),
        reverse("analysis:graph_layer", args=[graph.run_id, "conv4"]),
        reverse("analysis:graph_node", args=[graph.run_id, node.pk]),
    ]
    for url in urls:
        assert Client().get(url).status_code == 302  # anonymous: to the login page
    page = researcher_client.get(urls[1]).content.decode()
    assert "Location instability against raw filters" in page and "<svg" in page and "<circle" in page
    assert f"{graph.instability['conv4']['nodes']:.4f}" in page
    assert "images of every class (one graph over all of them" in page and "as written, lower where" in page
    page = researcher_client.get(urls[2]).content.decode()
    assert "Nodes per filter" in page and f"filter {node.filter} · node {node.node}" in page
    page = researcher_client.get(urls[3]).content.decode()
    assert "Top patches" in page and "Edges to the layer above" in page and 'alt="The ' in page
    assert GraphEdge.objects.filter(child=node).first().parent.layer.name in page
    assert researcher_client.get(urls[0]).status_code == 200
    png = researcher_client.get(reverse("analysis:graph_node_patches", args=[graph.run_id, node.pk]))
    assert png.status_code == 200 and png["Content-Type"] == "image/png" and png.content[:4] == b"\x89PNG"
    png = researcher_client.get(reverse("analysis:graph_filter_patches", args=[graph.run_id, "conv4", node.filter]))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert researcher_client.get(reverse("analysis:graph_layer", args=[graph.run_id, "conv1"])).status_code == 404


def test_the_form_starts_a_run(graph, researcher_client):
    response = researcher_client.post(
        reverse("analysis:network_graphs", args=["egnet"]),
        {
            "dataset": "egworld",
            "layers": ["conv5"],
            "nodes_per_filter": "x",
            "iterations": 2,
            "neighbours": 3,
            "tau": 0.1,
            "max_learn_images": 0,
            "landmarks": "head",
        },
    )
    assert response.status_code == 200 and "whole numbers" in response.content.decode()
    response = researcher_client.post(
        reverse("analysis:network_graphs", args=["egnet"]),
        {
            "dataset": "egworld",
            "layers": ["conv5"],
            "nodes_per_filter": "4",
            "iterations": 2,
            "neighbours": 3,
            "tau": 0.1,
            "max_learn_images": 0,
            "landmarks": "head, torso",
        },
    )
    run = Run.objects.filter(kind="explanatory_graph").order_by("-pk").first()
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.params["layers"] == ["conv5"] and run.params["nodes_per_filter"] == [4]
    assert run.params["landmarks"] == ["head", "torso"]
    for url in (
        reverse("analysis:network_detail", args=["egnet"]),
        reverse("analysis:layer_detail", args=["egnet", "conv4"]),
    ):
        assert reverse("analysis:network_graphs", args=["egnet"]) in researcher_client.get(url).content.decode()


def test_a_category_graph_learns_on_its_images_and_measures_its_own_objects_landmarks(graph):
    """``category``: learning and evaluation images are those holding an object of the class, and the landmarks are
    the parts of that class's objects (recounted naively from the boxes)."""
    from collections import Counter

    objects = AnnotatedBox.objects.filter(image__dataset=graph.dataset, kind="object")
    category = Counter(objects.values_list("concept__name", flat=True)).most_common(1)[0][0]
    run = graph_run_start(
        inline=True,
        **{
            **PARAMS,
            "layers": ["conv5"],
            "nodes_per_filter": [2],
            "iterations": 2,
            "category": category,
            "landmarks": [],
        },
    )
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    small = ExplanatoryGraph.objects.get(run=run)
    holding = {
        index: split
        for index, split in objects.filter(concept__name=category).values_list("image__index", "image__split")
    }
    assert small.n_learn_images == sum(split == "train" for split in holding.values())
    assert small.params["category"] == category
    # no landmarks named: the three part classes found on most of the category's objects
    owners = set(objects.filter(concept__name=category).values_list("image__index", "object_index"))
    part_objects = Counter(
        name
        for name, index, obj in set(
            AnnotatedBox.objects.filter(image__dataset=graph.dataset, kind="part").values_list(
                "concept__name", "image__index", "object_index"
            )
        )
        if (index, obj) in owners
    )
    assert small.landmarks == sorted(sorted(part_objects, key=lambda name: (-part_objects[name], name))[:3])
    layer = small.network.layers.get(name="conv5")
    row = GraphInstability.objects.get(graph=small, layer=layer, kind="filter", rank=1)
    maps = np.asarray(
        open_activation_cache(layer.extractions.get(run_id=small.extraction_runs["conv5"])), dtype=np.float64
    ).reshape(36, 128, -1)
    centres = _centres(layer) * (SIZE / 112)
    compared = 0
    for name in small.landmarks:
        found = []
        for index in sorted(i for i, split in holding.items() if split == "val"):
            boxes = AnnotatedBox.objects.filter(
                image__dataset=small.dataset, image__index=index, kind="part", concept__name=name
            ).order_by("instance", "object_index", "id")
            box = next((b for b in boxes if (index, b.object_index) in owners), None)
            if box is not None:
                found.append((index, ((box.y1 + box.y2) / 2, (box.x1 + box.x2) / 2)))
        found.sort(key=lambda item: (-maps[item[0], row.filter].max(), item[0]))
        found = found[:5]
        if len(found) < 2:
            assert name not in row.per_landmark or row.per_landmark[name] is None
            continue
        distances = [
            np.hypot(*(centres[maps[i, row.filter].argmax()] - np.array(c))) / math.hypot(SIZE, SIZE) for i, c in found
        ]
        assert row.per_landmark[name] == pytest.approx(np.std(distances), rel=1e-9)
        compared += 1
    assert compared
