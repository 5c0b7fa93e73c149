"""Explanatory graphs (Zhang et al. AAAI'18): learning (a Run), location instability against raw filters, export,
and the reads the pages and the crowd purity task need.

**One graph per object category, learned on object crops** (the paper: "we first trained/fine-tuned a CNN using
object images of a category, which were cropped using object bounding boxes. Then, we learned an explanatory graph
to represent patterns of the category"). ``explanatory_graph`` (``gpu`` queue) learns, by default
(``graphs=per_category``), one :class:`~analysis.models.ExplanatoryGraph` per object category of the dataset, each
from that category's own inputs; ``category`` learns only one. Inputs (``inputs``, :class:`~analysis.models.
PartInputs`): ``object_crops`` (default, the paper's) — every object box of the category, enlarged by R-CNN's
context (``context``, 16/227 of the warped input per side, the policy part detection uses) and warped to the
network's input (:class:`analysis.services.inputs.ViewImages`); their maps come from forward passes and are cached
beside the graph as float16 (``<layer>-maps.f16``, refused, naming the units, beyond float16's range as the
extraction does). ``whole_images`` (the named variant): every image holding the category, read from the layers'
float16 activation caches (an extraction runs inline first when there is none). ``graphs=pooled`` learns one graph
over every category's inputs together (with whole images: every image of the dataset, this service's behaviour
before per-category graphs; not the paper's). The network is the one registered — the paper fine-tunes it per
category (our deliberate difference: graphs explain the network people study; the README says so).

Each graph's inputs are its rows: ``views.npz`` names each input's dataset image, object and *frame* (the image
region warped to the network input; the whole image for whole images). Every unit sits at its receptive-field
centre on the network's input plane (:func:`analysis.engine.receptive_field.unit_centers`; one plane unit = the
input's longer side), so an input position maps to image pixels through the input's frame. The graph is learned
top-down with :func:`analysis.engine.explanatory_graph.learn_graph` on the inputs of the ``learn_split`` images
(paper: the training images; ``max_learn_images`` draws a seeded subset per graph), then every node is inferred
on every input of the graph (``<layer>-units.i32`` / ``<layer>-scores.f32`` under
``UNITSCOPE_DATA_DIR/explanatory_graphs/<run id>/<graph>/``). ``min_sigma``, the floor of every σ (the paper sets
none), defaults to each layer's stride/√12 (plane units): the spread of a position known only to its unit cell.

Location instability (AAAI'18 Table 1) is measured per graph on the inputs of the ``eval_split`` images (paper:
testing images) against landmarks = the centres of the boxes of the chosen part classes (``landmarks``; by default
the three part classes on most of the category's objects, as the paper takes three parts of its category — head,
back, tail of a bird). On a crop the landmark is the part of the object the crop shows; on a whole image the first
instance on an object of the category. Distances are divided by the diagonal of the input's frame (the crop with
its context; the whole image). Patterns: the ``top_patterns`` nodes of each layer with the highest Σ_I S_V^I and,
as the baseline, the ``top_patterns`` raw filters with the highest Σ_I max activation over the same inputs, each
localised at its highest unit (Zhou et al. 2015); per pattern the ``top_images`` highest-scoring inputs (paper:
500 patterns, 20 images). Rows of :class:`GraphInstability` keep the per-pattern values that enter the means.

Purity (for the crowd task, built in ``annotation``): :func:`graph_purity_candidates` lists the top-D nodes of a
layer of one graph (the paper's comparison set) with their K; :func:`graph_purity_inferences` returns, for a node
or a raw filter, its top-K inferences over the graph's inputs (raw filters on the same crops) with K by the paper's
30 % inference-energy rule, as dataset image indices, scores and patch boxes in dataset-image pixels;
:func:`purity_patch_picture` draws them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction
from django.utils.text import slugify

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
    PartInputs,
    Run,
)
from analysis.storage import artifact_store, fetch, local_path, publish, stored_path
from unitscope.spreadsheets import csv_writer

from .extraction import open_activation_cache, refuse_float16_overflow
from .inputs import (
    RCNN_CONTEXT,
    View,
    ViewImages,
    dataset_boxes,
    ensure_extraction,
    layer_geometry,
    load_model,
    object_views,
)
from .runs import RunInputError, RunProgress, run_layers, run_network_and_dataset, run_start

GRAPH_DIR = "explanatory_graphs"
MAX_LAYERS = 6
PATTERN_CHUNK = 512
PURITY_FRACTION = 0.3
PER_CATEGORY, POOLED = "per_category", "pooled"
GRAPH_SCOPES = (PER_CATEGORY, POOLED)


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
    if params["graphs"] == POOLED and params["category"]:
        raise p.ParamsError(
            {"category": "a pooled graph covers every category: leave the category blank, or learn per category"}
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
        "inputs": p.choice(
            PartInputs.values,
            PartInputs.OBJECT_CROPS.value,
            help="object_crops (AAAI'18): each object box of the category with R-CNN context, warped to the "
            "network input (forward passes); whole_images: the images holding the category (cached activations)",
        ),
        "context": p.Param(
            float,
            RCNN_CONTEXT,
            low=0,
            high=0.4,
            high_open=True,
            help="object crops: the share of the input on each side of the box (R-CNN's 16/227, as part detection)",
        ),
        "graphs": p.choice(
            GRAPH_SCOPES,
            PER_CATEGORY,
            help="per_category: one graph per object category of the dataset, each on its own inputs (AAAI'18); "
            "pooled: one graph over every category's inputs (with whole images, every image), not the paper's",
        ),
        "category": p.Param(
            str,
            "",
            max_length=100,
            blank=True,
            help="an object class: learn only that category's graph (blank: one graph per category)",
        ),
        "learn_split": p.choice(IMAGE_SPLITS, "train", help="the images the graph learns from (paper: training)"),
        "max_learn_images": p.integers(
            0, 10**9, 0, help="learn each graph on a seeded subset of its learning inputs (0 = all)"
        ),
        "quantile": p.fraction(
            0.995, help="whole images: the extraction's threshold level (reused or extracted first)"
        ),
        "landmarks": p.Param(
            str,
            [],
            many=True,
            unique_sorted=True,
            max_length=100,
            blank=True,
            help="part classes whose box centres are the landmarks of location instability (empty: "
            "the three part classes on most of each category's objects, as the paper picks three "
            "parts of its category)",
        ),
        "eval_split": p.choice(
            IMAGE_SPLITS, "val", help="the images location instability is measured on (paper: testing images)"
        ),
        "top_patterns": p.integers(
            1, 10**6, 500, help="nodes (and raw filters) per layer whose instability is measured"
        ),
        "top_images": p.integers(
            2, 10**4, 20, help="highest-scoring inputs per pattern the instability is measured on"
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
    paper gives them: τ=0.1, M=15, T=20, β=1, N per layer 10, 20, 40 from the top; one graph per category on object
    crops)."""
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


