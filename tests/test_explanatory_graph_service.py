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
    inputs="whole_images",
    graphs="pooled",
)
"""The named variant this file's first graph uses: one graph pooled over every whole image (the service's behaviour
before per-category graphs), checked against naive recomputations from the activation cache."""


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
    assert [entry["graph"] for entry in graph.run.result["graphs"]] == [graph.pk]
    assert graph.category == "" and graph.inputs == "whole_images" and graph.n_images == 36


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
    assert set(files) == {"nodes.csv", "edges.csv", "instability.csv", "inputs.csv", "run.json"}
    with open(files["nodes.csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:7] == ["category", "layer", "filter", "node", "mu_x", "mu_y", "score_total"]
    assert {row["category"] for row in rows} == {""}
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
        "--inputs",
        "whole_images",
        "--graphs",
        "pooled",
        "--inline",
        stdout=out,
        stderr=io.StringIO(),
    )
    assert out.getvalue().strip() == str(graph.run_id)  # identical parameters: the finished run is reused


def test_pages_render_for_researchers_only(graph, researcher_client):
    node = GraphNode.objects.filter(graph=graph, level=1).order_by("rank").first()
    urls = [
        reverse("analysis:network_graphs", args=["egnet"]),
        reverse("analysis:graph_detail", args=[graph.pk]),
        reverse("analysis:graph_layer", args=[graph.pk, "conv4"]),
        reverse("analysis:graph_node", args=[graph.pk, node.pk]),
    ]
    for url in urls:
        assert Client().get(url).status_code == 302  # anonymous: to the login page
    page = researcher_client.get(urls[1]).content.decode()
    assert "Location instability against raw filters" in page and "<svg" in page and "<circle" in page
    assert f"{graph.instability['conv4']['nodes']:.4f}" in page
    assert "One graph pooled over <strong>every category</strong>" in page and "as written, lower where" in page
    assert "whole images (the named variant" in page
    page = researcher_client.get(urls[2]).content.decode()
    assert "Nodes per filter" in page and f"filter {node.filter} · node {node.node}" in page
    page = researcher_client.get(urls[3]).content.decode()
    assert "Top patches" in page and "Edges to the layer above" in page and 'alt="The ' in page
    assert GraphEdge.objects.filter(child=node).first().parent.layer.name in page
    assert researcher_client.get(urls[0]).status_code == 200
    png = researcher_client.get(reverse("analysis:graph_node_patches", args=[graph.pk, node.pk]))
    assert png.status_code == 200 and png["Content-Type"] == "image/png" and png.content[:4] == b"\x89PNG"
    png = researcher_client.get(reverse("analysis:graph_filter_patches", args=[graph.pk, "conv4", node.filter]))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert researcher_client.get(reverse("analysis:graph_layer", args=[graph.pk, "conv1"])).status_code == 404


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
            "inputs": "object_crops",
            "graphs": "per_category",
            "category": "",
        },
    )
    run = Run.objects.filter(kind="explanatory_graph").order_by("-pk").first()
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.params["layers"] == ["conv5"] and run.params["nodes_per_filter"] == [4]
    assert run.params["landmarks"] == ["head", "torso"]
    assert run.params["inputs"] == "object_crops" and run.params["graphs"] == "per_category"
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
            "graphs": "per_category",
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


# -- the paper's default: one graph per object category, learned on its object crops ---------------------------------

CROP_PARAMS = {**PARAMS, "landmarks": [], "inputs": "object_crops", "graphs": "per_category"}
CONTEXT = 16 / 227  # R-CNN's context, as part detection crops objects


