"""Reads of the machine side."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone

from analysis.models import Run, RunStatus, WorkerHeartbeat


def runs_for_list(*, kind: str | None = None, status: str | None = None):
    runs = Run.objects.select_related("created_by")
    if kind:
        runs = runs.of_kind(kind)
    if status:
        runs = runs.filter(status=status)
    return runs


def run_counts() -> dict[str, int]:
    """Number of runs per status, every status present."""
    counts = Run.objects.aggregate(**{status.value: Count("pk", filter=Q(status=status)) for status in RunStatus})
    return {status.value: counts[status.value] for status in RunStatus}


@dataclass(frozen=True)
class QueueLiveness:
    """Whether any worker of ``queue`` was seen within ``UNITSCOPE_WORKER_ALIVE_SECONDS``."""

    queue: str
    alive: bool
    workers: tuple[str, ...]  # node names of the live workers
    last_seen: datetime | None  # the latest heartbeat of any worker of the queue, live or not


def queues_liveness(*, now: datetime | None = None) -> dict[str, QueueLiveness]:
    """Liveness of every queue some worker has announced (one query). Queues no worker ever consumed are absent."""
    now = now or timezone.now()
    alive_after = now - timedelta(seconds=settings.UNITSCOPE_WORKER_ALIVE_SECONDS)
    seen: dict[str, list[WorkerHeartbeat]] = {}
    for heartbeat in WorkerHeartbeat.objects.all():
        for queue in heartbeat.queue_list:
            seen.setdefault(queue, []).append(heartbeat)
    return {
        queue: QueueLiveness(
            queue=queue,
            alive=any(beat.last_seen >= alive_after for beat in beats),
            workers=tuple(beat.hostname for beat in beats if beat.last_seen >= alive_after),
            last_seen=max(beat.last_seen for beat in beats),
        )
        for queue, beats in seen.items()
    }


def queue_liveness(queue: str, *, now: datetime | None = None) -> QueueLiveness:
    """Whether any worker of ``queue`` was seen within ``UNITSCOPE_WORKER_ALIVE_SECONDS``."""
    return queues_liveness(now=now).get(queue) or QueueLiveness(queue=queue, alive=False, workers=(), last_seen=None)


def worker_argv(queues: str, *, python: str = sys.executable, node: str = "", quiet_cluster: bool = False) -> list[str]:
    """The command line of one Celery worker on ``queues`` (comma-separated), one task at a time: the one
    `make demo` starts, the one the pages advise, the one the tests start. ``node`` names it (``-n``);
    ``quiet_cluster`` drops gossip and mingle (test workers that need not know each other start faster)."""
    argv = [python, "-m", "celery", "-A", "unitscope", "worker", "-Q", queues, "-c", "1", "--loglevel", "INFO"]
    if quiet_cluster:
        argv += ["--without-gossip", "--without-mingle"]
    if node:
        argv += ["-n", node]
    return argv


def worker_start_command(queue: str) -> str:
    """The command that starts a worker for ``queue`` here: ``UNITSCOPE_WORKER_COMMAND``, else this
    installation's Python running Celery (relative to the project folder when the venv lives there)."""
    if settings.UNITSCOPE_WORKER_COMMAND:
        return settings.UNITSCOPE_WORKER_COMMAND.replace("{queue}", queue)
    python = Path(sys.executable)
    try:
        python = python.relative_to(Path(settings.BASE_DIR))
    except ValueError:
        pass
    return shlex.join(worker_argv(queue, python=str(python)))


@dataclass(frozen=True)
class RunWorkerState:
    """What a run waits on. ``state``: ``running`` (a worker has it), ``waiting`` (queued, a worker of its queue
    is alive or may still be starting), ``no_worker`` (queued and nobody consumes its queue), or ``""`` (finished)."""

    state: str
    message: str = ""
    command: str = ""
    queue: str = ""
    last_seen: datetime | None = None  # the last heartbeat of any worker of the queue (no_worker only)