# -- a graph's inputs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphInputs:
    """The inputs of one graph, in the row order of its arrays: ``images`` int64 ``[V]`` (dataset index),
    ``objects`` int64 ``[V]`` (the ``object_index`` a crop shows; -1 for a whole image), ``frames`` float64
    ``[V, 4]`` ``(x1, y1, x2, y2)`` (the image region, in image pixels, warped to the network input; may extend past
    the image, padded with the mean colour) and ``splits`` ``[V]`` (each image's split)."""

    category: str
    images: np.ndarray
    objects: np.ndarray
    frames: np.ndarray
    splits: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def rows(self, split: str) -> np.ndarray:
        """int64: the rows of the inputs whose image is in ``split``."""
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def scale(self, network: Network) -> np.ndarray:
        """float64 ``[V, 2]``: image pixels per input pixel ``(y, x)`` of each input."""
        heights = self.frames[:, 3] - self.frames[:, 1]
        widths = self.frames[:, 2] - self.frames[:, 0]
        return np.stack([heights / network.input_height, widths / network.input_width], axis=1)

    def views(self) -> list[View]:
        return [
            View(int(image), tuple(map(float, frame)), int(obj), tuple(map(float, frame)))
            for image, obj, frame in zip(self.images, self.objects, self.frames)
        ]


def _as_inputs(category: str, views: list[View], splits: dict[int, str]) -> GraphInputs:
    return GraphInputs(
        category=category,
        images=np.array([view.image for view in views], dtype=np.int64),
        objects=np.array([view.object_index for view in views], dtype=np.int64),
        frames=np.array([view.frame for view in views], dtype=np.float64).reshape(-1, 4),
        splits=np.array([splits[view.image] for view in views], dtype=str),
    )


