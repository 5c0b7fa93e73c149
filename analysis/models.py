"""The machine side's data: runs (jobs) now; datasets, networks, units and scores join them."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class RunQuerySet(models.QuerySet):
    def active(self):
        """Runs that are queued or running."""
        return self.filter(status__in=ACTIVE_RUN_STATUSES)

    def finished(self):
        """Runs in a final state."""
        return self.exclude(status__in=ACTIVE_RUN_STATUSES)

    def succeeded(self):
        """Runs that finished successfully."""
        return self.filter(status=RunStatus.SUCCEEDED)

    def of_kind(self, kind: str):
        """Runs of one job kind."""
        return self.filter(kind=kind)


class Run(models.Model):
    """One job. The row exists before the job is queued and always ends in a final state."""

    kind = models.CharField(max_length=64, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    params_hash = models.CharField(max_length=64, db_index=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    queue = models.CharField(max_length=32, default="default")
    phase = models.CharField(max_length=200, blank=True)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(default=0)
    device = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True, help_text="A readable message for people.")
    error_detail = models.TextField(blank=True, help_text="The traceback, for developers.")
    result = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="runs")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "params_hash", "status"])]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.kind}, {self.status})"

    def get_absolute_url(self) -> str:
        return reverse("analysis:run_detail", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    @property
    def percent(self) -> int:
        if self.status == RunStatus.SUCCEEDED:
            return 100
        if self.progress_total <= 0:
            return 0
        return max(0, min(100, int(100 * self.progress_done / self.progress_total)))

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        from django.utils import timezone

        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()

    @property
    def kind_label(self) -> str:
        from .jobs import job_kind

        try:
            return job_kind(self.kind).label
        except KeyError:
            return self.kind
