"""Network Dissection pages: a layer's dissection, a network's summary, the rotation test, a concept's best units,
and the forms that start these runs. Thin: reads through selectors, starts runs through services."""

from __future__ import annotations

import statistics

from django.http import Http404
from django.shortcuts import get_object_or_404
from django.views.generic import FormView, TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis import selectors
from analysis.dissection_forms import DissectionForm, RotationForm
from analysis.models import Concept, Dataset, Layer, Network
from analysis.plots import category_bars, category_colour, rotation_chart, stacked_category_bars
from analysis.services.dissection import DISSECTION_DEFAULTS, dissection_run_start, rotation_run_start
from analysis.views.starting import StartRunFormMixin
from unitscope.queries import query_id


class LayerMixin:
    """Resolves ``network`` and ``layer`` from the URL."""

    nav_section = "networks"

    def get_layer(self) -> tuple[Network, Layer]:
        network = get_object_or_404(Network, name=self.kwargs["name"])
        layer = get_object_or_404(Layer, network=network, name=self.kwargs["layer"])
        return network, layer


def _default_dataset(layer: Layer) -> str | None:
    extraction = selectors.latest_extraction(layer)
    if extraction is not None:
        return extraction.dataset.name
    first = Dataset.objects.order_by("name").first()
    return first.name if first else None


def _category_rows(dissection, baseline=None, per_category: dict | None = None) -> list[dict]:
    rows = []
    for position, category in enumerate(dissection.categories):
        entry = (dissection.per_category if per_category is None else per_category).get(category, {})
        rows.append(
            {
                "category": category,
                "colour": category_colour(category, position),
                "detectors": entry.get("detectors", 0),
                "unique": entry.get("unique", 0),
                "concepts": entry.get("concepts", []),
                "baseline": baseline.per_category.get(category, {}).get("detectors", 0) if baseline else None,
            }
        )
    return rows


class LayerDissectionView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """A layer's dissection: detectors and unique concepts per category (ND'18 Fig. 9 style), the shuffled
    baseline beside them, every detector unit by IoU, and the forms to start more runs."""

    template_name = "analysis/dissection/layer.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        run_id = query_id(self.request.GET, "run")
        dissection = selectors.latest_dissection(layer, run_id=run_id)
        if run_id is not None and dissection is None:
            raise Http404("No finished dissection of this layer in that run.")
        if dissection is None:  # nothing but baselines yet: show the newest baseline
            dissection = selectors.latest_dissection(layer, baseline="shuffled")
        baseline = selectors.latest_baseline_for(dissection) if dissection and dissection.baseline == "none" else None
        counterpart = (
            selectors.latest_dissection(layer, dataset=dissection.dataset)
            if dissection and dissection.baseline != "none"
            else None
        )
        context.update(
            network=network,
            layer=layer,
            dissection=dissection,
            baseline=baseline,
            counterpart=counterpart,
            dissections=selectors.layer_dissections(layer),
            rotation_test=selectors.latest_rotation_test(layer),
            form=DissectionForm(
                initial={"dataset": dissection.dataset.name if dissection else _default_dataset(layer)}
            ),
        )
        if dissection is not None:
            statuses = selectors.unit_statuses(dissection.extraction)
            dead = {index for index, status in statuses.items() if status != "live"}
            detectors = selectors.dissection_units(dissection, detectors_only=True)
            dead_detectors = [result for result in detectors if result.unit.index in dead]
            counts = selectors.dissection_live_detectors(dissection, dead) if dead_detectors else None
            context.update(
                statuses=statuses,
                dead_count=len(dead),
                dead_detectors=dead_detectors,
                n_detectors=counts["detectors"] if counts else dissection.n_detectors,
                n_unique=counts["unique"] if counts else dissection.n_unique_detectors,
            )
            rows = _category_rows(dissection, baseline, counts["per_category"] if counts else None)
            context["category_rows"] = rows
            series = {
                "detector units": [row["detectors"] for row in rows],
                "unique concepts": [row["unique"] for row in rows],
            }
            if baseline is not None:
                series["detectors, shuffled masks"] = [row["baseline"] for row in rows]
            context["category_chart"] = category_bars([row["category"] for row in rows], series, ylabel="count")
            context["detector_units"] = [result for result in detectors if result.unit.index not in dead]
            others = list(selectors.dissection_units(dissection).filter(is_detector=False)) + dead_detectors
            context["other_units"] = sorted(others, key=lambda result: (result.unit.index in dead, -result.iou))
            context["iou_threshold"] = dissection.iou_threshold
            test = context["rotation_test"]
            if (
                test is not None
                and test.dataset_id == dissection.dataset_id
                and test.alphas
                and dissection.baseline == "none"
            ):
                alpha = max(test.alphas)
                points = [point["unique"] for point in test.points if point["alpha"] == alpha]
                context.update(rotated_alpha=alpha, rotated_unique=sum(points) / len(points) if points else None)
        return context


class DissectionStartView(ResearcherRequiredMixin, LayerMixin, StartRunFormMixin, FormView):
    template_name = "analysis/datasets/start.html"
    form_class = DissectionForm
    run_label = "Dissection"

    def get_initial(self):
        _, layer = self.get_layer()
        return {"dataset": _default_dataset(layer)}

    def get_context_data(self, **kwargs):
        network, layer = self.get_layer()
        return {**super().get_context_data(**kwargs), "heading": f"Dissect {network.name} · {layer.name}"}

    def start_run(self, form):
        network, layer = self.get_layer()
        return dissection_run_start(
            network=network.name, layer=layer.name, created_by=self.request.user, **form.cleaned_data
        )


