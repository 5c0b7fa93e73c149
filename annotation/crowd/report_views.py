"""Researchers' report pages of a crowd study (issue 8 items 5–6): aggregated results and worker quality, the
ND'18 Table 3 report, the Explanatory Graph purity table. Reads through :mod:`annotation.crowd.reports`."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.views.generic import TemplateView

from analysis.plots import category_bars, comparison_scatter, interval_chart, scatter_chart, stacked_category_bars

from ..common import simulated_choice
from ..models import CrowdTaskKind
from . import forced_choice_report, reports
from .views import CrowdStudyMixin

AGREEMENT_LABELS = {"fleiss_kappa": "Fleiss' κ", "krippendorff_alpha": "Krippendorff's α (nominal)"}
SHORT_LABELS = {"fleiss_kappa": "κ", "krippendorff_alpha": "α"}
HITS_PER_PAGE = 50


class CrowdReportMixin(CrowdStudyMixin):
    """The study and the ``simulated`` choice (``?simulated=``; default
    :func:`annotation.crowd.reports.simulated_default`)."""

    def report_context(self) -> dict:
        study = self.get_study()
        simulated = simulated_choice(self.request.GET.get("simulated"), default=reports.simulated_default(study))
        return {
            "study": study,
            "simulated": simulated,
            "has_human": reports.has_human_answers(study),
            "has_simulated": study.workers.filter(simulated=True).exists(),
            "tab": self.tab,
            "simulated_choices": [("exclude", "People"), ("include", "People + simulated"), ("only", "Simulated only")],
        }


class CrowdReportView(CrowdReportMixin, TemplateView):
    """Aggregated results per HIT (majority vote and Dawid-Skene), worker skill and gold accuracy, agreement."""

    template_name = "annotation/crowd/report.html"
    tab = "results"

    def get_context_data(self, **kwargs):
        context = {**super().get_context_data(**kwargs), **self.report_context()}
        result = reports.crowd_aggregation(context["study"], simulated=context["simulated"])
        context["result"] = result
        level = result["agreement"].get("krippendorff_alpha_level", "nominal")  # interval for purity counts
        labels = {**AGREEMENT_LABELS, "krippendorff_alpha": f"Krippendorff's α ({level})"}
        statistics = [
            {
                "label": labels[name],
                "short": SHORT_LABELS[name],
                "overall": result["agreement"][name],
                "by_origin": [(row["origin"], row[name]) for row in result["agreement_by_origin"]],
            }
            for name in AGREEMENT_LABELS
        ]
        context["statistics"] = statistics
        context["page_obj"] = Paginator(result["hits"], HITS_PER_PAGE).get_page(self.request.GET.get("page"))
        shown = [
            (f"{row['label']}", row["overall"])
            for row in statistics
            if row["overall"] and row["overall"]["value"] is not None
        ]
        shown += [
            (f"{row['short']} · {origin}", estimate)
            for row in statistics
            for origin, estimate in row["by_origin"]
            if estimate and estimate["value"] is not None
        ]
        if shown:
            context["agreement_chart"] = interval_chart(
                [label for label, _ in shown],
                [e["value"] for _, e in shown],
                [e["ci"][0] if e["ci"] else None for _, e in shown],
                [e["ci"][1] if e["ci"] else None for _, e in shown],
                xlabel=f"agreement, {round(result['confidence'] * 100)}% bootstrap interval over HITs",
                xlim=(-0.2, 1.0),
                width=6.0,
            )
        points = [row for row in result["workers"] if row["skill"] is not None and row["gold_accuracy"] is not None]
        if points:
            context["skill_chart"] = comparison_scatter(
                [row["gold_accuracy"] for row in points],
                [row["skill"] for row in points],
                ["simulated" if row["worker"].simulated else "person" for row in points],
                labels=[row["worker"].external_id for row in points],
                xlabel="accuracy on gold items",
                ylabel="Dawid-Skene skill",
            )
        return context


class CrowdTable3View(CrowdReportMixin, TemplateView):
    """ND'18 Table 3 from a validation study."""

    template_name = "annotation/crowd/report_table3.html"
    tab = "table3"

    def get_context_data(self, **kwargs):
        context = {**super().get_context_data(**kwargs), **self.report_context()}
        study = context["study"]
        rule = self.request.GET.get("interpretable", "validated")
        if rule not in reports.INTERPRETABLE_RULES:
            rule = "validated"
        context["interpretable"] = rule
        if study.kind != CrowdTaskKind.VALIDATION:
            return context
        table = reports.nd18_table3(study, simulated=context["simulated"], interpretable=rule)
        context["table"] = table
        layers = [entry["layer"] for entry in table["layers"]]
        if any(entry["interpretable"] for entry in table["layers"]):
            context["category_chart"] = stacked_category_bars(
                layers,
                [category or reports.NO_CATEGORY_LABEL for category in table["categories"]],
                [
                    [entry["by_category"].get(category, 0) for category in table["categories"]]
                    for entry in table["layers"]
                ],
                ylabel="interpretable units",
            )
        shares = [
            (f"{entry['layer']} · {label}", entry[name])
            for entry in table["layers"]
            for name, label in (
                ("human", "human labels"),
                ("dissection", "dissection labels"),
                ("control", "control labels"),
            )
            if entry[name]["value"] is not None
        ]
        if shares:
            context["share_chart"] = interval_chart(
                [label for label, _ in shares],
                [share["value"] for _, share in shares],
                [share["ci"][0] if share["ci"] else None for _, share in shares],
                [share["ci"][1] if share["ci"] else None for _, share in shares],
                xlabel="share of yes votes (mean over interpretable units), 95% bootstrap interval over units",
                xlim=(0.0, 1.0),
                width=6.0,
            )
        return context


