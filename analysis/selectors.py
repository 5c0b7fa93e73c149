"""Reads of the machine side."""
from __future__ import annotations

from django.db.models import Count, Q

from analysis.models import Run, RunStatus


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


UNIT_SORTS = {"unit": "unit__index", "max": "-max_activation", "threshold": "-threshold", "active": "-active_images"}


def latest_extraction(layer, *, run_id: int | None = None):
    """The layer's newest extraction (or the one of run ``run_id``)."""
    from analysis.models import LayerExtraction

    extractions = LayerExtraction.objects.filter(layer=layer).select_related("dataset", "run")
    if run_id is not None:
        extractions = extractions.filter(run_id=run_id)
    return extractions.order_by("-created_at", "-id").first()


def unit_rows(extraction, *, sort: str = "unit"):
    """Per-unit summaries of an extraction with each unit's top-overall grid, sorted by a known key."""
    from django.db.models import OuterRef, Subquery

    from analysis.models import ExemplarKind, ExemplarSet

    top_grid = ExemplarSet.objects.filter(extraction=extraction, unit=OuterRef("unit"),
                                          kind=ExemplarKind.TOP_OVERALL).values("grid__path")[:1]
    return (extraction.unit_summaries.select_related("unit").annotate(top_grid_path=Subquery(top_grid))
            .order_by(UNIT_SORTS.get(sort, "unit__index"), "unit__index"))


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