def graph_inputs_for(dataset: Dataset, params: dict[str, Any]) -> list[GraphInputs]:
    """The graphs a run learns and each one's inputs, categories by name: per category (every object class with a
    box in the dataset, or only ``category``) its object crops (every object box, R-CNN context) or the images
    holding it; pooled, one graph over every object crop, or over every image of the dataset."""
    boxes = dataset_boxes(dataset, "all")
    splits = dict(dataset.images.values_list("index", "split"))
    classes = sorted((boxes.concepts[class_id].name, class_id) for class_id in boxes.objects)
    if params["graphs"] == POOLED:
        if params["inputs"] == PartInputs.WHOLE_IMAGES:
            views = [
                View(index, (0.0, 0.0, float(width), float(height)), -1, (0.0, 0.0, float(width), float(height)))
                for index, (height, width) in sorted(boxes.sizes.items())
            ]
        else:
            views = sorted(
                (
                    view
                    for _, class_id in classes
                    for view in object_views(boxes, class_id, params["inputs"], params["context"])
                ),
                key=lambda view: (view.image, view.object_index),
            )
        return [_as_inputs("", views, splits)]
    if params["category"]:
        classes = [(name, class_id) for name, class_id in classes if name == params["category"]]
        if not classes:
            raise RunInputError(f"{dataset.name} has no object boxes of {params['category']!r}.")
    if not classes:
        raise RunInputError(
            f"{dataset.name} has no object boxes, so no category to learn a graph of (graphs=pooled with "
            "inputs=whole_images learns one over every image)."
        )
    return [
        _as_inputs(name, object_views(boxes, class_id, params["inputs"], params["context"]), splits)
        for name, class_id in classes
    ]


def _learn_rows(inputs: GraphInputs, params: dict[str, Any]) -> np.ndarray:
    """The rows a graph learns from: its inputs on ``learn_split`` images, a seeded subset of
    ``max_learn_images`` when there are more (empty when it has none)."""
    rows = inputs.rows(params["learn_split"])
    if params["max_learn_images"] and len(rows) > params["max_learn_images"]:
        rng = np.random.default_rng([params["seed"], 9])
        rows = np.sort(rng.choice(rows, size=params["max_learn_images"], replace=False))
    return rows


def graph_inputs(graph: ExplanatoryGraph) -> GraphInputs:
    """The inputs of a stored graph (``views.npz``); graphs made before per-category graphs have none, and their
    inputs are the dataset's images in index order."""
    try:
        stored = np.load(fetch(f"{graph.directory}/views.npz"))
    except FileNotFoundError:
        table = list(graph.dataset.images.order_by("index").values_list("index", "height", "width", "split"))
        return GraphInputs(
            category=graph.category,
            images=np.array([row[0] for row in table], dtype=np.int64),
            objects=np.full(len(table), -1, dtype=np.int64),
            frames=np.array([(0.0, 0.0, float(row[2]), float(row[1])) for row in table], dtype=np.float64),
            splits=np.array([row[3] for row in table], dtype=str),
        )
    return GraphInputs(
        category=graph.category,
        images=stored["images"],
        objects=stored["objects"],
        frames=stored["frames"],
        splits=stored["splits"],
    )


class _ImageRows:
    """The whole-image maps of a graph's inputs: row ``r`` is the activation cache's row of input ``r``'s image."""

    def __init__(self, cache: np.ndarray, images: np.ndarray) -> None:
        self.cache, self.images = cache, images
        self.shape = (len(images), *cache.shape[1:])

    def __getitem__(self, key) -> np.ndarray:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        return self.cache[(self.images[rows], *rest)]


def _crop_maps(
    inputs: GraphInputs,
    layers: list[Layer],
    directory: Path,
    *,
    model,
    images: ViewImages,
    batch_size: int,
    progress: RunProgress,
) -> dict[str, np.ndarray]:
    """Forward passes on the graph's object crops: ``{layer: float16 [V, D, h, w]}`` memory maps
    ``<layer>-maps.f16`` in ``directory`` (float16 like the whole-image cache, so both variants read maps of one
    precision; a run whose maps leave float16's range fails naming the units), and ``maps.json`` with their
    shapes."""
    import torch

    from analysis.engine.networks import capture_forward

    views = inputs.views()
    names = [layer.name for layer in layers]
    out: dict[str, np.ndarray] = {}
    progress.phase(f"{inputs.category or 'every category'}: forward passes on {len(views)} object crops", len(views))
    with torch.no_grad():
        for start in range(0, len(views), batch_size):
            batch = views[start : start + batch_size]
            captured = capture_forward(model, images.inputs(batch, PartInputs.OBJECT_CROPS), names)
            for name, value in captured.items():
                refuse_float16_overflow(name, value, inputs.images[start : start + len(batch)])
                if name not in out:
                    out[name] = np.memmap(
                        directory / f"{name}-maps.f16",
                        dtype=np.float16,
                        mode="w+",
                        shape=(len(views), *value.shape[1:]),
                    )
                out[name][start : start + len(batch)] = value.to(torch.float16).cpu().numpy()
            progress(min(start + batch_size, len(views)), len(views))
    for maps in out.values():
        maps.flush()
    (directory / "maps.json").write_text(json.dumps({name: list(maps.shape) for name, maps in out.items()}))
    return out