class CrowdPurityView(CrowdReportMixin, TemplateView):
    """Explanatory Graph Fig. 8: purity per pattern source and layer."""

    template_name = "annotation/crowd/report_purity.html"
    tab = "purity"

    def get_context_data(self, **kwargs):
        context = {**super().get_context_data(**kwargs), **self.report_context()}
        table = reports.purity_table(context["study"], simulated=context["simulated"])
        context["table"] = table
        if table["rows"] and table["layers"]:
            context["purity_chart"] = category_bars(
                table["layers"],
                {
                    (
                        row["label"]
                        if row["study"].pk == context["study"].pk
                        else f"{row['label']} ({row['study'].name})"
                    ): [round(100 * cell["purity"]) if cell["purity"] is not None else 0 for cell in row["cells"]]
                    for row in table["rows"]
                },
                ylabel="purity (%)",
            )
        return context


class CrowdForcedChoiceView(CrowdReportMixin, TemplateView):
    """Forced-choice psychophysics (issue 17): proportion correct per layer and condition against chance, paired
    condition tests, per-unit human scores beside the machine proxy and the automatic scores, exclusions."""

    template_name = "annotation/crowd/report_forced_choice.html"
    tab = "forced_choice"

    def get_context_data(self, **kwargs):
        context = {**super().get_context_data(**kwargs), **self.report_context()}
        study = context["study"]
        if study.kind != CrowdTaskKind.FORCED_CHOICE:
            return context
        report = forced_choice_report.forced_choice_report(study, simulated=context["simulated"])
        context["report"] = report
        context["exports"] = forced_choice_report.FORCED_CHOICE_EXPORT_FILES
        context["unit_page"] = Paginator(report["comparison"], HITS_PER_PAGE).get_page(self.request.GET.get("page"))
        if report["layers"]:
            rows = report["layers"]
            context["layer_chart"] = interval_chart(
                [f"{row['layer']} · {row['condition']}" for row in rows],
                [row["proportion"] for row in rows],
                [row["ci_low"] for row in rows],
                [row["ci_high"] for row in rows],
                reference=report["chance"],
                xlabel="proportion correct, exact 95% interval (chance 50%)",
                xlim=(0.0, 1.0),
                width=6.0,
            )
        charts = []
        for correlation in report["correlations"]:
            points = [
                row
                for row in report["comparison"]
                if row["human"] is not None and row[correlation["score"]] is not None
            ]
            if len(points) >= 3:
                charts.append(
                    {
                        "label": correlation["label"],
                        "chart": scatter_chart(
                            [row[correlation["score"]] for row in points],
                            [row["human"] for row in points],
                            [f"{row['layer']}/{row['unit']}" for row in points],
                            xlabel=correlation["label"],
                            ylabel="human proportion correct",
                        ),
                    }
                )
        context["scatter_charts"] = charts
        return context
