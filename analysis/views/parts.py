"""Part detection and discriminativeness pages (GG'18 §3, §5–6): a layer's part summary with emergence verdicts, a
part's filters, curves and example detections, a layer's ablations, a class's δ chart, the correlation plots, and
the forms that start these runs. Thin: reads stored results, starts runs through services."""

from __future__ import annotations

from django import forms
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.views.generic import FormView, TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis import selectors
from analysis.models import (
    AblationStudy,
    ClassDiscriminativeness,
    Dataset,
    PartDetectionResult,
    PartDetectionStudy,
    PartInputs,
)
from analysis.params import form_field
from analysis.plots import delta_bars, horizontal_bars, line_chart, pr_chart, scatter_chart
from analysis.services.parts import (
    ABLATION_PARAMS,
    PART_DEFAULTS,
    PART_PARAMS,
    ablation_run_start,
    part_correlations,
    part_detection_run_start,
    part_examples,
)
from analysis.views.dissection import LayerMixin, _default_dataset
from analysis.views.starting import StartRunFormMixin
from unitscope.queries import query_id


def _datasets():
    return [
        (name, name) for name in Dataset.objects.filter(has_boxes=True).order_by("name").values_list("name", flat=True)
    ]


def _percentages(result) -> dict:
    """A part result's APs (best, GA, TopFilters, all, location-prior floor) and GA recall in %."""
    pct = {key: 100 * getattr(result, f"{key}_ap") for key in ("best", "ga", "top", "all")}
    pct["prior"] = None if result.prior_ap is None else 100 * result.prior_ap
    pct["recall"] = 100 * result.ga_recall
    return pct


class PartDetectionForm(forms.Form):
    dataset = forms.ChoiceField(help_text="A dataset with object and part boxes.")
    inputs = form_field(PART_PARAMS, "inputs", choice_labels=dict(PartInputs.choices))
    split = form_field(PART_PARAMS, "split", help_text="GG'18 evaluates on the train split the network was trained on.")
    regression = form_field(PART_PARAMS, "regression", label="Box regression (GG'18 §3.1.1)")
    min_part_size = form_field(
        PART_PARAMS,
        "min_part_size",
        help_text="Drop parts whose mean box side is at most this many pixels (GG'18: 15).",
    )
    population = form_field(PART_PARAMS, "population")
    generations = form_field(PART_PARAMS, "generations")
    seed = form_field(PART_PARAMS, "seed")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = _datasets()