class NetworkDissectionView(ResearcherRequiredMixin, TemplateView):
    """Unique concepts per category across a network's dissected layers (ND'18 Fig. 9 style)."""

    nav_section = "networks"
    template_name = "analysis/dissection/network.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network = get_object_or_404(Network, name=kwargs["name"])
        dataset = None
        if self.request.GET.get("dataset"):
            dataset = get_object_or_404(Dataset, name=self.request.GET["dataset"])
        dissections = selectors.network_dissections(network, dataset=dataset)
        rows = [
            {
                "dissection": dissection,
                "baseline": selectors.latest_baseline_for(dissection),
                "categories": _category_rows(dissection),
            }
            for dissection in dissections
        ]
        context.update(network=network, rows=rows, layers=network.layers.all())
        if dissections:
            categories = dissections[0].categories
            context["categories"] = [
                {"name": name, "colour": category_colour(name, position)} for position, name in enumerate(categories)
            ]
            context["unique_chart"] = stacked_category_bars(
                [dissection.layer.name for dissection in dissections],
                categories,
                [
                    [dissection.per_category.get(name, {}).get("unique", 0) for name in categories]
                    for dissection in dissections
                ],
                ylabel="unique concepts",
            )
            context["detector_chart"] = stacked_category_bars(
                [dissection.layer.name for dissection in dissections],
                categories,
                [
                    [dissection.per_category.get(name, {}).get("detectors", 0) for name in categories]
                    for dissection in dissections
                ],
                ylabel="detector units",
            )
        return context


class RotationView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """ND'18 §3.2 / Fig. 6: unique detectors of the layer under random rotations Q^α of its units."""

    template_name = "analysis/dissection/rotation.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        run_id = query_id(self.request.GET, "run")
        test = selectors.latest_rotation_test(layer, run_id=run_id)
        if run_id is not None and test is None:
            raise Http404("No rotation test of this layer in that run.")
        context.update(
            network=network,
            layer=layer,
            test=test,
            tests=layer.rotation_tests.select_related("dataset", "run").order_by("-created_at"),
            form=RotationForm(initial={"dataset": test.dataset.name if test else _default_dataset(layer)}),
        )
        if test is not None:
            alphas = test.alphas
            by_seed = {
                str(seed): [
                    next(p["unique"] for p in test.points if p["seed"] == seed and p["alpha"] == alpha)
                    for alpha in alphas
                ]
                for seed in test.seeds
            }
            detectors = {
                str(seed): [
                    next(p["detectors"] for p in test.points if p["seed"] == seed and p["alpha"] == alpha)
                    for alpha in alphas
                ]
                for seed in test.seeds
            }
            # Means over every rotation measured at α (at α = 1 that includes the repeats of ND'18 Fig. 8).
            mean = [statistics.fmean(p["unique"] for p in test.points if p["alpha"] == alpha) for alpha in alphas]
            mean_detectors = [
                statistics.fmean(p["detectors"] for p in test.points if p["alpha"] == alpha) for alpha in alphas
            ]
            complete = [p["unique"] for p in test.points if p["alpha"] == 1.0]
            baseline = None
            real = selectors.latest_dissection(layer, dataset=test.dataset)
            shuffled = selectors.latest_baseline_for(real) if real else None
            if shuffled is not None:
                baseline = shuffled.n_unique_detectors
            context.update(
                unique_chart=rotation_chart(alphas, by_seed, mean, ylabel="unique detectors", baseline=baseline),
                detector_chart=rotation_chart(alphas, detectors, mean_detectors, ylabel="detector units"),
                table=[
                    {"alpha": alpha, "unique": by_seed_values, "mean": m, "mean_detectors": md}
                    for alpha, by_seed_values, m, md in zip(alphas, zip(*by_seed.values()), mean, mean_detectors)
                ],
                shuffled=shuffled,
                real=real,
                complete_rotation={
                    "values": complete,
                    "seeds": [p["seed"] for p in test.points if p["alpha"] == 1.0],
                    "mean": statistics.fmean(complete),
                    "sd": statistics.stdev(complete) if len(complete) > 1 else None,
                }
                if complete
                else None,
            )
        return context


class RotationStartView(ResearcherRequiredMixin, LayerMixin, StartRunFormMixin, FormView):
    template_name = "analysis/datasets/start.html"
    form_class = RotationForm
    run_label = "Rotation test"

    def get_initial(self):
        _, layer = self.get_layer()
        return {"dataset": _default_dataset(layer)}

    def get_context_data(self, **kwargs):
        network, layer = self.get_layer()
        return {
            **super().get_context_data(**kwargs),
            "heading": f"Random-rotation test of {network.name} · {layer.name}",
        }

    def start_run(self, form):
        network, layer = self.get_layer()
        return rotation_run_start(
            network=network.name, layer=layer.name, created_by=self.request.user, **form.cleaned_data
        )


class ConceptDetailView(ResearcherRequiredMixin, TemplateView):
    """A concept: the units labelled with it and, per dissected layer, the units that segment it best."""

    nav_section = "datasets"
    template_name = "analysis/dissection/concept.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        dataset = get_object_or_404(Dataset, name=kwargs["name"])
        concept = get_object_or_404(Concept, dataset=dataset, number=kwargs["number"])
        labelled = list(selectors.concept_labelled_units(concept))
        context.update(
            dataset=dataset,
            concept=concept,
            labelled=labelled,
            detectors=[result for result in labelled if result.is_detector],
            best=selectors.concept_best_units(concept),
            colour=category_colour(concept.category, 0),
            iou_threshold=DISSECTION_DEFAULTS["iou_threshold"],
        )
        return context