def run_worker_state(
    run: Run, *, liveness: dict[str, QueueLiveness] | None = None, now: datetime | None = None
) -> RunWorkerState:
    """The worker state of ``run`` (pass ``liveness`` from :func:`queues_liveness` when judging many runs).

    A queued run says "no worker" when no worker of its queue was seen within ``UNITSCOPE_WORKER_ALIVE_SECONDS``
    and either one was seen before (it stopped) or the run has waited that long (a worker that is starting up
    gets that much time to send its first heartbeat).
    """
    if run.status == RunStatus.RUNNING:
        return RunWorkerState("running")
    if run.status != RunStatus.QUEUED:
        return RunWorkerState("")
    now = now or timezone.now()
    live = (liveness if liveness is not None else queues_liveness(now=now)).get(run.queue)
    if live is not None and live.alive:
        return RunWorkerState("waiting", "Waiting for a worker")
    waited = (now - run.created_at).total_seconds()
    if live is None and waited < settings.UNITSCOPE_WORKER_ALIVE_SECONDS:
        return RunWorkerState("waiting", "Waiting for a worker")
    command = worker_start_command(run.queue)
    seen = f" (one was last seen {timezone.localtime(live.last_seen):%Y-%m-%d %H:%M:%S})" if live is not None else ""
    return RunWorkerState(
        "no_worker",
        f"No worker is running for the {run.queue} queue{seen} — start one with `{command}`.",
        command,
        run.queue,
        live.last_seen if live else None,
    )


def runs_with_worker_state(runs) -> list[Run]:
    """The runs, each with ``worker_state`` (:class:`RunWorkerState`) set; one liveness query for all of them."""
    runs = list(runs)
    if any(run.status == RunStatus.QUEUED for run in runs):
        now = timezone.now()
        liveness = queues_liveness(now=now)
        for run in runs:
            run.worker_state = run_worker_state(run, liveness=liveness, now=now)
    else:
        for run in runs:
            run.worker_state = run_worker_state(run)
    return runs


def queues_without_worker() -> list[RunWorkerState]:
    """One "no worker" state per queue whose queued runs wait with no live worker (judged on its oldest run)."""
    oldest = Run.objects.filter(status=RunStatus.QUEUED).order_by().values("queue").annotate(first=Min("created_at"))
    if not oldest:
        return []
    now = timezone.now()
    liveness = queues_liveness(now=now)
    states = [
        run_worker_state(
            Run(queue=row["queue"], status=RunStatus.QUEUED, created_at=row["first"]), liveness=liveness, now=now
        )
        for row in oldest
    ]
    return sorted((state for state in states if state.state == "no_worker"), key=lambda state: state.queue)


def run_shards_of(run: Run) -> list[Run]:
    """The shard runs of an extraction or dissection run split into image ranges, in image order (empty for
    any other run, and for one that ran whole)."""
    if run.kind == "extract":
        shards = Run.objects.filter(kind="extract_shard", params__extraction_run=run.pk)
    elif run.kind == "dissect":
        dissections = list(run.layer_dissections.values_list("pk", flat=True))
        shards = Run.objects.filter(kind="dissect_shard", params__dissection__in=dissections) if dissections else None
    else:
        shards = None
    return [] if shards is None else sorted(shards, key=lambda shard: (shard.params["start"], shard.pk))


def run_shard_parent(run: Run) -> Run | None:
    """The extraction or dissection run a shard run belongs to (None for any other run, or when it is gone)."""
    if run.kind == "extract_shard":
        return Run.objects.filter(pk=run.params.get("extraction_run")).first()
    if run.kind == "dissect_shard":
        return Run.objects.filter(layer_dissections__pk=run.params.get("dissection")).first()
    return None


def datasets_for_list():
    from analysis.models import Dataset

    return Dataset.objects.annotate(concept_count=Count("concepts", distinct=True))


def concepts_by_category(dataset) -> list[tuple[str, list]]:
    """The dataset's concepts grouped by primary category (in the dataset's category order), most frequent first."""
    grouped: dict[str, list] = {category: [] for category in dataset.categories}
    for concept in dataset.concepts.order_by("-image_count", "name"):
        grouped.setdefault(concept.category, []).append(concept)
    return [(category, concepts) for category, concepts in grouped.items() if concepts]


def dataset_images(dataset, *, split: str | None = None, object_class: str | None = None):
    images = dataset.images.select_related("object_class")
    if split:
        images = images.filter(split=split)
    if object_class:
        images = images.filter(object_class__name=object_class)
    return images


def networks_for_list():
    from analysis.models import Network

    return Network.objects.select_related("trained_on").annotate(layer_count=Count("layers"))


UNIT_SORTS = {
    "unit": "unit__index",
    "max": "-max_activation",
    "threshold": "-threshold",
    "active": "-active_images",
    "iou": "-label_iou",
}
UNIT_PAGE_SIZE = 50