@pytest.fixture(scope="module")
def crop_graphs(shared_graph, django_db_blocker):
    """A default run (object crops, one graph per category) on the same world, with what the engine received:
    per ``learn_graph`` call its input count, learning rows and every layer's maps on every input."""
    import analysis.engine.explanatory_graph as engine

    calls = []
    real = engine.learn_graph

    def spy(sources, configs, *, learn_rows, n_images, **kwargs):
        rows = np.arange(n_images)
        calls.append(
            {
                "n_images": n_images,
                "learn_rows": np.array(learn_rows),
                "maps": {source.name: np.array(source.read_maps(rows)) for source in sources},
            }
        )
        return real(sources, configs, learn_rows=learn_rows, n_images=n_images, **kwargs)

    defaults = {key: value for key, value in CROP_PARAMS.items() if key not in ("inputs", "graphs")}
    with django_db_blocker.unblock(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "learn_graph", spy)
        run = graph_run_start(inline=True, **defaults)  # inputs and graphs left to their defaults
        assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    return run.pk, calls


def _objects_by_category(dataset):
    """``{category: [(image index, object index, (x1, y1, x2, y2), split)]}`` from the boxes, image order."""
    found = {}
    for name, index, obj, x1, y1, x2, y2, split in (
        AnnotatedBox.objects.filter(image__dataset=dataset, kind="object")
        .order_by("image__index", "object_index")
        .values_list("concept__name", "image__index", "object_index", "x1", "y1", "x2", "y2", "image__split")
    ):
        found.setdefault(name, []).append((index, obj, (x1, y1, x2, y2), split))
    return found


def _crop_graphs(run_pk):
    return list(
        ExplanatoryGraph.objects.select_related("network", "dataset").filter(run_id=run_pk).order_by("category")
    )


def test_a_default_run_learns_one_graph_per_category_on_that_categorys_object_crops(crop_graphs):
    """The engine receives one input per object instance of the category (both splits; it learns on the train
    ones), and each input's frame is its object box grown by R-CNN's context (hand-computed here)."""
    from analysis.services.explanatory_graph import graph_inputs

    run_pk, calls = crop_graphs
    graphs = _crop_graphs(run_pk)
    objects = _objects_by_category(graphs[0].dataset)
    learnable = sorted(name for name, entries in objects.items() if any(e[3] == "train" for e in entries))
    assert len(learnable) >= 3
    assert [graph.category for graph in graphs] == learnable  # one graph per category, none pooled
    run = Run.objects.get(pk=run_pk)
    assert [entry["category"] for entry in run.result["graphs"]] == learnable
    assert set(run.result["skipped"]) == set(objects) - set(learnable)
    assert len(calls) == len(graphs)
    grow = CONTEXT / (1 - 2 * CONTEXT)
    for graph, call in zip(graphs, calls):
        entries = objects[graph.category]
        assert graph.inputs == "object_crops" and graph.params["inputs"] == "object_crops"
        assert call["n_images"] == graph.n_images == len(entries)
        assert len(call["learn_rows"]) == graph.n_learn_images == sum(e[3] == "train" for e in entries)
        assert all(entries[row][3] == "train" for row in call["learn_rows"])
        assert call["maps"]["conv5"].shape[0] == len(entries) and call["maps"]["conv4"].shape[0] == len(entries)
        inputs = graph_inputs(graph)
        assert inputs.images.tolist() == [e[0] for e in entries] and inputs.objects.tolist() == [e[1] for e in entries]
        boxes = np.array([e[2] for e in entries], dtype=np.float64)
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        expected = np.stack(
            [
                boxes[:, 0] - width * grow,
                boxes[:, 1] - height * grow,
                boxes[:, 2] + width * grow,
                boxes[:, 3] + height * grow,
            ],
            axis=1,
        )
        np.testing.assert_allclose(inputs.frames, expected, rtol=1e-12)
        # every node was inferred on the category's crops only
        units, _ = graph_inference_arrays(graph, "conv4")
        assert units.shape == (len(entries), GraphNode.objects.filter(graph=graph, layer__name="conv4").count())
        # landmarks chosen per category: the three part classes on most of its objects
        assert graph.landmarks and len(graph.landmarks) <= 3


