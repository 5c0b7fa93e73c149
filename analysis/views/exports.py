"""Downloads of run exports (``export_run``) from the run page."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View

from accounts.permissions import ResearcherRequiredMixin
from analysis.models import Run
from analysis.services.exports import run_export_archive
from analysis.services.runs import RunInputError


class RunExportView(ResearcherRequiredMixin, View):
    """The run's export as a zip (``run-<id>/`` holding what ``manage.py export_run`` writes)."""

    def get(self, request, pk: int):
        run = get_object_or_404(Run, pk=pk)
        try:
            archive = run_export_archive(run=run)
        except RunInputError as error:
            messages.error(request, str(error))
            return redirect(run)
        return FileResponse(
            archive, as_attachment=True, filename=f"run-{run.pk}-{run.kind}.zip", content_type="application/zip"
        )