def latest_extraction(layer, *, run_id: int | None = None):
    """The layer's newest extraction (or the one of run ``run_id``)."""
    from analysis.models import LayerExtraction

    extractions = LayerExtraction.objects.filter(layer=layer).select_related("dataset", "run")
    if run_id is not None:
        extractions = extractions.filter(run_id=run_id)
    return extractions.order_by("-created_at", "-id").first()


def unit_rows(
    extraction,
    *,
    sort: str = "unit",
    dissection=None,
    search: str = "",
    label: str = "",
    category: str = "",
    iou_min: float | None = None,
    iou_max: float | None = None,
    status: str = "",
):
    """Per-unit summaries of an extraction, each with its status (live, dead, saturated; see ``UnitStatus``),
    its top-overall grid (``top_grid_path``, ``top_grid_width``, ``top_grid_height``) and, when ``dissection``
    is given, its label there (``label_name``, ``label_category``, ``label_iou``, ``label_detector``).

    Sorted by a known key with dead and saturated units last. Filters: ``search`` (a unit number, or part of
    a label's name), ``label`` (exact name), ``category``, an IoU range, ``status`` (``live``, ``dead``: dead or
    saturated, or one of ``UnitStatus``'s values).
    """
    from django.db.models import F, OuterRef, Subquery

    from analysis.models import ExemplarKind, ExemplarSet, UnitDissection, UnitStatus

    top_grid = ExemplarSet.objects.filter(extraction=extraction, unit=OuterRef("unit"), kind=ExemplarKind.TOP_OVERALL)
    rows = (
        extraction.unit_summaries.with_status()
        .select_related("unit")
        .annotate(
            top_grid_path=Subquery(top_grid.values("grid__path")[:1]),
            top_grid_width=Subquery(top_grid.values("grid__width")[:1]),
            top_grid_height=Subquery(top_grid.values("grid__height")[:1]),
        )
    )
    if dissection is not None:
        result = UnitDissection.objects.filter(dissection=dissection, unit=OuterRef("unit"))
        rows = rows.annotate(
            label_name=Subquery(result.values("concept__name")[:1]),
            label_category=Subquery(result.values("concept__category")[:1]),
            label_iou=Subquery(result.values("iou")[:1]),
            label_detector=Subquery(result.values("is_detector")[:1]),
        )
    if status == "live":
        rows = rows.filter(status_rank=0)
    elif status == "dead":
        rows = rows.filter(status_rank=1)
    elif status in UnitStatus.values:
        rows = rows.filter(status=status)
    if dissection is not None:
        if label:
            rows = rows.filter(label_name=label)
        if category:
            rows = rows.filter(label_category=category)
        if iou_min is not None:
            rows = rows.filter(label_iou__gte=iou_min)
        if iou_max is not None:
            rows = rows.filter(label_iou__lte=iou_max)
    search = search.strip()
    if search.isdigit():
        rows = rows.filter(unit__index=int(search))
    elif search:
        rows = rows.filter(label_name__icontains=search) if dissection is not None else rows.none()
    key = UNIT_SORTS.get(sort, "unit__index")
    if key == "-label_iou":
        key = F("label_iou").desc(nulls_last=True) if dissection is not None else "unit__index"
    return rows.order_by("status_rank", key, "unit__index")


def unit_label_choices(dissection) -> tuple[list[str], list[str]]:
    """``(label names, categories)`` present among a dissection's unit labels, sorted (empty for None)."""
    if dissection is None:
        return [], []
    labelled = dissection.unit_results.exclude(concept=None)
    names = sorted(set(labelled.values_list("concept__name", flat=True)))
    categories = [
        category for category in dissection.categories if labelled.filter(concept__category=category).exists()
    ]
    return names, categories


def unit_summary(extraction, unit):
    """The unit's summary in an extraction with its ``status`` (None when missing)."""
    return extraction.unit_summaries.with_status().filter(unit=unit).first()


def dead_unit_ids(extraction) -> set[int]:
    """Primary keys of the extraction's dead and saturated units (see ``UnitStatus``)."""
    return set(extraction.unit_summaries.dead().values_list("unit_id", flat=True))


def unit_statuses(extraction) -> dict[int, str]:
    """``{unit index: UnitStatus value}`` of an extraction (empty for None)."""
    if extraction is None:
        return {}
    return dict(extraction.unit_summaries.with_status().values_list("unit__index", "status"))