def test_the_maps_the_graph_learns_from_are_forward_passes_on_the_crops_of_the_boxes(crop_graphs):
    """An independent crop for each of a category's first objects — the image, normalised, cut at the box grown by
    the context and warped to the 112 px input with torchvision's ``roi_align`` — through the network gives the maps
    the engine received (float16-rounded, as the cache stores them)."""
    import torch
    from PIL import Image
    from torchvision.ops import roi_align

    from analysis.engine.networks import capture_forward
    from analysis.services.inputs import load_model

    run_pk, calls = crop_graphs
    graph = _crop_graphs(run_pk)[0]
    network, dataset = graph.network, graph.dataset
    model = load_model(network, torch.device("cpu"))
    mean = torch.tensor(network.mean).view(1, 3, 1, 1)
    std = torch.tensor(network.std).view(1, 3, 1, 1)
    grow = CONTEXT / (1 - 2 * CONTEXT)
    for row, (index, _obj, (x1, y1, x2, y2), _split) in enumerate(_objects_by_category(dataset)[graph.category][:3]):
        path = dataset.images.get(index=index).path
        with Image.open(Path(dataset.root) / "images" / path) as image:
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        frame = [x1 - (x2 - x1) * grow, y1 - (y2 - y1) * grow, x2 + (x2 - x1) * grow, y2 + (y2 - y1) * grow]
        crop = roi_align(
            (pixels - mean) / std, torch.tensor([[0.0, *frame]]), output_size=INPUT, aligned=True, sampling_ratio=2
        )
        with torch.no_grad():
            expected = capture_forward(model, crop, ["conv5", "conv4"])
        for name in ("conv5", "conv4"):
            want = expected[name][0].to(torch.float16).to(torch.float32).numpy()
            np.testing.assert_allclose(calls[0]["maps"][name][row], want, rtol=2e-3, atol=2e-3)
            assert np.abs(want).max() > 0


def test_crop_instability_measures_each_crop_against_the_parts_of_its_own_object(crop_graphs):
    """The raw-filter row of location instability, recomputed naively: the filter's peak on each evaluation crop is
    mapped to image pixels through the crop's frame, the landmark is the part box on the object the crop shows, and
    the distance is divided by the crop's diagonal."""
    from analysis.services.explanatory_graph import graph_inputs, graph_layer_maps

    run_pk, _ = crop_graphs
    graph = max(_crop_graphs(run_pk), key=lambda g: (g.n_images, g.category))
    layer = graph.network.layers.get(name="conv5")
    maps = np.asarray(graph_layer_maps(graph, layer), dtype=np.float64)
    inputs = graph_inputs(graph)
    count = len(inputs.images)
    strength = maps.reshape(count, 128, -1).max(2).clip(0, None).sum(0)
    row = GraphInstability.objects.get(graph=graph, layer=layer, kind="filter", rank=1)
    assert row.filter == int(np.argmax(strength))
    rows = [r for r in range(count) if inputs.splits[r] == graph.params["eval_split"]] or list(range(count))
    centres = _centres(layer)
    compared = 0
    for name in graph.landmarks:
        found = []
        for r in rows:
            box = (
                AnnotatedBox.objects.filter(
                    image__dataset=graph.dataset,
                    image__index=int(inputs.images[r]),
                    object_index=int(inputs.objects[r]),
                    kind="part",
                    concept__name=name,
                )
                .order_by("instance", "id")
                .first()
            )
            if box is not None:
                found.append((r, ((box.y1 + box.y2) / 2, (box.x1 + box.x2) / 2)))
        found.sort(key=lambda item: (-maps[item[0], row.filter].max(), item[0]))
        found = found[:5]
        if len(found) < 2:
            continue
        distances = []
        for r, (ly, lx) in found:
            fx1, fy1, fx2, fy2 = inputs.frames[r]
            cy, cx = centres[maps[r, row.filter].argmax()]
            y, x = fy1 + cy * (fy2 - fy1) / 112, fx1 + cx * (fx2 - fx1) / 112
            distances.append(math.hypot(y - ly, x - lx) / math.hypot(fy2 - fy1, fx2 - fx1))
        assert row.per_landmark[name] == pytest.approx(np.std(distances), rel=1e-9)
        compared += 1
    assert compared


