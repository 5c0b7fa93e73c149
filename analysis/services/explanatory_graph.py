"""Explanatory graphs (Zhang et al. AAAI'18): learning (a Run), location instability against raw filters, export,
and the reads the pages and the crowd purity task need.

``explanatory_graph`` (``gpu`` queue) reads each chosen layer's float16 activation cache (running the layer's
extraction first, inline, when there is none, as ``dissect`` does), places every unit at its receptive-field
centre on the network's input plane (:func:`analysis.engine.receptive_field.unit_centers`; one plane unit = the
input's longer side) and learns the graph top-down with :func:`analysis.engine.explanatory_graph.learn_graph` on
the ``learn_split`` images (paper: the training images; ``max_learn_images`` draws a seeded subset). Every node is
then inferred on every image of the dataset; the inference arrays are memory maps under
``UNITSCOPE_DATA_DIR/explanatory_graphs/<run id>/``. ``min_sigma``, the floor of every σ (the paper sets none),
defaults to each layer's stride/√12 (plane units): the spread of a position known only to its unit cell.

Location instability (AAAI'18 Table 1) is measured on the ``eval_split`` images (paper: testing images) against
landmarks = the centres of the boxes of the chosen part classes (``landmarks``; by default the three part classes on
most of the category's objects, as the paper takes three parts of its category — head, back, tail of a bird; the
first instance when an image has several, on an object of the category when one is set), distances normalised by
the image diagonal.

``category`` (an object class) learns the graph of that category on the images holding it and measures it there —
the paper learns one graph per category, but on *object crops* of a network fine-tuned on that category; here the
images are whole (the shared extraction's maps) and the network the one registered. Blank (default): one graph over
every image. (Crops are not implemented for graphs; the README lists this difference.) Patterns: the
``top_patterns`` nodes of each layer with the highest Σ_I S_V^I and, as the baseline, the ``top_patterns`` raw
filters with the highest Σ_I max activation, each localised at its highest unit (Zhou et al. 2015); per pattern the
``top_images`` highest-scoring images (paper: 500 patterns, 20 images). Rows of :class:`GraphInstability` keep the
per-pattern values that enter the means.

Purity (for the crowd task, built in ``annotation``): :func:`graph_purity_candidates` lists the top-D nodes of a layer
(the paper's comparison set) with their K; :func:`graph_purity_inferences` returns, for a node or a raw filter, its
top-K inferences with K by the paper's 30 % inference-energy rule, as image indices, scores and patch boxes in
dataset-image pixels; :func:`purity_patch_picture` draws them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction

from analysis import params as p
from analysis.jobs import GPU_QUEUE, JobKind, register_job_kind
from analysis.models import (
    AnnotatedBox,
    Dataset,
    ExplanatoryGraph,
    GraphEdge,
    GraphInstability,
    GraphNode,
    Layer,
    Network,
    Run,
)
from analysis.storage import artifact_store, fetch, local_path, publish, stored_path
from unitscope.spreadsheets import csv_writer

from .extraction import open_activation_cache
from .inputs import ensure_extraction, layer_geometry
from .runs import RunInputError, RunProgress, run_layers, run_network_and_dataset, run_start

GRAPH_DIR = "explanatory_graphs"
MAX_LAYERS = 6
PATTERN_CHUNK = 512
PURITY_FRACTION = 0.3


IMAGE_SPLITS = ("train", "val")


def _graph_rules(params: dict[str, Any]) -> None:
    names, nodes = params["layers"], params["nodes_per_filter"]
    if len(set(names)) != len(names):
        raise p.ParamsError({"layers": f"name between 1 and {MAX_LAYERS} distinct layers"})
    if nodes is not None and len(nodes) != len(names):
        raise p.ParamsError(
            {
                "nodes_per_filter": f"needs one count per layer, top layer first ({len(names)} layers, "
                f"{len(nodes)} counts)"
            }
        )
    params["landmarks"] = [name for name in params["landmarks"] if name]


GRAPH_PARAMS = p.ParamSchema(
    {
        "network": p.name(),
        "dataset": p.name(),
        "layers": p.Param(
            str,
            many=True,
            min_items=1,
            max_items=MAX_LAYERS,
            help="conv layers of the graph (learned top-down whatever the order)",
        ),
        "nodes_per_filter": p.Param(
            int,
            None,
            low=1,
            high=200,
            many=True,
            min_items=1,
            max_items=MAX_LAYERS,
            nullable=True,
            help="nodes per filter N, one count per layer from the top "
            "(null: 10, 20, 40 from the top, the paper's values)",
        ),
        "neighbours": p.integers(1, 200, 15, help="upper-layer neighbours M per node"),
        "tau": p.Param(float, 0.1, low=0, low_open=True, help="noise density τ"),
        "iterations": p.integers(1, 500, 20, help="EM iterations T"),
        "beta": p.Param(float, 1.0, low=0, low_open=True, help="entities per unit response β"),
        "init_sigma": p.Param(float, 0.1, low=0, low_open=True, help="initial σ of every node (plane units)"),
        "min_sigma": p.Param(
            float,
            None,
            low=0,
            low_open=True,
            nullable=True,
            help="floor of every σ (null: the unit cell's quantisation, stride/√12)",
        ),
        "fit_top_sigma": p.Param(bool, False, help="also fit the top layer's σ"),
        "neighbour_penalty": p.Param(
            bool,
            True,
            help="eq. 3 as written: a node is less compatible where its upper "
            "neighbours disagree (false: normalise per image)",
        ),
        "seed": p.seed(),
        "batch_size": p.integers(1, 1024, 16),
        "category": p.Param(
            str,
            "",
            max_length=100,
            blank=True,
            help="an object class: learn the graph of that category on the images holding it and "
            "measure it on its own objects' landmarks (the paper: one graph per category); "
            "blank: every image, every class",
        ),
        "learn_split": p.choice(IMAGE_SPLITS, "train", help="the images the graph learns from (paper: training)"),
        "max_learn_images": p.integers(0, 10**9, 0, help="learn on a seeded subset of the learning images (0 = all)"),
        "quantile": p.fraction(0.995, help="the extraction's threshold level (reused or extracted first)"),
        "landmarks": p.Param(
            str,
            [],
            many=True,
            unique_sorted=True,
            max_length=100,
            blank=True,
            help="part classes whose box centres are the landmarks of location instability (empty: "
            "the three part classes on most of the category's objects, as the paper picks three "
            "parts of its category)",
        ),
        "eval_split": p.choice(
            IMAGE_SPLITS, "val", help="the images location instability is measured on (paper: testing images)"
        ),
        "top_patterns": p.integers(
            1, 10**6, 500, help="nodes (and raw filters) per layer whose instability is measured"
        ),
        "top_images": p.integers(
            2, 10**4, 20, help="highest-scoring images per pattern the instability is measured on"
        ),
        "instability": p.choice(
            ("aaai", "arxiv"),
            "aaai",
            help="mean of the per-landmark stds (AAAI'18) or the root of their mean variance (arXiv)",
        ),
    },
    rules=_graph_rules,
)
GRAPH_DEFAULTS = GRAPH_PARAMS.defaults


def graph_params(*, network: str, dataset: str, layers: list[str], **overrides: Any) -> dict[str, Any]:
    """The full, validated parameters of an ``explanatory_graph`` run (defaults filled in; paper values where the
    paper gives them: τ=0.1, M=15, T=20, β=1, N per layer 10, 20, 40 from the top)."""
    return GRAPH_PARAMS.validate({"network": network, "dataset": dataset, "layers": layers, **overrides})


def graph_run_start(
    *, network: str, dataset: str, layers: list[str], created_by=None, inline: bool = False, **overrides: Any
) -> Run:
    """Start (or reuse, when identical) an explanatory-graph run; returns its run."""
    run, _ = run_start(
        kind=EXPLANATORY_GRAPH.name,
        params=graph_params(network=network, dataset=dataset, layers=layers, **overrides),
        created_by=created_by,
        inline=inline,
    )
    return run


# -- geometry -------------------------------------------------------------------------------------------------------


def _input_positions(layer: Layer) -> np.ndarray:
    """float64 ``[h*w, 2]`` (y, x) of every unit (row-major) in input pixels."""
    from analysis.engine.receptive_field import unit_positions

    geometry = layer_geometry(layer, purpose="its units cannot be placed on the image plane")
    return unit_positions(geometry, layer.out_height, layer.out_width)


def _quantisation_sigma(layer: Layer, plane: float) -> float:
    """The default floor of every σ (plane units): a position known only to its unit cell has a per-coordinate
    standard deviation of stride/√12 (our choice; the paper sets no floor)."""
    return float(max(layer_geometry(layer, purpose="it has no unit cell").stride)) / math.sqrt(12) / plane


def _plane_unit(network: Network) -> float:
    return float(max(network.input_height, network.input_width))


def _patch_size(network: Network) -> float:
    """Fig. 5's fixed patch (70 px on 224 px inputs), as the same fraction of this network's input, input pixels."""
    from analysis.engine.explanatory_graph import PATCH_FRACTION

    return PATCH_FRACTION * _plane_unit(network)


# -- the run --------------------------------------------------------------------------------------------------------


def _category_images(dataset: Dataset, params: dict[str, Any]):
    """The dataset's images, or (``category``) those holding an object box of that class."""
    images = dataset.images.all()
    if params["category"]:
        images = images.filter(boxes__kind=AnnotatedBox.Kind.OBJECT, boxes__concept__name=params["category"]).distinct()
    return images


