"""Network pages: the list (with the demo-training form), a network's layers, a layer's units."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404
from django.views.generic import DetailView, FormView, TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis import selectors
from analysis.forms import DemoTrainingForm, ExtractionForm, GridsForm, UnitFilterForm
from analysis.models import Layer, Network
from analysis.panels import unit_panels
from analysis.plots import line_chart
from analysis.services.extraction import extraction_run_start
from analysis.services.grids import grids_run_start
from analysis.services.networks import DEMO_TRAINING, demo_training_run_start
from analysis.views.starting import StartRunFormMixin
from unitscope.queries import query_id


class NetworkListView(ResearcherRequiredMixin, TemplateView):
    nav_section = "networks"
    template_name = "analysis/networks/list.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["networks"] = selectors.networks_for_list()
        context["training_form"] = DemoTrainingForm()
        context["recent_runs"] = selectors.runs_for_list(kind=DEMO_TRAINING.name)[:5]
        return context


class DemoTrainingStartView(ResearcherRequiredMixin, StartRunFormMixin, FormView):
    nav_section = "networks"
    template_name = "analysis/datasets/start.html"
    form_class = DemoTrainingForm
    run_label = "Training"

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "heading": "Train the demo network"}

    def start_run(self, form):
        return demo_training_run_start(created_by=self.request.user, **form.cleaned_data)


class NetworkDetailView(ResearcherRequiredMixin, DetailView):
    nav_section = "networks"
    model = Network
    slug_field = slug_url_kwarg = "name"
    template_name = "analysis/networks/detail.html"
    context_object_name = "network"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["layers"] = self.object.layers.all()
        context["extraction_form"] = ExtractionForm(network=self.object)
        epochs = (self.object.training_report or {}).get("epochs") or []
        context["epochs"] = epochs
        if epochs:
            numbers = [epoch["epoch"] for epoch in epochs]
            context["accuracy_chart"] = line_chart(
                numbers,
                {"validation accuracy": [epoch.get("val_accuracy") for epoch in epochs]},
                xlabel="epoch",
                ylabel="accuracy",
                ylim=(0, 1),
            )
            context["loss_chart"] = line_chart(
                numbers,
                {
                    "train loss": [epoch.get("train_loss") for epoch in epochs],
                    "validation loss": [epoch.get("val_loss") for epoch in epochs],
                },
                xlabel="epoch",
                ylabel="cross-entropy",
            )
        return context


class LayerDetailView(ResearcherRequiredMixin, TemplateView):
    """The unit browser's layer level: the units with their figures, label and top grid, sortable, filtered
    and paged; dead and saturated units last."""

    nav_section = "networks"
    template_name = "analysis/networks/layer.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network = get_object_or_404(Network, name=kwargs["name"])
        layer = get_object_or_404(Layer, network=network, name=kwargs["layer"])
        extraction = selectors.latest_extraction(layer, run_id=query_id(self.request.GET, "extraction"))
        sort = self.request.GET.get("sort", "unit")
        context.update(
            network=network,
            layer=layer,
            extraction=extraction,
            sort=sort,
            sorts=selectors.UNIT_SORTS,
            units=layer.unit_set.all(),
            extractions=layer.extractions.select_related("run", "dataset").order_by("-created_at"),
        )
        if extraction:
            dissection = selectors.latest_dissection(layer, dataset=extraction.dataset)
            labels, categories = selectors.unit_label_choices(dissection)
            form = UnitFilterForm(self.request.GET, labels=labels, categories=categories)
            rows = selectors.unit_rows(extraction, sort=sort, dissection=dissection, **form.filters())
            page = Paginator(rows, selectors.UNIT_PAGE_SIZE).get_page(self.request.GET.get("page"))
            context.update(
                dissection=dissection,
                filter_form=form,
                page_obj=page,
                unit_rows=page.object_list,
                filtered=any(form.filters().values()),
                matching=page.paginator.count,
                dead_count=extraction.unit_summaries.dead().count(),
            )
        return context


class UnitDetailView(ResearcherRequiredMixin, TemplateView):
    """A unit: its top-15 thresholded grid, its top-10 grid for each object class, its deciles."""

    nav_section = "networks"
    template_name = "analysis/networks/unit.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network = get_object_or_404(Network, name=kwargs["name"])
        layer = get_object_or_404(Layer, network=network, name=kwargs["layer"])
        unit = get_object_or_404(layer.unit_set, index=kwargs["index"])
        extraction = selectors.latest_extraction(layer, run_id=query_id(self.request.GET, "extraction"))
        context.update(
            network=network,
            layer=layer,
            unit=unit,
            extraction=extraction,
            previous=layer.unit_set.filter(index=unit.index - 1).first(),
            next=layer.unit_set.filter(index=unit.index + 1).first(),
        )
        if extraction:
            context["summary"] = selectors.unit_summary(extraction, unit)
            context.update(selectors.unit_exemplars(extraction, unit))
        context.update(
            machine=selectors.unit_machine_figures(unit, extraction=extraction),
            human_panels=unit_panels(unit=unit, request=self.request),
        )
        return context


class ExtractionStartView(ResearcherRequiredMixin, StartRunFormMixin, FormView):
    nav_section = "networks"
    template_name = "analysis/datasets/start.html"
    form_class = ExtractionForm
    run_label = "Extraction"

    def dispatch(self, request, *args, **kwargs):
        self.network = get_object_or_404(Network, name=kwargs["name"])
        return super().dispatch(request, *args, **kwargs)

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "network": self.network}

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "heading": f"Extract activations of {self.network.name}"}

    def start_run(self, form):
        return extraction_run_start(
            network=self.network.name,
            dataset=form.cleaned_data["dataset"],
            layers=form.cleaned_data["layers"],
            quantile=form.cleaned_data["quantile"],
            shards=form.cleaned_data["shards"],
            created_by=self.request.user,
        )


class GridsStartView(ResearcherRequiredMixin, StartRunFormMixin, FormView):
    """Render one layer's grids of an extraction run (a button on the extraction run's page)."""

    nav_section = "networks"
    template_name = "analysis/datasets/start.html"
    form_class = GridsForm
    run_label = "Grid rendering"
    http_method_names = ["post"]

    def start_run(self, form):
        return grids_run_start(
            extraction_run=form.cleaned_data["extraction_run"],
            layer=form.cleaned_data["layer"],
            units=form.cleaned_data["units"],
            created_by=self.request.user,
        )