def graph_layer_maps(graph: ExplanatoryGraph, layer: Layer):
    """The maps a graph read for ``layer``, one row per input (float16 ``[V, D, h, w]``, indexable by rows): the
    crops' maps beside the graph, or the rows of the whole-image activation cache this graph read."""
    if graph.inputs == PartInputs.OBJECT_CROPS:
        try:
            shapes = json.loads(Path(fetch(f"{graph.directory}/maps.json")).read_text())
            path = fetch(f"{graph.directory}/{layer.name}-maps.f16")
        except FileNotFoundError:
            raise RunInputError(f"The crop maps of {layer.name} this graph read are gone.") from None
        return np.memmap(path, dtype=np.float16, mode="r", shape=tuple(shapes[layer.name]))
    extraction_run = graph.extraction_runs.get(layer.name)
    extraction = layer.extractions.filter(run_id=extraction_run, dataset=graph.dataset).first()
    if extraction is None:
        raise RunInputError(f"The activations of {layer.name} this graph read are gone.")
    return _ImageRows(open_activation_cache(extraction), graph_inputs(graph).images)


# -- the run --------------------------------------------------------------------------------------------------------


def _ordered_layers(network: Network, names: list[str]) -> list[Layer]:
    return sorted(run_layers(network, names).values(), key=lambda layer: -layer.order)  # top layer first


def _graph_folder(position: int, category: str) -> str:
    return f"{position:02d}-{slugify(category) or 'category'}" if category else "pooled"


def graph_run_execute(*, run: Run, progress: RunProgress, device: str) -> dict[str, Any]:
    import torch

    from analysis.engine.explanatory_graph import LayerConfig, default_nodes_per_filter

    params = graph_params(**run.params)
    network, dataset = run_network_and_dataset(params)
    layers = _ordered_layers(network, params["layers"])
    nodes = params["nodes_per_filter"] or default_nodes_per_filter(len(layers))
    if params["nodes_per_filter"] is not None:  # given in the order the researcher named the layers
        by_name = dict(zip(params["layers"], params["nodes_per_filter"]))
        nodes = [by_name[layer.name] for layer in layers]
    plane = _plane_unit(network)
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
    progress.phase(f"Finding the inputs of each graph on {dataset.name}")
    every_graph = graph_inputs_for(dataset, params)
    learnable = [(inputs, _learn_rows(inputs, params)) for inputs in every_graph]
    skipped = {inputs.category: f"no {params['learn_split']!r} inputs" for inputs, rows in learnable if not len(rows)}
    learnable = [(inputs, rows) for inputs, rows in learnable if len(rows)]
    if not learnable:
        which = f" of {params['category']!r}" if params["category"] else ""
        raise RunInputError(f"{dataset.name} has no {params['learn_split']!r} inputs{which} to learn a graph from.")
    dev = torch.device(device)
    extractions: dict[str, Any] = {}
    caches: dict[str, np.ndarray] = {}
    model = images = None
    if params["inputs"] == PartInputs.WHOLE_IMAGES:
        for layer in layers:
            progress.phase(f"Finding the activations of {layer.name} on {dataset.name}")
            extractions[layer.name] = ensure_extraction(network, dataset, layer, params["quantile"], progress)
            caches[layer.name] = open_activation_cache(extractions[layer.name])
    else:
        model = load_model(network, dev)
        images = ViewImages(dataset, network, dev)
    ExplanatoryGraph.objects.filter(run=run).delete()  # a run executed again starts over
    summaries = []
    for position, (inputs, learn_rows) in enumerate(learnable):
        directory = artifact_store().path(f"{GRAPH_DIR}/{run.pk}/{_graph_folder(position, inputs.category)}")
        directory.mkdir(parents=True, exist_ok=True)
        if params["inputs"] == PartInputs.WHOLE_IMAGES:
            maps = {name: _ImageRows(cache, inputs.images) for name, cache in caches.items()}
        else:
            maps = _crop_maps(
                inputs,
                layers,
                directory,
                model=model,
                images=images,
                batch_size=params["batch_size"],
                progress=progress,
            )
        graph = _learn_one_graph(
            run=run,
            network=network,
            dataset=dataset,
            layers=layers,
            configs=configs,
            nodes=nodes,
            inputs=inputs,
            learn_rows=learn_rows,
            maps=maps,
            extractions=extractions,
            directory=directory,
            params=params,
            device=dev,
            progress=progress,
            label=f"{inputs.category or 'every category'} ({position + 1} of {len(learnable)})",
        )
        summaries.append(
            {
                "graph": graph.pk,
                "category": graph.category,
                "inputs": len(inputs),
                "learn_inputs": graph.n_learn_images,
                "nodes": graph.n_nodes,
                "edges": graph.n_edges,
                "instability": graph.instability,
            }
        )
    return {
        "graphs": summaries,
        "skipped": skipped,
        "inputs": params["inputs"],
        "layers": [layer.name for layer in layers],
        "extraction_runs": {name: extraction.run_id for name, extraction in extractions.items()},
    }