def _learn_rows(dataset: Dataset, params: dict[str, Any]) -> np.ndarray:
    rows = np.array(
        _category_images(dataset, params)
        .filter(split=params["learn_split"])
        .order_by("index")
        .values_list("index", flat=True),
        dtype=np.int64,
    )
    if not len(rows):
        which = f" holding a {params['category']!r}" if params["category"] else ""
        raise RunInputError(f"{dataset.name} has no {params['learn_split']!r} images{which} to learn from.")
    if params["max_learn_images"] and len(rows) > params["max_learn_images"]:
        rng = np.random.default_rng([params["seed"], 9])
        rows = np.sort(rng.choice(rows, size=params["max_learn_images"], replace=False))
    return rows


def _ordered_layers(network: Network, names: list[str]) -> list[Layer]:
    return sorted(run_layers(network, names).values(), key=lambda layer: -layer.order)  # top layer first


def graph_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.explanatory_graph import LayerConfig, LayerSource, default_nodes_per_filter, learn_graph

    params = graph_params(**run.params)
    network, dataset = run_network_and_dataset(params)
    layers = _ordered_layers(network, params["layers"])
    nodes = params["nodes_per_filter"] or default_nodes_per_filter(len(layers))
    if params["nodes_per_filter"] is not None:  # given in the order the researcher named the layers
        by_name = dict(zip(params["layers"], params["nodes_per_filter"]))
        nodes = [by_name[layer.name] for layer in layers]
    plane = _plane_unit(network)
    extractions, maps, sources = {}, {}, []
    for layer in layers:
        progress.phase(f"Finding the activations of {layer.name} on {dataset.name}")
        extraction = ensure_extraction(network, dataset, layer, params["quantile"], progress)
        extractions[layer.name] = extraction
        maps[layer.name] = open_activation_cache(extraction)
        positions = torch.from_numpy(_input_positions(layer) / plane).to(torch.float32)
        cache = maps[layer.name]
        sources.append(
            LayerSource(
                layer.name, lambda rows, cache=cache: np.asarray(cache[rows], dtype=np.float32), positions, layer.units
            )
        )
    configs = [
        LayerConfig(
            nodes_per_filter=n,
            neighbours=params["neighbours"],
            tau=params["tau"],
            iterations=params["iterations"],
            beta=params["beta"],
            init_sigma=params["init_sigma"],
            min_sigma=params["min_sigma"] or _quantisation_sigma(layer, plane),
            fit_top_sigma=params["fit_top_sigma"],
            neighbour_penalty=params["neighbour_penalty"],
        )
        for n, layer in zip(nodes, layers)
    ]
    learn_rows = _learn_rows(dataset, params)
    params = {**params, "landmarks": params["landmarks"] or _automatic_landmarks(dataset, params["category"])}
    key = f"{GRAPH_DIR}/{run.pk}"
    directory = artifact_store().path(key)
    directory.mkdir(parents=True, exist_ok=True)

    def allocate(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        suffix = "i32" if dtype == "int32" else "f32"
        return np.memmap(directory / f"{name}.{suffix}", dtype=dtype, mode="w+", shape=shape)

    state = {"phase": None}

    def report(phase: str, done: int, total: int) -> None:
        if phase != state["phase"]:
            progress.phase(phase, total)
            state["phase"] = phase
        progress(done, total)

    result = learn_graph(
        sources,
        configs,
        learn_rows=learn_rows,
        n_images=dataset.image_count,
        allocate=allocate,
        seed=params["seed"],
        batch_size=params["batch_size"],
        device=torch.device(device),
        progress=report,
    )
    for name in result.units:
        result.units[name].flush()
        result.scores[name].flush()
    progress.phase("Saving the graph", total=len(layers))
    with transaction.atomic():
        graph = ExplanatoryGraph.objects.create(
            run=run,
            network=network,
            dataset=dataset,
            layers=[layer.name for layer in layers],
            extraction_runs={name: extraction.run_id for name, extraction in extractions.items()},
            params={key: params[key] for key in GRAPH_DEFAULTS} | {"nodes_per_filter": nodes},
            directory=stored_path(directory),
            n_images=dataset.image_count,
            n_learn_images=len(learn_rows),
            plane_unit=plane,
            landmarks=params["landmarks"],
        )
        saved = _save_graph(graph, layers, result, progress)
        publish(directory)  # before the row is committed: pages and purity tasks elsewhere fetch it
    instability = _measure_instability(graph, layers, result, maps, params, progress)
    graph.instability = instability
    graph.n_nodes, graph.n_edges = saved
    graph.save(update_fields=["instability", "n_nodes", "n_edges"])
    return {
        "graph": graph.pk,
        "layers": graph.layers,
        "nodes": saved[0],
        "edges": saved[1],
        "learn_images": len(learn_rows),
        "instability": instability,
        "extraction_runs": graph.extraction_runs,
    }


def _save_graph(graph: ExplanatoryGraph, layers: list[Layer], result, progress: RunProgress) -> tuple[int, int]:
    """Arrays to ``<layer>.npz``, nodes and edges to rows; returns ``(nodes, edges)``."""
    plane = graph.plane_unit
    directory = local_path(graph.directory)
    upper_rows: dict[int, GraphNode] | None = None
    upper_layer = None
    n_nodes = n_edges = 0
    for level, (layer, learned) in enumerate(zip(layers, result.layers)):
        mu = learned.mu.cpu().numpy().astype(np.float64) * plane
        sigma2 = learned.sigma2.cpu().numpy().astype(np.float64)
        edges = learned.edges.cpu().numpy()
        mass = learned.mass.cpu().numpy()
        noise = learned.noise_mass.cpu().numpy()
        totals = np.asarray(result.scores[layer.name], dtype=np.float64).sum(0)
        np.savez(
            directory / f"{layer.name}.npz",
            mu=mu,
            sigma2=sigma2 * plane**2,
            edges=edges,
            normalizer=learned.normalizer.cpu().numpy(),
            mass=mass,
            noise_mass=noise,
            fit_sigma2=learned.fit_sigma2.cpu().numpy() * plane**2,
            log_likelihood=np.array(learned.log_likelihood),
            score_total=totals,
        )
        per_filter = learned.nodes_per_filter
        filter_mass = mass.sum(1) + noise
        order = np.argsort(-totals, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        rows = []
        for flat in range(learned.n_nodes):
            d, n = divmod(flat, per_filter)
            rows.append(
                GraphNode(
                    graph=graph,
                    layer=layer,
                    level=level,
                    filter=d,
                    node=n,
                    flat=flat,
                    mu_y=float(mu[d, n, 0]),
                    mu_x=float(mu[d, n, 1]),
                    sigma=float(math.sqrt(sigma2[d, n]) * plane),
                    mass=float(mass[d, n] / filter_mass[d]) if filter_mass[d] > 0 else 0.0,
                    score_total=float(totals[flat]),
                    rank=int(rank[flat]),
                )
            )
        GraphNode.objects.bulk_create(rows, batch_size=2000)
        current = {row.flat: row for row in GraphNode.objects.filter(graph=graph, layer=layer)}
        n_nodes += len(current)
        if upper_rows is not None:
            edge_rows = []
            for flat, child in current.items():
                for order_index, parent_flat in enumerate(edges[flat].tolist()):
                    parent = upper_rows[parent_flat]
                    edge_rows.append(
                        GraphEdge(
                            graph=graph,
                            child=child,
                            parent=parent,
                            order=order_index,
                            dx=child.mu_x - parent.mu_x,
                            dy=child.mu_y - parent.mu_y,
                        )
                    )
            GraphEdge.objects.bulk_create(edge_rows, batch_size=5000)
            n_edges += len(edge_rows)
        upper_rows, upper_layer = current, layer
        progress(level + 1, len(layers))
    del upper_layer
    return n_nodes, n_edges


def _image_table(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(heights, widths)`` float64 ``[I]`` of the dataset's images by index."""
    values = np.array(dataset.images.order_by("index").values_list("height", "width"), dtype=np.float64)
    return values[:, 0], values[:, 1]


def _automatic_landmarks(dataset: Dataset, category: str, count: int = 3) -> list[str]:
    """The paper measures instability against three landmark parts of its category (head, back and tail of a bird);
    without named landmarks we take the ``count`` part classes found on the most objects of ``category`` (every
    object class when blank), ties by name, sorted by name."""
    from collections import Counter

    objects = AnnotatedBox.objects.filter(image__dataset=dataset, kind=AnnotatedBox.Kind.OBJECT)
    if category:
        objects = objects.filter(concept__name=category)
    owners = set(objects.values_list("image_id", "object_index"))
    parts = AnnotatedBox.objects.filter(image__dataset=dataset, kind=AnnotatedBox.Kind.PART).values_list(
        "image_id", "object_index", "concept__name"
    )
    found = Counter(
        name for image, obj, name in {(image, obj, name) for image, obj, name in parts} if (image, obj) in owners
    )
    return sorted(name for name, _ in sorted(found.items(), key=lambda item: (-item[1], item[0]))[:count])


def _landmarks(dataset: Dataset, names: list[str], n_images: int, category: str = "") -> np.ndarray:
    """float64 ``[I, K, 2]`` (y, x) box centres of each named part (first instance; with ``category``, the first
    instance on an object of that class), NaN where absent."""
    out = np.full((n_images, len(names), 2), np.nan)
    boxes = (
        AnnotatedBox.objects.filter(image__dataset=dataset, kind=AnnotatedBox.Kind.PART, concept__name__in=names)
        .order_by("image__index", "concept__name", "instance", "object_index", "id")
        .values_list("image__index", "concept__name", "object_index", "x1", "y1", "x2", "y2")
    )
    owners = None
    if category:
        owners = set(
            AnnotatedBox.objects.filter(
                image__dataset=dataset, kind=AnnotatedBox.Kind.OBJECT, concept__name=category
            ).values_list("image__index", "object_index")
        )
    position = {name: k for k, name in enumerate(names)}
    for index, name, obj, x1, y1, x2, y2 in boxes:
        if owners is not None and (index, obj) not in owners:
            continue
        k = position[name]
        if np.isnan(out[index, k, 0]):
            out[index, k] = ((y1 + y2) / 2, (x1 + x2) / 2)
    return out


def _measure_instability(
    graph: ExplanatoryGraph, layers: list[Layer], result, maps, params, progress
) -> dict[str, Any]:
    import torch

    from analysis.engine.explanatory_graph import FilterPeakTally, pattern_instability

    dataset, network = graph.dataset, graph.network
    names = params["landmarks"]
    rows = np.array(
        _category_images(dataset, params)
        .filter(split=params["eval_split"])
        .order_by("index")
        .values_list("index", flat=True),
        dtype=np.int64,
    )
    if not len(rows):
        rows = np.array(
            _category_images(dataset, params).order_by("index").values_list("index", flat=True), dtype=np.int64
        )
    landmarks = _landmarks(dataset, names, dataset.image_count, params["category"])[rows]
    if not names or np.isnan(landmarks).all():
        return {"note": f"no landmark parts ({', '.join(names) or 'none named'}) on the evaluation images"}
    heights, widths = _image_table(dataset)
    scale = np.stack([heights[rows] / network.input_height, widths[rows] / network.input_width], axis=1)  # [I, 2]
    measure = dict(
        landmarks=torch.from_numpy(landmarks),
        diagonals=torch.from_numpy(np.hypot(heights[rows], widths[rows])),
        top_images=params["top_images"],
        combine=params["instability"],
        chunk=PATTERN_CHUNK,
    )
    summary: dict[str, Any] = {}
    progress.phase("Location instability of nodes and raw filters", total=len(layers))
    for done, layer in enumerate(layers, start=1):
        unit_pos = _input_positions(layer)  # [P, 2]
        nodes = list(GraphNode.objects.filter(graph=graph, layer=layer).order_by("rank")[: params["top_patterns"]])
        columns = [node.flat for node in nodes]
        value, stds = pattern_instability(
            unit_pos,
            np.asarray(result.units[layer.name][rows])[:, columns],
            np.asarray(result.scores[layer.name][rows])[:, columns],
            scale,
            **measure,
        )
        node_rows = [
            _instability_row(
                graph,
                layer,
                GraphInstability.Kind.NODE,
                node.filter,
                node,
                node.rank,
                value[position],
                stds[position],
                names,
            )
            for position, node in enumerate(nodes)
        ]
        node_values = [float(v) for v in value]
        # Raw filters: each filter's highest unit on each evaluation image; ranked by Σ_I max activation (all images).
        cache = maps[layer.name]
        peaks = FilterPeakTally(dataset.image_count, layer.units, rows)
        for start in range(0, dataset.image_count, 256):
            block = np.arange(start, min(dataset.image_count, start + 256))
            peaks.add(block, np.asarray(cache[block], dtype=np.float32))
        filter_order = peaks.ranking(params["top_patterns"])
        value, stds = pattern_instability(
            unit_pos,
            peaks.peak_unit[:, filter_order],
            peaks.peak_value[rows][:, filter_order].astype(np.float64),
            scale,
            **{**measure, "chunk": max(1, len(filter_order))},
        )
        filter_rows = [
            _instability_row(
                graph, layer, GraphInstability.Kind.FILTER, int(d), None, rank, value[rank - 1], stds[rank - 1], names
            )
            for rank, d in enumerate(filter_order.tolist(), start=1)
        ]
        GraphInstability.objects.bulk_create(node_rows + filter_rows, batch_size=2000)
        node_mean = _nanmean(node_values)
        filter_mean = _nanmean([float(v) for v in value])
        summary[layer.name] = {
            "nodes": node_mean,
            "filters": filter_mean,
            "node_patterns": len(nodes),
            "filter_patterns": len(filter_order),
            "images": int(len(rows)),
        }
        progress(done, len(layers))
    return summary


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else None


def _instability_row(graph, layer, kind, filter_index, node, rank, value, stds, names) -> GraphInstability:
    value = float(value)
    return GraphInstability(
        graph=graph,
        layer=layer,
        kind=kind,
        filter=int(filter_index),
        node=node,
        rank=int(rank),
        instability=value if value == value else None,
        per_landmark={name: float(s) for name, s in zip(names, stds.tolist()) if s == s},
    )


# -- reads for pages and the purity task ----------------------------------------------------------------------------


def graph_inference_arrays(graph: ExplanatoryGraph, layer_name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(units int32 [I, nodes], scores float32 [I, nodes])`` of a graph layer, read-only memory maps."""
    if layer_name not in graph.layers:
        raise RunInputError(f"The graph has no layer {layer_name!r}.")
    n_nodes = GraphNode.objects.filter(graph=graph, layer__name=layer_name).count()
    shape = (graph.n_images, n_nodes)
    return (
        np.memmap(fetch(f"{graph.directory}/{layer_name}-units.i32"), dtype=np.int32, mode="r", shape=shape),
        np.memmap(fetch(f"{graph.directory}/{layer_name}-scores.f32"), dtype=np.float32, mode="r", shape=shape),
    )


@dataclass(frozen=True)
class PatternInference:
    """One inference of a pattern on one image, for people to judge: ``box`` ``(x1, y1, x2, y2)`` in the dataset
    image's pixels (a fixed-size square around ``centre`` ``(y, x)``, Fig. 5's patch; may extend past the image)."""

    image_index: int
    score: float
    centre: tuple[float, float]
    box: tuple[float, float, float, float]


def _box(
    graph_network: Network, centre_input: np.ndarray, height: float, width: float
) -> tuple[tuple[float, float], tuple[float, float, float, float]]:
    sy, sx = height / graph_network.input_height, width / graph_network.input_width
    cy, cx = float(centre_input[0] * sy), float(centre_input[1] * sx)
    half_y, half_x = _patch_size(graph_network) * sy / 2, _patch_size(graph_network) * sx / 2
    return (cy, cx), (cx - half_x, cy - half_y, cx + half_x, cy + half_y)


def graph_node_inferences(
    node: GraphNode, *, limit: int | None = None, fraction: float | None = None, shown: int | None = None
) -> list[PatternInference]:
    """A node's inferences, best first: the ``limit`` top-scoring images, or (``fraction``) the paper's top-K with
    ``Σ_{i≤K} S ≥ fraction · Σ S`` (images where the node scores 0 are never shown), or (``fraction`` and
    ``shown``) the purity sample of :func:`analysis.engine.explanatory_graph.purity_sample`."""
    from analysis.engine.explanatory_graph import energy_top_k, purity_sample

    graph = node.graph
    units, scores = graph_inference_arrays(graph, node.layer.name)
    column = np.asarray(scores[:, node.flat], dtype=np.float64)
    if fraction is not None and shown is not None:
        chosen = purity_sample(column, fraction, shown)[0]
    elif fraction is not None:
        chosen = energy_top_k(column, fraction)
    else:
        chosen = np.argsort(-column, kind="stable")[:limit]
        chosen = chosen[column[chosen] > 0]
    positions = _input_positions(node.layer)
    heights, widths = _image_table(graph.dataset)
    out = []
    for index in chosen.tolist():
        centre, box = _box(graph.network, positions[int(units[index, node.flat])], heights[index], widths[index])
        out.append(PatternInference(image_index=int(index), score=float(column[index]), centre=centre, box=box))
    return out


def graph_filter_inferences(
    graph: ExplanatoryGraph,
    layer: Layer,
    filter_index: int,
    *,
    limit: int | None = None,
    fraction: float | None = None,
    mode: str = "peaks",
    shown: int | None = None,
) -> list[list[PatternInference]]:
    """A raw filter's inferences, best first, grouped per image (the paper's two purity baselines).

    ``mode="peaks"`` ("raw filter peaks"): one inference per image at the filter's highest unit, images ranked by that
    peak. ``mode="maps"`` ("raw filter maps"): every unit with a positive response, each drawn as a fixed-size patch
    around its receptive-field centre, images ranked by the map's activation energy (its sum). ``fraction`` applies
    the 30 % energy rule to K (with ``shown``: the purity sample, :func:`analysis.engine.explanatory_graph.
    purity_sample`); otherwise the ``limit`` top images.
    """
    from analysis.engine.explanatory_graph import energy_top_k, purity_sample

    if mode not in ("peaks", "maps"):
        raise RunInputError("mode must be 'peaks' or 'maps'.")
    extraction_run = graph.extraction_runs.get(layer.name)
    extraction = layer.extractions.filter(run_id=extraction_run, dataset=graph.dataset).first()
    if extraction is None:
        raise RunInputError(f"The activations of {layer.name} this graph read are gone.")
    maps = open_activation_cache(extraction)
    per_image = np.zeros(graph.n_images, dtype=np.float64)
    for start in range(0, graph.n_images, 512):
        block = np.asarray(maps[start : start + 512, filter_index], dtype=np.float64).reshape(
            -1, extraction.map_height * extraction.map_width
        )
        per_image[start : start + 512] = block.max(1) if mode == "peaks" else np.clip(block, 0, None).sum(1)
    if fraction is not None and shown is not None:
        chosen = purity_sample(per_image, fraction, shown)[0]
    elif fraction is not None:
        chosen = energy_top_k(per_image, fraction)
    else:
        chosen = np.argsort(-per_image, kind="stable")[:limit]
        chosen = chosen[per_image[chosen] > 0]
    positions = _input_positions(layer)
    heights, widths = _image_table(graph.dataset)
    out = []
    for index in chosen.tolist():
        flat = np.asarray(maps[index, filter_index], dtype=np.float64).ravel()
        units = [int(np.argmax(flat))] if mode == "peaks" else np.flatnonzero(flat > 0).tolist()
        group = []
        for unit in units:
            centre, box = _box(graph.network, positions[unit], heights[index], widths[index])
            group.append(
                PatternInference(image_index=int(index), score=float(per_image[index]), centre=centre, box=box)
            )
        out.append(group)
    return out


def graph_purity_inferences(
    graph: ExplanatoryGraph,
    *,
    layer: str,
    filter_index: int,
    node: int | None = None,
    mode: str = "node",
    fraction: float = PURITY_FRACTION,
    shown: int | None = None,
) -> list[list[PatternInference]]:
    """What a purity-count task shows (AAAI'18 Fig. 8): the top-K inferences of one pattern, K by the 30 % rule —
    or, with ``shown``, the ``shown`` images every pattern is judged on, drawn by the same rule for graph nodes and
    raw filters (:func:`analysis.engine.explanatory_graph.purity_sample`).

    ``mode="node"`` with ``node`` (index among the filter's nodes): the graph node's inferences (one per image, the
    K images with the highest S_V^I). ``mode="peaks"`` or ``"maps"``: the raw filter baselines of
    :func:`graph_filter_inferences`. Returns one list of :class:`PatternInference` per image, best image first;
    boxes are in dataset-image pixels, so a task can draw them on the dataset image or crop them
    (:func:`purity_patch_picture`). Workers count how many of the K describe the same object part.
    """
    layer_row = graph.network.layers.filter(name=layer).first()
    if layer_row is None or layer not in graph.layers:
        raise RunInputError(f"The graph has no layer {layer!r}.")
    if mode == "node":
        node_row = GraphNode.objects.filter(graph=graph, layer=layer_row, filter=filter_index, node=node).first()
        if node_row is None:
            raise RunInputError(f"No node {node} of filter {filter_index} in {layer}.")
        return [[item] for item in graph_node_inferences(node_row, fraction=fraction, shown=shown)]
    return graph_filter_inferences(graph, layer_row, filter_index, fraction=fraction, mode=mode, shown=shown)


def graph_purity_candidates(
    graph: ExplanatoryGraph, *, layer: str, count: int | None = None
) -> list[tuple[GraphNode, int]]:
    """The nodes a purity study compares with the layer's raw filters (AAAI'18 Fig. 8): the top-D nodes of ``layer``
    by Σ_I S_V^I, D = the layer's filter count unless ``count`` is given, each with its K (30 % rule), best first.
    (The paper reports the second graph layer; the raw-filter side is every filter, through
    :func:`graph_purity_inferences` with ``mode="peaks"`` or ``"maps"``.)"""
    from analysis.engine.explanatory_graph import energy_top_k

    layer_row = graph.network.layers.filter(name=layer).first()
    if layer_row is None or layer not in graph.layers:
        raise RunInputError(f"The graph has no layer {layer!r}.")
    nodes = list(
        GraphNode.objects.filter(graph=graph, layer=layer_row)
        .select_related("layer")
        .order_by("rank")[: count or layer_row.units]
    )
    _, scores = graph_inference_arrays(graph, layer)
    columns = np.asarray(scores[:, [node.flat for node in nodes]], dtype=np.float64) if nodes else np.zeros((0, 0))
    return [(node, len(energy_top_k(columns[:, position], PURITY_FRACTION))) for position, node in enumerate(nodes)]


def purity_patch_picture(
    graph: ExplanatoryGraph, groups: list[list[PatternInference]], *, columns: int = 8, tile: int = 72
):
    """A ``PIL.Image`` of the patches of ``groups`` (the first inference of each image), in order."""
    from analysis.engine.explanatory_graph import crop_patch, render_patch_grid

    from .grids import DatasetImageCache

    images = DatasetImageCache(graph.dataset, capacity=64)
    patches = []
    for group in groups:
        if not group:
            continue
        item = group[0]
        image = images[item.image_index]
        side = max(1, int(round(item.box[2] - item.box[0])))
        patches.append(crop_patch(image, item.centre, side))
    return render_patch_grid(patches, columns=columns, tile=tile)


# -- export ---------------------------------------------------------------------------------------------------------


def graph_export(run: Run, out_dir: Path) -> list[Path]:
    """``nodes.csv`` (``layer,filter,node,mu_x,mu_y,score_total``, plus ``sigma,mass,rank``), ``edges.csv``
    (``layer,filter,node,parent_layer,parent_filter,parent_node,order,dx,dy``), ``instability.csv``
    (``layer,kind,filter,node,rank,instability`` and one column per landmark) and ``run.json``. Positions in
    network-input pixels; scores exact (Python ``repr``)."""
    graph = ExplanatoryGraph.objects.select_related("network", "dataset").filter(run=run).first()
    if graph is None:
        raise RunInputError(f"Run {run.pk} holds no explanatory graph.")
    nodes_path = out_dir / "nodes.csv"
    with open(nodes_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["layer", "filter", "node", "mu_x", "mu_y", "score_total", "sigma", "mass", "rank"])
        for row in (
            GraphNode.objects.filter(graph=graph)
            .order_by("level", "flat")
            .values_list("layer__name", "filter", "node", "mu_x", "mu_y", "score_total", "sigma", "mass", "rank")
            .iterator()
        ):
            writer.writerow([row[0], row[1], row[2], *(repr(float(v)) for v in row[3:8]), row[8]])
    edges_path = out_dir / "edges.csv"
    with open(edges_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(
            ["layer", "filter", "node", "parent_layer", "parent_filter", "parent_node", "order", "dx", "dy"]
        )
        for row in (
            GraphEdge.objects.filter(graph=graph)
            .order_by("child__level", "child__flat", "order")
            .values_list(
                "child__layer__name",
                "child__filter",
                "child__node",
                "parent__layer__name",
                "parent__filter",
                "parent__node",
                "order",
                "dx",
                "dy",
            )
            .iterator()
        ):
            writer.writerow([*row[:7], repr(float(row[7])), repr(float(row[8]))])
    instability_path = out_dir / "instability.csv"
    with open(instability_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["layer", "kind", "filter", "node", "rank", "instability", *graph.landmarks])
        for item in (
            GraphInstability.objects.filter(graph=graph)
            .select_related("layer", "node")
            .order_by("layer__order", "kind", "rank")
        ):
            writer.writerow(
                [
                    item.layer.name,
                    item.kind,
                    item.filter,
                    item.node.node if item.node else "",
                    item.rank,
                    "" if item.instability is None else repr(item.instability),
                    *(
                        "" if item.per_landmark.get(name) is None else repr(item.per_landmark[name])
                        for name in graph.landmarks
                    ),
                ]
            )
    meta = out_dir / "run.json"
    meta.write_text(
        json.dumps(
            {
                "run": run.pk,
                "kind": run.kind,
                "params": run.params,
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                "network": graph.network.name,
                "weights_sha256": graph.network.weights_sha256,
                "dataset": graph.dataset.name,
                "dataset_dir": str(local_path(graph.dataset.root_dir)),
                "layers": graph.layers,
                "activations_runs": graph.extraction_runs,
                "images": graph.n_images,
                "learn_images": graph.n_learn_images,
                "nodes": graph.n_nodes,
                "edges": graph.n_edges,
                "landmarks": graph.landmarks,
                "instability": graph.instability,
                "rules": {
                    "positions": "receptive-field centres on the network input, pixels (mu_x, mu_y, dx, dy, sigma)",
                    "score_total": "sum over all images of S = F(x)·P(p_x|V)^2 at the inferred unit",
                    "instability": (
                        "mean over landmarks of the std of distance/diagonal"
                        if graph.params.get("instability") == "aaai"
                        else "sqrt of the mean over landmarks of the variance of distance/diagonal"
                    ),
                    "filters": "raw filter baseline: the highest unit of the filter's map (Zhou et al. 2015)",
                },
            },
            indent=2,
            default=str,
        )
    )
    return [nodes_path, edges_path, instability_path, meta]


EXPLANATORY_GRAPH = register_job_kind(
    JobKind(
        name="explanatory_graph",
        label="Explanatory graph",
        queue=GPU_QUEUE,
        execute=graph_run_execute,
        params=GRAPH_PARAMS,
        exporter=graph_export,
        soft_time_limit=12 * 3600,
        time_limit=12 * 3600 + 300,
        description="Zhang et al. AAAI'18: disentangles the part patterns mixed in each filter of a network's top conv "
        "layers into graph nodes (top-down EM), infers them on every image, and measures their location "
        "instability against raw filters.",
    )
)
