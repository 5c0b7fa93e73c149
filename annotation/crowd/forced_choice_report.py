"""The analysis of forced-choice studies (issue 17): trial rows with full provenance, worker exclusions, proportion
correct per unit / layer / condition with exact binomial (Clopper–Pearson) intervals against chance (50 %), paired
condition tests over units, the machine proxy observer's per-unit score, and the per-unit human score beside the
automatic ones (ND IoU and label, best part AP, Net2Vec, expert systematicity) with Spearman rank correlations.
Reads only; the maths is :mod:`analysis.engine.psychophysics`.

Which answers count: submitted or approved assignments (rejected ones are out) of task HITs; catch trials (the gold
HITs) only decide exclusions; practice answers never count. Simulated workers follow ``simulated`` (exclude by
default, as every crowd report).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analysis.engine.psychophysics import (
    CHANCE,
    binomial_test_p,
    clopper_pearson,
    paired_condition_test,
    rank_correlation,
)
from analysis.models import Net2VecConcept, PartDetectionResult, UnitDissection

from ..common import iso, rows_csv, simulated_check
from ..models import (
    YES_ANSWERS,
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdTaskKind,
    ForcedChoiceCondition,
    ForcedChoiceReference,
    ForcedChoiceTrial,
    HitRole,
    Judgment,
)
from .hits import dissection_for


@dataclass(frozen=True)
class ExclusionRule:
    """Who is left out of the analysis (kept in the exports with the reason). Our choices — Zimmermann et al. 2023
    excluded workers who failed catch trials or answered implausibly fast, without one published threshold:

    * ``min_catch_accuracy`` (0.75) once a worker answered at least ``min_catch_trials`` (2) catch trials;
    * a median response time (server-side, shown → submitted) below ``min_median_seconds`` (1 s: faster than one
      can look at 20 images) or above ``max_median_seconds`` (120 s: not attending).
    """

    min_catch_accuracy: float = 0.75
    min_catch_trials: int = 2
    min_median_seconds: float = 1.0
    max_median_seconds: float = 120.0


TRIAL_FIELDS = (
    "assignment",
    "study",
    "hit",
    "hit_token",
    "hit_role",
    "network",
    "layer",
    "unit",
    "worker",
    "worker_adapter",
    "worker_external_id",
    "worker_simulated",
    "state",
    "condition",
    "catch",
    "top_references",
    "top_reference_ranks",
    "bottom_references",
    "bottom_reference_ranks",
    "strong_image",
    "strong_rank",
    "strong_score",
    "weak_image",
    "weak_rank",
    "weak_score",
    "strong_position",
    "answer",
    "chosen_image",
    "correct",
    "confidence",
    "shown_at",
    "submitted_at",
    "seconds",
    "client_ms",
    "proxy_margin",
    "excluded",
    "exclusion_reason",
)
"""Trial-level export: every submitted, approved or rejected forced-choice answer (task and catch trials) with the
worker, the condition shown, the reference and query images (dataset indices) with their activation ranks (from the
top for strong images, from the bottom for weak ones), which position the strong query had (``strong_position``),
the answer and the image it names, correctness, confidence, times (server seconds, the page's ``client_ms``), the
proxy's margin on that trial, and whether and why the worker is excluded from the analysis."""

UNIT_FIELDS = (
    "network",
    "layer",
    "unit",
    "condition",
    "n",
    "correct",
    "proportion",
    "ci_low",
    "ci_high",
    "p_chance",
    "proxy",
)
COMPARISON_FIELDS = (
    "network",
    "layer",
    "unit",
    "human",
    "human_n",
    "proxy",
    "iou",
    "label",
    "part_ap",
    "net2vec_iou",
    "expert_systematicity",
    "planted_readability",
)
AUTOMATIC_SCORES = {
    "iou": "ND'18 IoU",
    "part_ap": "best part AP (GG'18)",
    "net2vec_iou": "Net2Vec single-filter IoU",
    "expert_systematicity": "expert systematicity (share of yes)",
    "proxy": "machine proxy",
}


def _answered(study, simulated: str):
    simulated_check(simulated)
    rows = (
        CrowdAssignment.objects.filter(
            hit__study=study,
            hit__kind=CrowdTaskKind.FORCED_CHOICE,
            state__in=(CrowdAssignmentState.SUBMITTED, CrowdAssignmentState.APPROVED, CrowdAssignmentState.REJECTED),
        )
        .exclude(hit__role=HitRole.QUALIFICATION)
        .select_related("hit__fc_trial", "hit__unit__layer__network", "worker")
        .order_by("submitted_at", "id")
    )
    if simulated == "exclude":
        rows = rows.filter(worker__simulated=False)
    elif simulated == "only":
        rows = rows.filter(worker__simulated=True)
    return list(rows)


def worker_exclusions(assignments, rule: ExclusionRule) -> dict[int, str]:
    """``{worker id: reason}`` for the workers ``rule`` leaves out, from their counted answers."""
    catch: dict[int, list[bool]] = defaultdict(list)
    seconds: dict[int, list[float]] = defaultdict(list)
    for a in assignments:
        if a.state == CrowdAssignmentState.REJECTED:
            continue
        if a.seconds is not None:
            seconds[a.worker_id].append(a.seconds)
        if a.hit.fc_trial.catch:
            catch[a.worker_id].append(a.answer == str(a.hit.fc_trial.strong_position))
    reasons: dict[int, str] = {}
    for worker, answers in catch.items():
        accuracy = sum(answers) / len(answers)
        if len(answers) >= rule.min_catch_trials and accuracy < rule.min_catch_accuracy:
            reasons[worker] = f"catch accuracy {sum(answers)}/{len(answers)} below {rule.min_catch_accuracy:.0%}"
    for worker, times in seconds.items():
        median = statistics.median(times)
        if worker not in reasons and median < rule.min_median_seconds:
            reasons[worker] = f"median response time {median:.2f} s below {rule.min_median_seconds:g} s"
        elif worker not in reasons and median > rule.max_median_seconds:
            reasons[worker] = f"median response time {median:.1f} s above {rule.max_median_seconds:g} s"
    return reasons


def _references(study) -> dict[tuple[int, str], ForcedChoiceReference]:
    return {(ref.unit_id, ref.condition): ref for ref in ForcedChoiceReference.objects.filter(study=study)}


def trial_rows(study, *, simulated: str = "exclude", rule: ExclusionRule = ExclusionRule()) -> list[dict[str, Any]]:
    """Every forced-choice answer of ``study`` as a dict of :data:`TRIAL_FIELDS`."""
    assignments = _answered(study, simulated)
    excluded = worker_exclusions(assignments, rule)
    references = _references(study)
    rows = []
    for a in assignments:
        hit, trial, worker = a.hit, a.hit.fc_trial, a.worker
        reference = references.get((hit.unit_id, a.condition))
        chosen = (
            (trial.strong_image if a.answer == str(trial.strong_position) else trial.weak_image) if a.answer else None
        )
        reason = excluded.get(worker.pk, "")
        if a.state == CrowdAssignmentState.REJECTED:
            reason = f"rejected: {a.reason}"
        rows.append(
            {
                "assignment": a.pk,
                "study": study.pk,
                "hit": hit.pk,
                "hit_token": hit.token,
                "hit_role": hit.role,
                "network": hit.unit.layer.network.name,
                "layer": hit.unit.layer.name,
                "unit": hit.unit.index,
                "worker": worker.pk,
                "worker_adapter": worker.adapter,
                "worker_external_id": worker.external_id,
                "worker_simulated": worker.simulated,
                "state": a.state,
                "condition": a.condition,
                "catch": trial.catch,
                "top_references": reference.top_images if reference else [],
                "top_reference_ranks": reference.top_ranks if reference else [],
                "bottom_references": reference.bottom_images if reference else [],
                "bottom_reference_ranks": reference.bottom_ranks if reference else [],
                "strong_image": trial.strong_image,
                "strong_rank": trial.strong_rank,
                "strong_score": trial.strong_score,
                "weak_image": trial.weak_image,
                "weak_rank": trial.weak_rank,
                "weak_score": trial.weak_score,
                "strong_position": trial.strong_position,
                "answer": a.answer,
                "chosen_image": chosen,
                "correct": a.answer == str(trial.strong_position),
                "confidence": a.confidence,
                "shown_at": iso(a.shown_at),
                "submitted_at": iso(a.submitted_at),
                "seconds": a.seconds,
                "client_ms": a.client_ms,
                "proxy_margin": trial.proxy_margin,
                "excluded": bool(reason),
                "exclusion_reason": reason,
            }
        )
    return rows


def _proportions(groups: dict[tuple, list[bool]]) -> dict[tuple, dict[str, Any]]:
    keys = list(groups)
    n = np.array([len(groups[key]) for key in keys])
    k = np.array([sum(groups[key]) for key in keys])
    low, high = clopper_pearson(k, n)
    return {
        key: {
            "n": int(n[i]),
            "correct": int(k[i]),
            "proportion": float(k[i] / n[i]) if n[i] else None,
            "ci_low": float(low[i]),
            "ci_high": float(high[i]),
            "p_chance": binomial_test_p(int(k[i]), int(n[i])),
        }
        for i, key in enumerate(keys)
    }


def proxy_scores(study) -> dict[int, float]:
    """The machine proxy's proportion correct per unit (by unit id) over the study's distinct task query pairs (a
    tie counts half): a score for every planned unit, without people."""
    pairs: dict[int, dict[tuple[int, int], float]] = defaultdict(dict)
    for unit_id, strong, weak, margin in ForcedChoiceTrial.objects.filter(
        hit__study=study, hit__role=HitRole.TASK, proxy_margin__isnull=False
    ).values_list("hit__unit_id", "strong_image", "weak_image", "proxy_margin"):
        pairs[unit_id][(strong, weak)] = 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
    return {unit: sum(values.values()) / len(values) for unit, values in pairs.items()}


def automatic_scores(study) -> dict[int, dict[str, Any]]:
    """Per unit id: ND'18 IoU and label (newest complete dissection of the layer), the best part AP of a part whose
    best single filter the unit is (newest part detection study), the best Net2Vec single-filter val IoU of a
    concept whose best unit it is (newest Net2Vec study), and the share of expert "yes" judgments on its tasks."""
    scores: dict[int, dict[str, Any]] = defaultdict(dict)
    for extraction in study.extractions.select_related("layer"):
        layer = extraction.layer
        units = {unit.index: unit.pk for unit in layer.unit_set.all()}
        dissection = dissection_for(extraction)
        if dissection is not None:
            for result in UnitDissection.objects.filter(dissection=dissection).select_related("concept"):
                scores[result.unit_id].update(iou=result.iou, label=result.concept.name if result.concept_id else "")
        part_study = layer.part_detection_studies.order_by("-id").first()
        if part_study is not None:
            for result in PartDetectionResult.objects.filter(study=part_study):
                unit = units.get(result.best_filter)
                if unit is not None:
                    scores[unit]["part_ap"] = max(scores[unit].get("part_ap", -1.0), result.best_ap)
        net2vec = layer.net2vec_studies.order_by("-id").first()
        if net2vec is not None:
            for result in Net2VecConcept.objects.filter(study=net2vec):
                unit = units.get(result.best_unit)
                if unit is not None:
                    scores[unit]["net2vec_iou"] = max(scores[unit].get("net2vec_iou", -1.0), result.single_val_iou)
        votes: dict[int, list[bool]] = defaultdict(list)
        for unit_id, answer in (
            Judgment.objects.current().human().filter(task__unit__layer=layer).values_list("task__unit_id", "answer")
        ):
            votes[unit_id].append(answer in YES_ANSWERS)
        for unit_id, answers in votes.items():
            scores[unit_id]["expert_systematicity"] = sum(answers) / len(answers)
    return scores


def forced_choice_report(
    study, *, simulated: str = "exclude", rule: ExclusionRule = ExclusionRule(), human_condition: str | None = None
) -> dict[str, Any]:
    """The whole analysis of a forced-choice ``study`` (see the module docstring). ``human_condition`` is the
    condition whose per-unit proportion correct is "the" human score set beside the automatic ones (default: the
    study's first condition, natural exemplars unless the study compares others)."""
    rows = trial_rows(study, simulated=simulated, rule=rule)
    counted = [row for row in rows if not row["excluded"] and row["hit_role"] == HitRole.TASK]
    conditions = list(study.conditions or [ForcedChoiceCondition.NATURAL])
    human_condition = human_condition or conditions[0]
    proxy = proxy_scores(study)
    units = {
        (hit_unit.layer.network.name, hit_unit.layer.name, hit_unit.index): hit_unit.pk
        for hit_unit in {
            hit.unit for hit in study.hits.select_related("unit__layer__network").filter(role=HitRole.TASK)
        }
    }
    by_unit: dict[tuple, list[bool]] = defaultdict(list)
    by_layer: dict[tuple, list[bool]] = defaultdict(list)
    for row in counted:
        by_unit[(row["network"], row["layer"], row["unit"], row["condition"])].append(row["correct"])
        by_layer[(row["network"], row["layer"], row["condition"])].append(row["correct"])
    unit_rows = [
        {
            "network": key[0],
            "layer": key[1],
            "unit": key[2],
            "condition": key[3],
            **value,
            "proxy": proxy.get(units.get(key[:3])),
        }
        for key, value in sorted(_proportions(by_unit).items(), key=lambda item: item[0])
    ]
    layer_rows = [
        {"network": key[0], "layer": key[1], "condition": key[2], **value}
        for key, value in sorted(_proportions(by_layer).items(), key=lambda item: item[0])
    ]
    per_condition: dict[str, dict[tuple, float]] = defaultdict(dict)
    for row in unit_rows:
        per_condition[row["condition"]][(row["network"], row["layer"], row["unit"])] = row["proportion"]
    keys = sorted(units)
    tests = []
    for other in conditions:
        if other == human_condition:
            continue
        a = [per_condition[human_condition].get(key, math.nan) for key in keys]
        b = [per_condition[other].get(key, math.nan) for key in keys]
        tests.append({"a": human_condition, "b": other, **asdict(paired_condition_test(a, b))})
    automatic = automatic_scores(study)
    simulation = (study.trial_params or {}).get("simulation") or {}
    planted = {int(k): v for k, v in simulation.get("readability", {}).items()}
    comparison = []
    for key in keys:
        unit_id = units[key]
        human = per_condition[human_condition].get(key)
        n = len(by_unit.get((*key, human_condition), []))
        extra = automatic.get(unit_id, {})
        comparison.append(
            {
                "network": key[0],
                "layer": key[1],
                "unit": key[2],
                "human": human,
                "human_n": n,
                "proxy": proxy.get(unit_id),
                "iou": extra.get("iou"),
                "label": extra.get("label", ""),
                "part_ap": extra.get("part_ap"),
                "net2vec_iou": extra.get("net2vec_iou"),
                "expert_systematicity": extra.get("expert_systematicity"),
                "planted_readability": planted.get(unit_id),
            }
        )

    def values(name):
        return [math.nan if row[name] is None else row[name] for row in comparison]

    correlations = []
    for name, label in AUTOMATIC_SCORES.items():
        rho, p, n = rank_correlation(values(name), values("human"))
        row = {"score": name, "label": label, "rho": rho, "p": p, "n": n}
        if name != "proxy":
            row["proxy_rho"], row["proxy_p"], row["proxy_n"] = rank_correlation(values(name), values("proxy"))
        correlations.append(row)
    planted_rho = rank_correlation(values("planted_readability"), values("human")) if planted else None
    return {
        "trials": rows,
        "counted": len(counted),
        "planted_rho": planted_rho,
        "units": unit_rows,
        "layers": layer_rows,
        "tests": tests,
        "comparison": comparison,
        "correlations": correlations,
        "human_condition": human_condition,
        "conditions": conditions,
        "chance": CHANCE,
        "rule": asdict(rule),
        "simulated": simulated,
        "excluded_workers": sorted(
            {(row["worker_external_id"], row["exclusion_reason"]) for row in rows if row["excluded"]}
        ),
        "proxy_units": len(proxy),
        "proxy_mean": (sum(proxy.values()) / len(proxy)) if proxy else None,
    }


FORCED_CHOICE_EXPORT_FILES: dict[str, tuple[str, str]] = {
    "trials.csv": ("text/csv; charset=utf-8", "Every forced-choice answer with full provenance (CSV)"),
    "trials.json": ("application/json", "Every forced-choice answer with full provenance (JSON)"),
    "units.csv": ("text/csv; charset=utf-8", "Proportion correct per unit and condition (CSV)"),
    "units.json": ("application/json", "Proportion correct per unit and condition (JSON)"),
    "comparison.csv": ("text/csv; charset=utf-8", "Human score beside the automatic scores per unit (CSV)"),
    "comparison.json": ("application/json", "Human score beside the automatic scores, correlations (JSON)"),
}


def forced_choice_export_file(study, name: str, *, simulated: str = "exclude") -> tuple[str, str, str]:
    """The export ``name`` (:data:`FORCED_CHOICE_EXPORT_FILES`) of forced-choice ``study`` as ``(text, content type,
    file name)`` (KeyError if unknown). Trials carry every worker with the exclusion reason (``simulated`` as
    chosen); unit results and the comparison count only the workers kept."""
    content_type, _ = FORCED_CHOICE_EXPORT_FILES[name]
    stem, suffix = name.rsplit(".", 1)
    report = forced_choice_report(study, simulated=simulated)
    rows, fields = {
        "trials": (report["trials"], TRIAL_FIELDS),
        "units": (report["units"], UNIT_FIELDS),
        "comparison": (report["comparison"], COMPARISON_FIELDS),
    }[stem]
    extra = (
        {"correlations": report["correlations"], "tests": report["tests"], "human_condition": report["human_condition"]}
        if stem != "trials"
        else {"rule": report["rule"]}
    )
    text = (
        rows_csv(rows, fields)
        if suffix == "csv"
        else json.dumps(
            {
                "crowd_study": study.name,
                "crowd_study_id": study.pk,
                "kind": study.kind,
                "simulated": simulated,
                "trial_params": study.trial_params,
                "fields": list(fields),
                **extra,
                stem: rows,
            },
            ensure_ascii=False,
            indent=1,
        )
    )
    qualifier = "" if simulated == "exclude" else f"-simulated-{simulated}"
    return text, content_type, f"forced-choice-{study.pk}-{stem}{qualifier}.{suffix}"