class AblationForm(forms.Form):
    dataset = forms.ChoiceField()
    inputs = form_field(ABLATION_PARAMS, "inputs", choice_labels=dict(PartInputs.choices))
    split = form_field(ABLATION_PARAMS, "split")
    score = form_field(ABLATION_PARAMS, "score", choice_labels={"softmax": "Softmax probability", "logit": "Logit"})
    max_images = form_field(ABLATION_PARAMS, "max_images", help_text="Views per class (a seeded sample); 0 = all.")
    blackout = form_field(ABLATION_PARAMS, "blackout", label="Part blackouts (GG'18 §6)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = _datasets()


def _pick(queryset, request, what: str):
    run_id = query_id(request.GET, "run")
    chosen = queryset.filter(run_id=run_id).first() if run_id is not None else queryset.first()
    if run_id is not None and chosen is None:
        raise Http404(f"No {what} of this layer in that run.")
    return chosen


class LayerPartsView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """GG'18 Table 1 for one layer: per part the best filter's AP, the GA combination's AP and size, TopFilters and
    all filters, with the emergence verdicts (AP > 30%, recall > 50%)."""

    template_name = "analysis/parts/layer.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        studies = PartDetectionStudy.objects.filter(layer=layer).select_related("dataset", "run")
        study = _pick(studies, self.request, "part-detection study")
        context.update(
            network=network,
            layer=layer,
            study=study,
            studies=studies,
            form=PartDetectionForm(initial={"dataset": _default_dataset(layer)}),
        )
        if study is not None:
            ap_criterion = study.params.get("ap_criterion", PART_DEFAULTS["ap_criterion"])
            recall_criterion = study.params.get("recall_criterion", PART_DEFAULTS["recall_criterion"])
            results = list(study.part_results.select_related("object_class", "part"))
            for result in results:
                result.verdict_ap = result.emerges(ap_criterion)
                result.verdict_prior = result.emerges_above_prior(ap_criterion)
                result.verdict_recall = result.covered(recall_criterion)
                result.pct = _percentages(result)
            context["mean_pct"] = {key: 100 * getattr(study, f"mean_{key}_ap") for key in ("best", "ga", "top", "all")}
            context["mean_pct"]["prior"] = None if study.mean_prior_ap is None else 100 * study.mean_prior_ap
            ordered = sorted(results, key=lambda r: r.name)
            context.update(
                results=results,
                ap_criterion=ap_criterion,
                recall_criterion=recall_criterion,
                ap_chart=horizontal_bars(
                    [r.name for r in ordered],
                    {"best single filter": [r.best_ap for r in ordered], "GA combination": [r.ga_ap for r in ordered]},
                    xlabel="average precision",
                    reference=ap_criterion,
                ),
            )
        return context


class PartDetailView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """One part class: its best filters, the GA combination against TopFilters and all filters, precision–recall
    curves (GG'18 Fig. 6), the GA's convergence, and example detections (Fig. 4)."""

    template_name = "analysis/parts/part.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        result = get_object_or_404(
            PartDetectionResult.objects.select_related("study__dataset", "study__run", "object_class", "part"),
            pk=kwargs["pk"],
            study__layer=layer,
        )
        study = result.study
        ranked = sorted(range(len(result.single_ap)), key=lambda f: (-result.single_ap[f], f))
        curves = {
            label: (curve["recall"], curve["precision"])
            for label, curve in result.curves.items()
            if label != "TopFilters"
        }
        if "TopFilters" in result.curves:
            curves = {
                "TopFilters": (result.curves["TopFilters"]["recall"], result.curves["TopFilters"]["precision"]),
                **{k: v for k, v in curves.items() if k != "GA combination"},
                "GA combination": curves.get("GA combination", ([0], [1])),
            }
        result.pct = _percentages(result)
        context.update(
            network=network,
            layer=layer,
            result=result,
            study=study,
            top_single=[
                {"filter": f, "ap": result.single_ap[f], "recall": result.single_recall[f]} for f in ranked[:10]
            ],
            ap_criterion=study.params.get("ap_criterion", PART_DEFAULTS["ap_criterion"]),
            recall_criterion=study.params.get("recall_criterion", PART_DEFAULTS["recall_criterion"]),
            pr_chart=pr_chart(curves),
            ga_chart=line_chart(
                list(range(1, len(result.ga_history) + 1)),
                {"best AP so far": result.ga_history},
                xlabel="generation",
                ylabel="AP",
            )
            if result.ga_history
            else None,
            examples=part_examples(result),
            siblings=study.part_results.order_by("name").only("pk", "name"),
        )
        return context


class PartsStartView(ResearcherRequiredMixin, LayerMixin, StartRunFormMixin, FormView):
    template_name = "analysis/datasets/start.html"
    form_class = PartDetectionForm
    run_label = "Part detection"

    def get_initial(self):
        _, layer = self.get_layer()
        return {"dataset": _default_dataset(layer)}

    def get_context_data(self, **kwargs):
        network, layer = self.get_layer()
        return {**super().get_context_data(**kwargs), "heading": f"Part detection on {network.name} · {layer.name}"}

    def start_run(self, form):
        network, layer = self.get_layer()
        return part_detection_run_start(
            network=network.name, layer=layer.name, created_by=self.request.user, **form.cleaned_data
        )


class LayerAblationView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """GG'18 §5–6 for one layer: discriminative filters per object class, the set ablations, part blackouts."""

    template_name = "analysis/parts/ablation.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        studies = AblationStudy.objects.filter(layer=layer).select_related("dataset", "run")
        study = _pick(studies, self.request, "ablation study")
        context.update(
            network=network,
            layer=layer,
            study=study,
            studies=studies,
            form=AblationForm(initial={"dataset": _default_dataset(layer)}),
        )
        if study is not None:
            classes = list(study.class_results.select_related("object_class"))
            parts = list(study.part_results.select_related("object_class", "part"))
            context.update(classes=classes, parts=parts, near_chance=selectors.ablation_sanity_warning(study, network))
            if parts:
                ordered = sorted(parts, key=lambda p: p.name)
                context["blackout_chart"] = horizontal_bars(
                    [p.name for p in ordered],
                    {"δ (blackout)": [p.delta for p in ordered]},
                    xlabel=f"δ of the class score ({study.score})",
                    unit_interval=False,
                )
        return context