def test_purity_pages_and_export_of_per_category_crop_graphs(crop_graphs, researcher_client, tmp_path):
    """Purity inferences of a crop graph name the crop's dataset image and draw the patch in its pixels; raw filters
    are judged on the same crops; every category's graph has its pages and its rows in the export."""
    from analysis.services.explanatory_graph import graph_inputs, graph_layer_maps

    run_pk, _ = crop_graphs
    graphs = _crop_graphs(run_pk)
    graph = max(graphs, key=lambda g: (g.n_images, g.category))
    inputs = graph_inputs(graph)
    node = GraphNode.objects.filter(graph=graph, level=1).order_by("rank").first()
    groups = graph_purity_inferences(graph, layer="conv4", filter_index=node.filter, node=node.node)
    units, scores = graph_inference_arrays(graph, "conv4")
    chosen = energy_top_k(np.asarray(scores[:, node.flat]), 0.3)
    assert [group[0].image_index for group in groups] == inputs.images[chosen].tolist()
    layer = graph.network.layers.get(name="conv4")
    for group, r in zip(groups, chosen.tolist()):
        item = group[0]
        fx1, fy1, fx2, fy2 = inputs.frames[r]
        cy, cx = _centres(layer)[int(units[r, node.flat])]
        assert item.centre == pytest.approx((fy1 + cy * (fy2 - fy1) / 112, fx1 + cx * (fx2 - fx1) / 112))
        assert item.box[2] - item.box[0] == pytest.approx(PATCH_FRACTION * (fx2 - fx1))
    peaks = graph_purity_inferences(graph, layer="conv4", filter_index=node.filter, mode="peaks")
    crop_maps = np.asarray(graph_layer_maps(graph, layer), dtype=np.float64)
    expected = energy_top_k(crop_maps[:, node.filter].reshape(len(inputs.images), -1).max(1), 0.3)
    assert [group[0].input_row for group in peaks] == expected.tolist()
    assert purity_patch_picture(graph, groups).width > 0

    listing = researcher_client.get(reverse("analysis:network_graphs", args=["egnet"])).content.decode()
    for other in graphs:
        assert reverse("analysis:graph_detail", args=[other.pk]) in listing
    page = researcher_client.get(reverse("analysis:graph_detail", args=[graph.pk])).content.decode()
    assert f"The graph of <strong>{graph.category}</strong>" in page and "object crops (each object box" in page
    page = researcher_client.get(reverse("analysis:graph_layer", args=[graph.pk, "conv4"])).content.decode()
    assert f"graph of {graph.category}" in page
    page = researcher_client.get(reverse("analysis:graph_node", args=[graph.pk, node.pk])).content.decode()
    assert f"object crops of {graph.category}" in page
    png = researcher_client.get(reverse("analysis:graph_filter_patches", args=[graph.pk, "conv4", node.filter]))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"

    files = {path.name: path for path in run_export(run=graph.run, out_dir=tmp_path)}
    with open(files["nodes.csv"]) as handle:
        categories = [row["category"] for row in csv.DictReader(handle)]
    assert sorted(set(categories)) == [g.category for g in graphs]
    assert len(categories) == sum(g.n_nodes for g in graphs)
    with open(files["inputs.csv"]) as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] == graph.category]
    assert [int(row["image"]) for row in rows] == inputs.images.tolist()
    np.testing.assert_allclose([[float(row[k]) for k in ("x1", "y1", "x2", "y2")] for row in rows], inputs.frames)


def test_a_pooled_graph_names_no_category():
    from analysis.params import ParamsError
    from analysis.services.explanatory_graph import graph_params

    with pytest.raises(ParamsError) as error:
        graph_params(network="n", dataset="d", layers=["a"], graphs="pooled", category="car")
    assert "category" in error.value.errors
