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
