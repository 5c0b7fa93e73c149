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
