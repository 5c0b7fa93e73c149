"""Net2Vec pages: a layer's filter-combination probes vs its best single filters (segmentation and classification),
the network's Table 1, and concept embeddings with their nearest concepts. Thin: reads the stored results; tables
through the service."""

from __future__ import annotations

import math
from statistics import mean

from django.http import Http404
from django.shortcuts import get_object_or_404
from django.views.generic import TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis.models import Net2VecStudy, Network
from analysis.plots import category_colour, category_lines, comparison_scatter, line_chart
from analysis.services.net2vec import net2vec_layer_table, net2vec_nearest_table
from analysis.views.dissection import LayerMixin
from unitscope.queries import query_id

#: Classification subset sizes shown as table columns (when the study trained them).
TABLE_TOP_F = (2, 5, 10, 25, 50)


def _top_f_chart(rows, sizes, attribute: str, *, ylabel: str):
    """Net2Vec Fig. 3 style: the mean of a top-F metric over concepts of each category, against F."""
    categories = list(dict.fromkeys(row.concept.category for row in rows))
    series = {}
    for category in categories:
        values = []
        for f in sizes:
            scores = [getattr(row, attribute).get(str(f)) for row in rows if row.concept.category == category]
            scores = [score for score in scores if score is not None and not math.isnan(score)]
            values.append(mean(scores) if scores else None)
        series[category] = values
    if not sizes or not series:
        return None
    return category_lines(list(sizes), series, xlabel="F (top units by |w| of the combination)", ylabel=ylabel)


class StudyMixin(LayerMixin):
    """The layer's Net2Vec studies and the chosen one (``?run=``; the newest by default)."""

    def get_study(self):
        network, layer = self.get_layer()
        studies = Net2VecStudy.objects.filter(layer=layer).select_related("dataset", "run")
        run_id = query_id(self.request.GET, "run")
        study = studies.filter(run_id=run_id).first() if run_id is not None else studies.first()
        if run_id is not None and study is None:
            raise Http404("No Net2Vec study of this layer in that run.")
        return network, layer, studies, study


class Net2VecView(ResearcherRequiredMixin, StudyMixin, TemplateView):
    """Fong & Vedaldi for one layer: Table 1 (% of concepts where the combination ≥ the best single filter) for the
    network's layers, per-concept single vs combination plots and tables for segmentation (set IoU, §3.1) and
    classification (balanced accuracy and AP, §3.2), top-F curves."""

    template_name = "analysis/net2vec/layer.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer, studies, study = self.get_study()
        context.update(
            network=network, layer=layer, study=study, studies=studies, layer_table=net2vec_layer_table(network)
        )
        if study is None:
            return context
        rows = list(study.concept_results.select_related("concept"))
        for row in rows:
            row.top_ious = [row.top_f_val_iou.get(str(f)) for f in study.top_f]
            row.exemplar_rows = [
                (name, {**entry, "pairs": list(zip(entry["rows"], entry["ious"]))})
                for name, entry in (
                    ("best single unit", row.exemplars.get("single")),
                    ("combination", row.exemplars.get("combination")),
                )
                if entry
            ]
        classified = list(study.classifications.select_related("concept"))
        # the table shows a few subset sizes (the plot shows every F): the paper's round ones when trained
        shown_f = [f for f in study.classification_top_f if f in TABLE_TOP_F] or [
            f for f in study.classification_top_f if f > 1
        ][: len(TABLE_TOP_F)]
        for row in classified:
            row.top_accuracies = [row.top_f_val_accuracy.get(str(f)) for f in shown_f]
        categories = list(dict.fromkeys([row.concept.category for row in rows + classified]))
        context.update(
            rows=rows,
            classified=classified,
            shown_f=shown_f,
            legend=[
                {"name": name, "colour": category_colour(name, position)} for position, name in enumerate(categories)
            ],
            classification_ap_wins=sum(row.combination_val_ap >= row.single_val_ap for row in classified),
        )
        if rows:
            context["segmentation_chart"] = comparison_scatter(
                [row.single_val_iou for row in rows],
                [row.combination_val_iou for row in rows],
                [row.concept.category for row in rows],
                labels=[row.concept.name for row in rows],
                xlabel="best single filter (val set IoU)",
                ylabel="learned combination (val set IoU)",
                limit=(
                    0,
                    max(0.05, min(1.0, 1.1 * max(max(row.single_val_iou, row.combination_val_iou) for row in rows))),
                ),
            )
            context["segmentation_top_f_chart"] = _top_f_chart(
                rows, study.top_f, "top_f_val_iou", ylabel="mean val set IoU"
            )
        if classified:
            context["classification_chart"] = comparison_scatter(
                [row.single_val_accuracy for row in classified],
                [row.combination_val_accuracy for row in classified],
                [row.concept.category for row in classified],
                labels=[row.concept.name for row in classified],
                xlabel="single filter, F = 1 (balanced val accuracy)",
                ylabel="learned combination (balanced val accuracy)",
                limit=(
                    min(
                        [0.4]
                        + [min(row.single_val_accuracy, row.combination_val_accuracy) - 0.02 for row in classified]
                    ),
                    1.0,
                ),
            )
            context["classification_top_f_chart"] = _top_f_chart(
                classified, study.classification_top_f, "top_f_val_accuracy", ylabel="mean balanced val accuracy"
            )
        return context


class Net2VecEmbeddingsView(ResearcherRequiredMixin, StudyMixin, TemplateView):
    """Net2Vec §5.3 / Table 2: every concept's nearest concepts by cosine of the learned weights, in the
    segmentation and the classification embedding spaces; ``?concept=`` focuses one concept."""

    template_name = "analysis/net2vec/embeddings.html"
    nearest_count = 5

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer, studies, study = self.get_study()
        context.update(network=network, layer=layer, study=study, studies=studies)
        if study is None:
            return context
        segmentation = list(study.concept_results.select_related("concept"))
        classification = list(study.classifications.select_related("concept"))
        near_segmentation = net2vec_nearest_table(segmentation, self.nearest_count)
        near_classification = net2vec_nearest_table(classification, self.nearest_count)
        concepts = {row.concept.number: row.concept for row in segmentation + classification}
        entries = [
            {
                "concept": concept,
                "segmentation": near_segmentation.get(number),
                "classification": near_classification.get(number),
            }
            for number, concept in sorted(concepts.items(), key=lambda item: (item[1].category, item[1].name))
        ]
        number = query_id(self.request.GET, "concept")
        if number is not None and number not in concepts:
            raise Http404("That concept is not in this study.")
        chosen = next((entry for entry in entries if entry["concept"].number == number), None)
        context.update(entries=entries, chosen=chosen, nearest_count=self.nearest_count)
        return context


class NetworkNet2VecView(ResearcherRequiredMixin, TemplateView):
    """Fong & Vedaldi Table 1 for a network: per layer, the % of concepts where the combination ≥ the best single
    filter, for segmentation and classification."""

    nav_section = "networks"
    template_name = "analysis/net2vec/network.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network = get_object_or_404(Network, name=kwargs["name"])
        table = net2vec_layer_table(network)
        context.update(network=network, layer_table=table)
        if table:
            names = [entry["layer"].name for entry in table]
            context["table_chart"] = line_chart(
                names,
                {
                    "segmentation (set IoU)": [entry["segmentation"] for entry in table],
                    "classification (accuracy)": [entry["classification"] for entry in table],
                },
                xlabel="layer",
                ylabel="% combination ≥ single",
                ylim=(0, 105),
            )
        return context