def unit_exemplars(extraction, unit):
    """The unit's exemplar sets by kind: top overall, per class (by class name), deciles."""
    from analysis.models import ExemplarKind

    sets = list(extraction.exemplar_sets.filter(unit=unit).select_related("grid", "object_class"))
    per_class = sorted((s for s in sets if s.kind == ExemplarKind.TOP_CLASS), key=lambda s: -max(s.scores, default=0))
    return {
        "top_overall": next((s for s in sets if s.kind == ExemplarKind.TOP_OVERALL), None),
        "per_class": [s for s in per_class if max(s.scores, default=0) > 0],
        "silent_classes": [s.object_class.name for s in per_class if max(s.scores, default=0) <= 0],
        "decile": next((s for s in sets if s.kind == ExemplarKind.DECILE), None),
    }


# -- Network Dissection ---------------------------------------------------------------------------------


def latest_dissection(layer, *, dataset=None, run_id: int | None = None, baseline: str = "none"):
    """The layer's newest complete dissection (on ``dataset`` when given; of run ``run_id`` when given)."""
    from analysis.models import LayerDissection

    dissections = LayerDissection.objects.complete().filter(layer=layer).select_related("dataset", "run", "extraction")
    if run_id is not None:
        return dissections.filter(run_id=run_id).first()
    if dataset is not None:
        dissections = dissections.filter(dataset=dataset)
    return dissections.filter(baseline=baseline).newest_first().first()


def layer_dissections(layer):
    """Every complete dissection of the layer, newest first."""
    from analysis.models import LayerDissection

    return LayerDissection.objects.complete().filter(layer=layer).select_related("dataset", "run").newest_first()


def dissection_units(dissection, *, detectors_only: bool = False):
    """Per-unit results of a dissection, best IoU first."""
    results = dissection.unit_results.select_related("unit", "concept").order_by("-iou", "unit__index")
    return results.filter(is_detector=True) if detectors_only else results


def dissection_results_by_unit(dissection) -> dict[int, object]:
    """``{unit index: UnitDissection}`` of a dissection (empty for None)."""
    if dissection is None:
        return {}
    return {result.unit.index: result for result in dissection.unit_results.select_related("unit", "concept")}


def unit_dissection_result(unit, *, dataset=None):
    """The unit's result in its layer's newest complete (non-baseline) dissection, or None."""
    dissection = latest_dissection(unit.layer, dataset=dataset)
    if dissection is None:
        return None
    return dissection.unit_results.select_related("concept", "dissection__dataset").filter(unit=unit).first()


def network_dissections(network, *, dataset=None):
    """The newest complete non-baseline dissection of each layer of the network (layer order), on ``dataset``
    when given (else on the dataset of the network's newest dissection)."""
    from analysis.models import LayerDissection

    dissections = (
        LayerDissection.objects.complete()
        .real()
        .filter(layer__network=network)
        .select_related("layer", "dataset", "run")
        .newest_first()
    )
    if dataset is None:
        newest = dissections.first()
        if newest is None:
            return []
        dataset = newest.dataset
    chosen = {}
    for dissection in dissections.filter(dataset=dataset):
        chosen.setdefault(dissection.layer_id, dissection)
    return sorted(chosen.values(), key=lambda dissection: dissection.layer.order)


def latest_baseline_for(dissection):
    """The newest complete shuffled-mask baseline matching a dissection (layer, dataset, quantile, upsample)."""
    from analysis.models import DissectionBaseline, LayerDissection

    if dissection is None:
        return None
    return (
        LayerDissection.objects.complete()
        .filter(
            layer=dissection.layer,
            dataset=dissection.dataset,
            baseline=DissectionBaseline.SHUFFLED,
            quantile=dissection.quantile,
            upsample=dissection.upsample,
        )
        .newest_first()
        .first()
    )


def latest_rotation_test(layer, *, run_id: int | None = None):
    """The layer's newest rotation test (or the one of run ``run_id``)."""
    tests = layer.rotation_tests.select_related("dataset", "run", "extraction")
    if run_id is not None:
        tests = tests.filter(run_id=run_id)
    return tests.order_by("-created_at", "-id").first()


def concept_labelled_units(concept):
    """Units whose label is ``concept`` in the newest complete non-baseline dissection of their layer."""
    from analysis.models import LayerDissection, UnitDissection

    newest = {}
    for dissection in (
        LayerDissection.objects.complete()
        .real()
        .filter(dataset=concept.dataset)
        .select_related("layer__network")
        .newest_first()
    ):
        newest.setdefault(dissection.layer_id, dissection.pk)
    return (
        UnitDissection.objects.filter(dissection_id__in=newest.values(), concept=concept)
        .select_related("unit__layer__network", "dissection")
        .order_by("-iou")
    )