def _learn_one_graph(
    *,
    run: Run,
    network: Network,
    dataset: Dataset,
    layers: list[Layer],
    configs,
    nodes: list[int],
    inputs: GraphInputs,
    learn_rows: np.ndarray,
    maps: dict[str, Any],
    extractions: dict[str, Any],
    directory: Path,
    params: dict[str, Any],
    device,
    progress: RunProgress,
    label: str,
) -> ExplanatoryGraph:
    """Learn, infer, save and measure the graph of one category (or the pooled graph) on ``inputs``."""
    import torch

    from analysis.engine.explanatory_graph import LayerSource, learn_graph

    plane = _plane_unit(network)
    sources = [
        LayerSource(
            layer.name,
            lambda rows, cache=maps[layer.name]: np.asarray(cache[rows], dtype=np.float32),
            torch.from_numpy(_input_positions(layer) / plane).to(torch.float32),
            layer.units,
        )
        for layer in layers
    ]
    landmarks = params["landmarks"] or _automatic_landmarks(dataset, inputs.category)

    def allocate(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        suffix = "i32" if dtype == "int32" else "f32"
        return np.memmap(directory / f"{name}.{suffix}", dtype=dtype, mode="w+", shape=shape)

    state = {"phase": None}

    def report(phase: str, done: int, total: int) -> None:
        if phase != state["phase"]:
            progress.phase(f"{label}: {phase}", total)
            state["phase"] = phase
        progress(done, total)

    result = learn_graph(
        sources,
        configs,
        learn_rows=learn_rows,
        n_images=len(inputs),
        allocate=allocate,
        seed=params["seed"],
        batch_size=params["batch_size"],
        device=device,
        progress=report,
    )
    for name in result.units:
        result.units[name].flush()
        result.scores[name].flush()
    np.savez(
        directory / "views.npz",
        images=inputs.images,
        objects=inputs.objects,
        frames=inputs.frames,
        splits=inputs.splits,
        learn_rows=learn_rows,
    )
    progress.phase(f"{label}: saving the graph", total=len(layers))
    with transaction.atomic():
        graph = ExplanatoryGraph.objects.create(
            run=run,
            network=network,
            dataset=dataset,
            category=inputs.category,
            inputs=params["inputs"],
            layers=[layer.name for layer in layers],
            extraction_runs={name: extraction.run_id for name, extraction in extractions.items()},
            params={key: params[key] for key in GRAPH_DEFAULTS} | {"nodes_per_filter": nodes},
            directory=stored_path(directory),
            n_images=len(inputs),
            n_learn_images=len(learn_rows),
            plane_unit=plane,
            landmarks=landmarks,
        )
        saved = _save_graph(graph, layers, result, progress)
        publish(directory)  # before the row is committed: pages and purity tasks elsewhere fetch it
    graph.instability = _measure_instability(graph, layers, result, maps, inputs, params, progress, label)
    graph.n_nodes, graph.n_edges = saved
    graph.save(update_fields=["instability", "n_nodes", "n_edges"])
    return graph


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


def _input_landmarks(dataset: Dataset, names: list[str], inputs: GraphInputs) -> np.ndarray:
    """float64 ``[V, K, 2]`` ``(y, x)`` image pixels: the box centre of each named part on each input — on a crop,
    the first instance on the object the crop shows; on a whole image, the first instance on an object of the
    graph's category (on any object when the graph is pooled) — NaN where absent."""
    out = np.full((len(inputs), len(names), 2), np.nan)
    if not names or not len(inputs):
        return out
    boxes = (
        AnnotatedBox.objects.filter(image__dataset=dataset, kind=AnnotatedBox.Kind.PART, concept__name__in=names)
        .order_by("image__index", "concept__name", "instance", "object_index", "id")
        .values_list("image__index", "concept__name", "object_index", "x1", "y1", "x2", "y2")
    )
    owners = None
    if inputs.category:
        owners = set(
            AnnotatedBox.objects.filter(
                image__dataset=dataset, kind=AnnotatedBox.Kind.OBJECT, concept__name=inputs.category
            ).values_list("image__index", "object_index")
        )
    on_object: dict[tuple[int, int, str], tuple[float, float]] = {}
    on_image: dict[tuple[int, str], tuple[float, float]] = {}
    for index, name, obj, x1, y1, x2, y2 in boxes:
        centre = ((y1 + y2) / 2, (x1 + x2) / 2)
        on_object.setdefault((index, obj, name), centre)
        if owners is None or (index, obj) in owners:
            on_image.setdefault((index, name), centre)
    for row, (image, obj) in enumerate(zip(inputs.images.tolist(), inputs.objects.tolist())):
        for k, name in enumerate(names):
            centre = on_object.get((image, obj, name)) if obj >= 0 else on_image.get((image, name))
            if centre is not None:
                out[row, k] = centre
    return out


def _measure_instability(
    graph: ExplanatoryGraph, layers: list[Layer], result, maps, inputs: GraphInputs, params, progress, label
) -> dict[str, Any]:
    import torch

    from analysis.engine.explanatory_graph import FilterPeakTally, pattern_instability

    dataset, network = graph.dataset, graph.network
    names = graph.landmarks
    rows = inputs.rows(params["eval_split"])
    if not len(rows):
        rows = np.arange(len(inputs), dtype=np.int64)
    # Positions relative to each input's frame: a unit's position in image pixels is frame origin + input position
    # × scale, so landmarks move by the origin and distances are those in the image.
    origins = inputs.frames[rows][:, [1, 0]]
    landmarks = _input_landmarks(dataset, names, inputs)[rows] - origins[:, None, :]
    if not names or np.isnan(landmarks).all():
        return {"note": f"no landmark parts ({', '.join(names) or 'none named'}) on the evaluation inputs"}
    frames = inputs.frames[rows]
    measure = dict(
        landmarks=torch.from_numpy(landmarks),
        diagonals=torch.from_numpy(np.hypot(frames[:, 3] - frames[:, 1], frames[:, 2] - frames[:, 0])),
        top_images=params["top_images"],
        combine=params["instability"],
        chunk=PATTERN_CHUNK,
    )
    scale = inputs.scale(network)[rows]
    summary: dict[str, Any] = {}
    progress.phase(f"{label}: location instability of nodes and raw filters", total=len(layers))
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
        # Raw filters: each filter's highest unit on each evaluation input; ranked by Σ max activation over all the
        # graph's inputs.
        cache = maps[layer.name]
        peaks = FilterPeakTally(len(inputs), layer.units, rows)
        for start in range(0, len(inputs), 256):
            block = np.arange(start, min(len(inputs), start + 256))
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
    """``(units int32 [V, nodes], scores float32 [V, nodes])`` of a graph layer over the graph's ``V`` inputs
    (:func:`graph_inputs`), read-only memory maps."""
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
    """One inference of a pattern on one input, for people to judge: ``image_index`` is the input's dataset image
    and ``box`` ``(x1, y1, x2, y2)`` is in that image's pixels (a fixed-size square around ``centre`` ``(y, x)``,
    Fig. 5's patch at the input's scale; may extend past the image). ``input_row``: the input's row in the graph's
    arrays."""

    image_index: int
    score: float
    centre: tuple[float, float]
    box: tuple[float, float, float, float]
    input_row: int = -1


def _box(
    graph_network: Network, centre_input: np.ndarray, frame: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float, float, float]]:
    """A point of the network input (``(y, x)`` input pixels) and Fig. 5's patch around it, in the pixels of the
    image whose ``frame`` ``(x1, y1, x2, y2)`` was warped to the input."""
    x1, y1, x2, y2 = (float(v) for v in frame)
    sy, sx = (y2 - y1) / graph_network.input_height, (x2 - x1) / graph_network.input_width
    cy, cx = y1 + float(centre_input[0]) * sy, x1 + float(centre_input[1]) * sx
    half_y, half_x = _patch_size(graph_network) * sy / 2, _patch_size(graph_network) * sx / 2
    return (cy, cx), (cx - half_x, cy - half_y, cx + half_x, cy + half_y)