class AblationClassView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """GG'18 Fig. 10a: δ_j of every filter for one object class, the 2σ line, the discriminative filters."""

    template_name = "analysis/parts/ablation_class.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        row = get_object_or_404(
            ClassDiscriminativeness.objects.select_related("study__dataset", "study__run", "object_class"),
            pk=kwargs["pk"],
            study__layer=layer,
        )
        context.update(
            network=network,
            layer=layer,
            row=row,
            study=row.study,
            chart=delta_bars(row.deltas, row.threshold, highlight=row.discriminative, ylabel=f"δ ({row.study.score})"),
            discriminative=[{"filter": f, "delta": row.deltas[f]} for f in row.discriminative],
            siblings=row.study.class_results.select_related("object_class"),
        )
        return context


class AblationStartView(ResearcherRequiredMixin, LayerMixin, StartRunFormMixin, FormView):
    template_name = "analysis/datasets/start.html"
    form_class = AblationForm
    run_label = "Ablation"

    def get_initial(self):
        _, layer = self.get_layer()
        return {"dataset": _default_dataset(layer)}

    def get_context_data(self, **kwargs):
        network, layer = self.get_layer()
        return {**super().get_context_data(**kwargs), "heading": f"Ablations of {network.name} · {layer.name}"}

    def start_run(self, form):
        network, layer = self.get_layer()
        return ablation_run_start(
            network=network.name, layer=layer.name, created_by=self.request.user, **form.cleaned_data
        )


class PartCorrelationsView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """GG'18 Fig. 3 and Fig. 15: part size vs GA AP vs blackout discriminativeness, Pearson's r with p-values, from
    the newest part-detection and ablation studies of the layer on the same dataset."""

    template_name = "analysis/parts/correlations.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        parts = PartDetectionStudy.objects.filter(layer=layer).select_related("dataset", "run").first()
        # Part blackouts do not depend on the layer: the newest study with blackouts on the network (this layer's
        # first) on the part study's dataset.
        candidates = (
            AblationStudy.objects.filter(layer__network=network, part_results__isnull=False)
            .distinct()
            .select_related("dataset", "run", "layer")
        )
        if parts is not None:
            candidates = candidates.filter(dataset=parts.dataset)
        ablation = candidates.filter(layer=layer).first() or candidates.first()
        table = part_correlations(parts=parts, ablation=ablation)
        rows = table["rows"]
        charts = []
        for key, (a, b), (xlabel, ylabel) in (
            ("size_ap", ("size", "ap"), ("part size / object size", "AP (GA combination)")),
            ("size_delta", ("size", "delta"), ("part size / object size", "δ (part blackout)")),
            ("ap_delta", ("ap", "delta"), ("AP (GA combination)", "δ (part blackout)")),
        ):
            chosen = [row for row in rows if row["in_common"] and row[a] is not None and row[b] is not None]
            stats = table[key]
            if len(chosen) >= 2:
                title = (
                    f"Pearson r = {stats['r']:.2f}, p = {stats['p']:.2g} (n = {stats['n']})"
                    if stats["r"] is not None
                    else f"n = {stats['n']}: too few points for r"
                )
                charts.append(
                    {
                        "title": f"{ylabel} vs {xlabel}",
                        "stats": stats,
                        "svg": scatter_chart(
                            [row[a] for row in chosen],
                            [row[b] for row in chosen],
                            [row["name"] for row in chosen],
                            xlabel=xlabel,
                            ylabel=ylabel,
                            title=title,
                        ),
                    }
                )
        context.update(
            network=network,
            layer=layer,
            parts=parts,
            ablation=ablation,
            rows=rows,
            charts=charts,
            n_common=table["n_common"],
            left_out=[row["name"] for row in rows if not row["in_common"]],
        )
        return context