def concept_best_units(concept, *, limit: int = 8) -> list[dict]:
    """Per layer (newest complete non-baseline dissection on the concept's dataset): the ``limit`` units with
    the highest IoU for the concept, read from the full unit × concept matrix (``tally.npz``)."""
    import numpy as np

    from analysis.models import LayerDissection, UnitDissection

    newest = {}
    for dissection in (
        LayerDissection.objects.complete()
        .real()
        .filter(dataset=concept.dataset)
        .select_related("layer__network")
        .newest_first()
    ):
        newest.setdefault(dissection.layer_id, dissection)
    rows = []
    for dissection in sorted(newest.values(), key=lambda d: (d.layer.network.name, d.layer.order)):
        try:
            with np.load(dissection.tally_path) as data:
                iou = data["iou"]
        except OSError:
            continue
        if concept.number >= iou.shape[1]:
            continue
        column = iou[:, concept.number]
        order = [int(unit) for unit in np.argsort(-column, kind="stable")[:limit] if column[unit] > 0]
        results = {
            result.unit.index: result
            for result in UnitDissection.objects.filter(dissection=dissection, unit__index__in=order).select_related(
                "unit", "concept"
            )
        }
        rows.append(
            {
                "dissection": dissection,
                "layer": dissection.layer,
                "units": [{"index": unit, "iou": float(column[unit]), "result": results.get(unit)} for unit in order],
            }
        )
    return rows


def dissection_live_detectors(dissection, dead_units: set[int]) -> dict:
    """The dissection's detector counts with ``dead_units`` left out (dead and saturated units are never shown
    as detectors, even where the run's rule counted them): ``{"detectors", "unique", "per_category"}`` with
    ``per_category`` shaped as :attr:`LayerDissection.per_category`."""
    per_category = {category: {"detectors": 0, "concepts": set()} for category in dissection.categories}
    detectors = (
        dissection.unit_results.filter(is_detector=True)
        .exclude(unit__index__in=dead_units)
        .exclude(concept=None)
        .values_list("concept__category", "concept__name")
    )
    for category, name in detectors:
        entry = per_category.setdefault(category, {"detectors": 0, "concepts": set()})
        entry["detectors"] += 1
        entry["concepts"].add(name)
    per_category = {
        category: {
            "detectors": entry["detectors"],
            "unique": len(entry["concepts"]),
            "concepts": sorted(entry["concepts"]),
        }
        for category, entry in per_category.items()
    }
    return {
        "detectors": sum(entry["detectors"] for entry in per_category.values()),
        "unique": sum(entry["unique"] for entry in per_category.values()),
        "per_category": per_category,
    }


# -- sanity warnings on results --------------------------------------------------------------------------

GRAPH_COLLAPSE_TOLERANCE = 1.0
"""Input pixels: a filter whose nodes' prior positions μ all lie within this of each other has collapsed."""
GRAPH_CORNER_MARGIN = 0.1
"""Share of the input's side: a node whose μ lies this close to a horizontal and a vertical edge sits in a corner."""
GRAPH_TOP_NODES = 20
CHANCE_FACTOR = 2.0
"""A classifier whose mean true-class softmax on its own inputs is below this many times chance is near chance."""