def graph_node_inferences(
    node: GraphNode, *, limit: int | None = None, fraction: float | None = None, shown: int | None = None
) -> list[PatternInference]:
    """A node's inferences over its graph's inputs, best first: the ``limit`` top-scoring inputs, or (``fraction``)
    the paper's top-K with ``Σ_{i≤K} S ≥ fraction · Σ S`` (inputs where the node scores 0 are never shown), or
    (``fraction`` and ``shown``) the purity sample of :func:`analysis.engine.explanatory_graph.purity_sample`."""
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
    inputs = graph_inputs(graph)
    out = []
    for row in chosen.tolist():
        centre, box = _box(graph.network, positions[int(units[row, node.flat])], inputs.frames[row])
        out.append(
            PatternInference(
                image_index=int(inputs.images[row]), score=float(column[row]), centre=centre, box=box, input_row=row
            )
        )
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
    """A raw filter's inferences over the graph's inputs (the same crops or images its nodes were inferred on),
    best first, grouped per input (the paper's two purity baselines).

    ``mode="peaks"`` ("raw filter peaks"): one inference per input at the filter's highest unit, inputs ranked by
    that peak. ``mode="maps"`` ("raw filter maps"): every unit with a positive response, each drawn as a fixed-size
    patch around its receptive-field centre, inputs ranked by the map's activation energy (its sum). ``fraction``
    applies the 30 % energy rule to K (with ``shown``: the purity sample, :func:`analysis.engine.explanatory_graph.
    purity_sample`); otherwise the ``limit`` top inputs.
    """
    from analysis.engine.explanatory_graph import energy_top_k, purity_sample

    if mode not in ("peaks", "maps"):
        raise RunInputError("mode must be 'peaks' or 'maps'.")
    maps = graph_layer_maps(graph, layer)
    count = maps.shape[0]
    per_input = np.zeros(count, dtype=np.float64)
    for start in range(0, count, 512):
        block = np.asarray(maps[start : start + 512, filter_index], dtype=np.float64).reshape(
            -1, maps.shape[2] * maps.shape[3]
        )
        per_input[start : start + len(block)] = block.max(1) if mode == "peaks" else np.clip(block, 0, None).sum(1)
    if fraction is not None and shown is not None:
        chosen = purity_sample(per_input, fraction, shown)[0]
    elif fraction is not None:
        chosen = energy_top_k(per_input, fraction)
    else:
        chosen = np.argsort(-per_input, kind="stable")[:limit]
        chosen = chosen[per_input[chosen] > 0]
    positions = _input_positions(layer)
    inputs = graph_inputs(graph)
    out = []
    for row in chosen.tolist():
        flat = np.asarray(maps[row, filter_index], dtype=np.float64).ravel()
        units = [int(np.argmax(flat))] if mode == "peaks" else np.flatnonzero(flat > 0).tolist()
        group = []
        for unit in units:
            centre, box = _box(graph.network, positions[unit], inputs.frames[row])
            group.append(
                PatternInference(
                    image_index=int(inputs.images[row]),
                    score=float(per_input[row]),
                    centre=centre,
                    box=box,
                    input_row=row,
                )
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
    """Every graph of the run in four tables whose first column, ``category``, names the graph (blank: the pooled
    graph): ``nodes.csv`` (``category,layer,filter,node,mu_x,mu_y,score_total,sigma,mass,rank``), ``edges.csv``
    (``category,layer,filter,node,parent_layer,parent_filter,parent_node,order,dx,dy``), ``instability.csv``
    (``category,layer,kind,filter,node,rank,instability`` and one column per landmark of any graph, blank where a
    graph has no such landmark), ``inputs.csv`` (``category,input,image,object_index,x1,y1,x2,y2,split``: each
    input's dataset image, object and frame) and ``run.json`` (a ``graphs`` entry per graph). Positions in
    network-input pixels; scores exact (Python ``repr``)."""
    graphs = list(
        ExplanatoryGraph.objects.select_related("network", "dataset").filter(run=run).order_by("category", "id")
    )
    if not graphs:
        raise RunInputError(f"Run {run.pk} holds no explanatory graph.")
    nodes_path = out_dir / "nodes.csv"
    with open(nodes_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["category", "layer", "filter", "node", "mu_x", "mu_y", "score_total", "sigma", "mass", "rank"])
        for graph in graphs:
            for row in (
                GraphNode.objects.filter(graph=graph)
                .order_by("level", "flat")
                .values_list("layer__name", "filter", "node", "mu_x", "mu_y", "score_total", "sigma", "mass", "rank")
                .iterator()
            ):
                writer.writerow([graph.category, row[0], row[1], row[2], *(repr(float(v)) for v in row[3:8]), row[8]])
    edges_path = out_dir / "edges.csv"
    with open(edges_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(
            [
                "category",
                "layer",
                "filter",
                "node",
                "parent_layer",
                "parent_filter",
                "parent_node",
                "order",
                "dx",
                "dy",
            ]
        )
        for graph in graphs:
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
                writer.writerow([graph.category, *row[:7], repr(float(row[7])), repr(float(row[8]))])
    landmarks = list(dict.fromkeys(name for graph in graphs for name in graph.landmarks))
    instability_path = out_dir / "instability.csv"
    with open(instability_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["category", "layer", "kind", "filter", "node", "rank", "instability", *landmarks])
        for graph in graphs:
            for item in (
                GraphInstability.objects.filter(graph=graph)
                .select_related("layer", "node")
                .order_by("layer__order", "kind", "rank")
            ):
                writer.writerow(
                    [
                        graph.category,
                        item.layer.name,
                        item.kind,
                        item.filter,
                        item.node.node if item.node else "",
                        item.rank,
                        "" if item.instability is None else repr(item.instability),
                        *(
                            "" if item.per_landmark.get(name) is None else repr(item.per_landmark[name])
                            for name in landmarks
                        ),
                    ]
                )
    inputs_path = out_dir / "inputs.csv"
    with open(inputs_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["category", "input", "image", "object_index", "x1", "y1", "x2", "y2", "split"])
        for graph in graphs:
            inputs = graph_inputs(graph)
            for row, (image, obj, frame, split) in enumerate(
                zip(inputs.images.tolist(), inputs.objects.tolist(), inputs.frames.tolist(), inputs.splits.tolist())
            ):
                writer.writerow([graph.category, row, image, obj, *(repr(float(v)) for v in frame), split])
    first = graphs[0]
    meta = out_dir / "run.json"
    meta.write_text(
        json.dumps(
            {
                "run": run.pk,
                "kind": run.kind,
                "params": run.params,
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                "network": first.network.name,
                "weights_sha256": first.network.weights_sha256,
                "dataset": first.dataset.name,
                "dataset_dir": str(local_path(first.dataset.root_dir)),
                "layers": first.layers,
                "graphs": [
                    {
                        "category": graph.category,
                        "inputs": graph.inputs,
                        "activations_runs": graph.extraction_runs,
                        "input_count": graph.n_images,
                        "learn_inputs": graph.n_learn_images,
                        "nodes": graph.n_nodes,
                        "edges": graph.n_edges,
                        "landmarks": graph.landmarks,
                        "instability": graph.instability,
                    }
                    for graph in graphs
                ],
                "rules": {
                    "graphs": "one graph per object category, each learned and evaluated on its own inputs"
                    if run.params.get("graphs", PER_CATEGORY) == PER_CATEGORY
                    else "one graph pooled over every category's inputs",
                    "inputs": "object crops: each object box with R-CNN context warped to the network input (frame "
                    "x1 y1 x2 y2 in image pixels)"
                    if first.inputs == PartInputs.OBJECT_CROPS
                    else "whole images resized to the network input",
                    "positions": "receptive-field centres on the network input, pixels (mu_x, mu_y, dx, dy, sigma)",
                    "score_total": "sum over the graph's inputs of S = F(x)·P(p_x|V)^2 at the inferred unit",
                    "instability": (
                        "mean over landmarks of the std of distance/diagonal of the input's frame"
                        if first.params.get("instability") == "aaai"
                        else "sqrt of the mean over landmarks of the variance of distance/diagonal of the input's frame"
                    ),
                    "filters": "raw filter baseline: the highest unit of the filter's map on the same inputs "
                    "(Zhou et al. 2015)",
                },
            },
            indent=2,
            default=str,
        )
    )
    return [nodes_path, edges_path, instability_path, inputs_path, meta]


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
        "layers into graph nodes (top-down EM), one graph per object category learned on its object crops, infers "
        "them on every crop of the category, and measures their location instability against raw filters.",
    )
)
