"""Researcher pages of the machine side. Thin: reads through selectors, writes through services."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View
from django.views.generic import DetailView, FormView, ListView, TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis import selectors
from analysis.forms import SelfcheckForm
from analysis.jobs import job_kinds
from analysis.models import Run, RunStatus
from analysis.services.runs import run_cancel, runs_reconcile
from analysis.services.selfcheck import SELFCHECK, selfcheck_run_start
from analysis.views.starting import StartRunFormMixin


class DashboardView(ResearcherRequiredMixin, TemplateView):
    nav_section = "overview"
    template_name = "analysis/dashboard.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        runs_reconcile()
        context["run_counts"] = selectors.run_counts()
        context["recent_runs"] = selectors.runs_with_worker_state(selectors.runs_for_list()[:8])
        context["no_worker_queues"] = selectors.queues_without_worker()
        return context


class RunListView(ResearcherRequiredMixin, ListView):
    nav_section = "runs"
    template_name = "analysis/runs/list.html"
    context_object_name = "runs"
    paginate_by = 50

    def get_queryset(self):
        runs_reconcile()
        return selectors.runs_for_list(
            kind=self.request.GET.get("kind") or None, status=self.request.GET.get("status") or None
        )

    def get_template_names(self):
        if self.request.htmx:
            return ["analysis/runs/_table.html"]
        return [self.template_name]

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["kinds"] = job_kinds()
        context["statuses"] = RunStatus.choices
        context["selected_kind"] = self.request.GET.get("kind", "")
        context["selected_status"] = self.request.GET.get("status", "")
        context["runs"] = context["object_list"] = selectors.runs_with_worker_state(context["runs"])
        context["any_active"] = any(run.is_active for run in context["runs"])
        context["no_worker_queues"] = selectors.queues_without_worker()
        return context


def _with_worker_state(run: Run) -> Run:
    """The run, reconciled first (its worker died: failed; its message was lost: sent again), with ``worker_state``."""
    if run.is_active:
        runs_reconcile()
        run.refresh_from_db()
    run.worker_state = selectors.run_worker_state(run)
    return run


class RunDetailView(ResearcherRequiredMixin, DetailView):
    nav_section = "runs"
    model = Run
    template_name = "analysis/runs/detail.html"
    context_object_name = "run"

    def get_object(self, queryset=None):
        return _with_worker_state(super().get_object(queryset))

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["layer_extractions"] = self.object.layer_extractions.select_related("layer__network").annotate(
            missing_grids=Count("exemplar_sets", filter=Q(exemplar_sets__grid__isnull=True))
        )
        context["shard_runs"] = selectors.run_shards_of(self.object)
        context["shard_parent"] = selectors.run_shard_parent(self.object)
        kind = self.object.job_kind
        context["exportable"] = (
            self.object.status == RunStatus.SUCCEEDED and kind is not None and kind.exporter is not None
        )
        return context


class RunStatusView(ResearcherRequiredMixin, DetailView):
    """The status panel of a run, polled by htmx while the run is active (a run whose worker died is failed here)."""

    nav_section = "runs"
    model = Run
    template_name = "analysis/runs/_status.html"
    context_object_name = "run"

    def get_object(self, queryset=None):
        return _with_worker_state(super().get_object(queryset))


class RunCancelView(ResearcherRequiredMixin, View):
    def post(self, request, pk: int):
        run = get_object_or_404(Run, pk=pk)
        if run_cancel(run=run):
            messages.info(request, f"Run {run.pk} was cancelled.")
        else:
            messages.warning(request, f"Run {run.pk} had already finished ({run.get_status_display().lower()}).")
        if request.htmx:
            run.refresh_from_db()
            return render(request, "analysis/runs/_status.html", {"run": _with_worker_state(run)})
        return redirect(run)


class SelfcheckStartView(ResearcherRequiredMixin, StartRunFormMixin, FormView):
    nav_section = "selfcheck"
    template_name = "analysis/selfcheck.html"
    form_class = SelfcheckForm
    run_label = "Self-check"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["previous_runs"] = selectors.runs_for_list(kind=SELFCHECK.name)[:10]
        return context

    def start_run(self, form):
        return selfcheck_run_start(created_by=self.request.user, **form.cleaned_data)