def graph_sanity_warnings(graph, *, layer_name: str | None = None) -> list[str]:
    """Readable warnings when an explanatory graph looks degenerate (every layer, or only ``layer_name``):

    - most filters' nodes are identical: within a filter every node's μ lies within
      :data:`GRAPH_COLLAPSE_TOLERANCE` px of the others, so the nodes did not separate into part patterns
      (AAAI'18 expects each filter's nodes at different parts);
    - most of the layer's :data:`GRAPH_TOP_NODES` best nodes (by total score) sit in the input's corners, on
      padding rather than on objects.

    "Most" is at least half. Reads node rows only.
    """
    from collections import defaultdict

    from analysis.models import GraphNode

    width, height = graph.network.input_width, graph.network.input_height
    margin_x, margin_y = GRAPH_CORNER_MARGIN * width, GRAPH_CORNER_MARGIN * height
    nodes = GraphNode.objects.filter(graph=graph)
    if layer_name is not None:
        nodes = nodes.filter(layer__name=layer_name)
    positions: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    top: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, filter_index, x, y, _rank in nodes.order_by("rank").values_list(
        "layer__name", "filter", "mu_x", "mu_y", "rank"
    ):
        positions[name][filter_index].append((x, y))
        if len(top[name]) < GRAPH_TOP_NODES:
            top[name].append((x, y))
    warnings = []
    for name in [layer for layer in graph.layers if layer in positions]:
        several = [points for points in positions[name].values() if len(points) > 1]
        collapsed = sum(
            1
            for points in several
            if max(x for x, _ in points) - min(x for x, _ in points) <= GRAPH_COLLAPSE_TOLERANCE
            and max(y for _, y in points) - min(y for _, y in points) <= GRAPH_COLLAPSE_TOLERANCE
        )
        if several and collapsed * 2 >= len(several):
            warnings.append(
                f"{name}: in {collapsed} of {len(several)} filters every node sits at the same "
                f"position (μ within {GRAPH_COLLAPSE_TOLERANCE:g} px): the nodes did not separate "
                "into part patterns, so this layer of the graph is degenerate."
            )
        corners = sum(
            1
            for x, y in top[name]
            if (x <= margin_x or x >= width - margin_x) and (y <= margin_y or y >= height - margin_y)
        )
        if top[name] and corners * 2 >= len(top[name]):
            warnings.append(
                f"{name}: {corners} of its {len(top[name])} best nodes sit in a corner of the "
                f"{width}×{height} input (within {GRAPH_CORNER_MARGIN:.0%} of two edges), on padding "
                "rather than on objects."
            )
    return warnings


def ablation_sanity_warning(study, network) -> dict | None:
    """``{"mean", "chance", "classes"}`` when the network scores its own inputs near chance on an ablation
    study (softmax scores only): the class-image-weighted mean true-class softmax below :data:`CHANCE_FACTOR`
    × chance (1 / the network's classes); ``classes`` are the object classes below that line. None otherwise:
    then its δ measure something the network does."""
    if study.score != "softmax" or not network.class_names:
        return None
    rows = list(study.class_results.select_related("object_class"))
    images = sum(row.n_images for row in rows)
    if not images:
        return None
    chance = 1.0 / len(network.class_names)
    mean = sum(row.mean_score * row.n_images for row in rows) / images
    if mean >= CHANCE_FACTOR * chance:
        return None
    return {
        "mean": mean,
        "chance": chance,
        "factor": CHANCE_FACTOR,
        "classes": [row.object_class.name for row in rows if row.mean_score < CHANCE_FACTOR * chance],
    }


def unit_machine_figures(unit, *, extraction=None) -> dict:
    """What the machine says about one unit, for the humans-vs-machine panel: its status (``UnitStatus``), its
    dissection label and IoU (newest complete dissection of its layer), its best part by single-filter AP (newest
    part-detection study: the part, the AP, whether it is the part's best filter or in its GA combination), and
    the Net2Vec concepts for which it is the best single filter (newest study), with their single-filter and
    combination validation IoU. Missing figures are None or empty."""
    from analysis.models import Net2VecStudy, PartDetectionStudy

    summary = unit_summary(extraction, unit) if extraction is not None else None
    status = summary.status if summary is not None else None
    dissection = unit_dissection_result(unit, dataset=extraction.dataset if extraction else None)
    part = None
    study = (
        PartDetectionStudy.objects.filter(layer=unit.layer_id)
        .select_related("run")
        .order_by("-created_at", "-id")
        .first()
    )
    if study is not None:
        scored = [
            (result.single_ap[unit.index], result)
            for result in study.part_results.all()
            if unit.index < len(result.single_ap)
        ]
        if scored:
            ap, result = max(scored, key=lambda pair: pair[0])
            part = {
                "name": result.name,
                "ap": ap,
                "best": result.best_filter == unit.index,
                "best_ap": result.best_ap,
                "in_ga": unit.index in result.ga_filters,
                "study": study,
            }
    net2vec = (
        Net2VecStudy.objects.filter(layer=unit.layer_id).select_related("run").order_by("-created_at", "-id").first()
    )
    embeddings = []
    if net2vec is not None:
        embeddings = [
            {"concept": row.concept.name, "single": row.single_val_iou, "combination": row.combination_val_iou}
            for row in net2vec.concept_results.filter(best_unit=unit.index)
            .select_related("concept")
            .order_by("-single_val_iou")
        ]
    return {
        "status": status,
        "dead": status not in (None, "live"),
        "dissection": dissection,
        "part": part,
        "net2vec": net2vec,
        "embeddings": embeddings,
    }
