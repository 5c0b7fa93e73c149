"""Reports of crowd studies, computed from live data (issue 8 items 5 and 6): reads only.

* :func:`crowd_aggregation` — per task HIT the majority vote and Dawid-Skene side by side, per worker the
  Dawid-Skene skill beside their gold accuracy (:func:`annotation.crowd.selectors.crowd_worker_rows`), Fleiss' κ
  and Krippendorff's α with bootstrap intervals (overall and, for validation, per label origin), and what the
  dynamic-overlap rules say about each HIT.
* :func:`nd18_table3` — ND'18 §3.1 Table 3 from a validation study: per layer, interpretable units by category,
  human consistency (% yes for human labels) and Network Dissection (% yes for dissection labels), per category.
  The counting itself is the pure :func:`table3_from_votes` (tests compare it with hand-computed values).
* :func:`purity_table` — the Explanatory Graph Fig. 8 purity table: mean purity per pattern source and layer.

Which answers count (the reading guide above the crowd models in ``annotation/models.py``): submitted or approved
assignments of task HITs (gold and
qualification HITs are quality control; rejected answers are out). ``simulated``: ``exclude`` leaves the
simulated crowd out, ``include`` adds it, ``only`` shows it alone (:data:`annotation.common.SIMULATED_CHOICES`).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from django.core.cache import cache

from analysis.engine import agreement as agreement_engine
from analysis.models import ExplanatoryGraph

from ..common import SIMULATED_CHOICES
from ..models import (
    EXPLANATORY_GRAPH,
    RAW_FILTER_PEAKS,
    SUBMITTED_STATES,
    CrowdAssignment,
    CrowdStudy,
    CrowdTaskKind,
    Hit,
    HitRole,
    LabelOrigin,
    OverlapRule,
    ValidationRound,
)
from . import aggregation
from .selectors import answer_key, canonical_description, crowd_worker_rows

YES, NO = "yes", "no"
VALIDATION_LABELS = (YES, NO)
ND18_CATEGORIES = ("color", "texture", "material", "part", "object", "scene")
"""Table 3's category rows, in the paper's order; other categories follow by name."""
NO_CATEGORY_LABEL = "no dissection label"
ORIGIN_SHORT = {
    LabelOrigin.DISSECTION: "dissection labels",
    LabelOrigin.HUMAN: "human labels",
    LabelOrigin.CONTROL: "control labels",
}
INTERPRETABLE_RULES = ("validated", "all")
DS_CACHE_SECONDS = 24 * 3600


# -- answers -------------------------------------------------------------------------------------------------------


def has_human_answers(study: CrowdStudy) -> bool:
    return CrowdAssignment.objects.answered().tasks().human().filter(hit__study=study).exists()


def simulated_default(study: CrowdStudy) -> str:
    """``exclude`` when people answered the study; ``only`` when only the simulated crowd did (the demo)."""
    if has_human_answers(study):
        return "exclude"
    has_simulated = CrowdAssignment.objects.answered().tasks().filter(hit__study=study, simulated=True).exists()
    return "only" if has_simulated else "exclude"


def _answered(study: CrowdStudy, *, simulated: str, roles: Sequence[str] = (HitRole.TASK,)):
    if simulated not in SIMULATED_CHOICES:
        raise ValueError(f"simulated must be one of {SIMULATED_CHOICES}")
    assignments = CrowdAssignment.objects.filter(
        hit__study=study, hit__role__in=list(roles), state__in=SUBMITTED_STATES
    )
    if simulated == "exclude":
        assignments = assignments.filter(worker__simulated=False)
    elif simulated == "only":
        assignments = assignments.filter(worker__simulated=True)
    return assignments


def study_answers(
    study: CrowdStudy, *, simulated: str = "exclude", roles: Sequence[str] = (HitRole.TASK,)
) -> pd.DataFrame:
    """The study's counted answers as an answers frame: ``task`` = HIT id, ``worker`` = worker id, ``label`` =
    :func:`annotation.crowd.selectors.answer_key` (yes/no, the normalised phrase, the count)."""
    rows = [
        (a.hit_id, a.worker_id, answer_key(a, study.kind))
        for a in _answered(study, simulated=simulated, roles=roles)
        .only("hit_id", "worker_id", "answer", "description", "count")
        .order_by("submitted_at", "id")
    ]
    return aggregation.answers_frame([row for row in rows if row[2] not in (None, "")])


def _dawid_skene_cached(answers: pd.DataFrame, gold: Mapping[int, str] | None) -> aggregation.DawidSkeneResult:
    """:func:`annotation.crowd.aggregation.dawid_skene`, cached under a digest of its exact input (crowd-kit's EM takes
    seconds on a few thousand answers; new answers change the digest, so the figures stay live)."""
    digest = hashlib.sha256()
    digest.update(pd.util.hash_pandas_object(answers.astype(str), index=False).values.tobytes())
    digest.update(repr(sorted((gold or {}).items())).encode())
    key = f"crowd-ds:{digest.hexdigest()}"
    result = cache.get(key)
    if result is None:
        result = aggregation.dawid_skene(answers, gold=gold)
        cache.set(key, result, DS_CACHE_SECONDS)
    return result


def _label_order(study: CrowdStudy) -> list | None:
    return list(VALIDATION_LABELS) if study.kind == CrowdTaskKind.VALIDATION else None


def _estimate_dict(estimate: agreement_engine.Estimate | None) -> dict | None:
    return estimate.as_dict() if estimate is not None else None


def _agreement_dict(summary: agreement_engine.AgreementSummary) -> dict[str, Any]:
    return {
        "fleiss_kappa": _estimate_dict(summary.fleiss_kappa),
        "krippendorff_alpha": _estimate_dict(summary.krippendorff_alpha),
        "krippendorff_alpha_level": summary.alpha_level,
        "percent_agreement": _estimate_dict(summary.percent_agreement),
        "n_items": summary.n_items,
        "n_raters": summary.n_raters,
        "n_answers": summary.n_answers,
        "fleiss_raters_per_item": summary.fleiss_raters_per_item,
    }


# -- aggregated results, worker skill, agreement --------------------------------------------------------------------


def crowd_aggregation(
    study: CrowdStudy,
    *,
    simulated: str = "exclude",
    use_gold: bool = True,
    replicates: int = agreement_engine.DEFAULT_REPLICATES,
    seed: int = 0,
    confidence: float = agreement_engine.DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Everything the study's report shows, from the counted answers.

    * ``hits``: one row per task HIT with answers — its layer, unit, label and origin (researchers only),
      answers, the majority vote (label, share, tie) and Dawid-Skene (label, posterior), whether they differ;
      descriptions add the canonical description (ND'18 §3.1's rule), purity HITs the mean count and purity
      (count / shown). Dawid-Skene runs on validation and description answers (nominal labels); purity
      counts get majority vote and the mean only.
    * ``workers``: :func:`annotation.crowd.selectors.crowd_worker_rows` (gold accuracy, times, signals) of the
      workers shown, plus ``skill`` (Dawid-Skene) and ``agrees_with_majority`` (share of their task answers equal
      to the HIT's majority label).
    * ``agreement``: Fleiss' κ and Krippendorff's α (nominal; interval for purity counts) with ``confidence``
    percentile bootstrap intervals
      (``replicates`` resamples of HITs, ``seed``); for validation also per label origin.
    * ``overlap``: per HIT the dynamic-overlap decision (:func:`annotation.crowd.aggregation.overlap_decision`
      with the study's rules, on all the HIT's counted answers, as
      :func:`annotation.crowd.selectors.hit_overlap_decision`) and counts per action, when the study's overlap
      rule is dynamic.

    ``use_gold`` (validation): gold HITs' answers join the Dawid-Skene fit with their known answers fixed, so
    workers' confusion matrices are calibrated on them; gold HITs are never reported as results.
    """
    answers = study_answers(study, simulated=simulated)
    order = _label_order(study)
    majority = aggregation.majority_vote(answers, labels=order)
    ds, gold_used = None, False
    if study.kind in (CrowdTaskKind.VALIDATION, CrowdTaskKind.DESCRIPTION) and not answers.empty:
        fit_answers, gold = answers, None
        if use_gold and study.kind == CrowdTaskKind.VALIDATION:
            gold_answers = study_answers(study, simulated=simulated, roles=(HitRole.GOLD,))
            gold = dict(
                study.hits.filter(role=HitRole.GOLD, pk__in=list(set(gold_answers["task"]))).values_list(
                    "pk", "gold_answer"
                )
            )
            if gold:
                fit_answers, gold_used = pd.concat([answers, gold_answers], ignore_index=True), True
        ds = _dawid_skene_cached(fit_answers, gold)
    common = dict(replicates=replicates, seed=seed, confidence=confidence)
    # purity counts are numbers: Krippendorff's α at the interval level (a near miss is near agreement)
    summary = aggregation.agreement(answers, labels=order, interval=study.kind == CrowdTaskKind.PURITY, **common)

    hits = {
        hit.pk: hit
        for hit in Hit.objects.filter(pk__in=list(majority.index)).select_related(
            "unit__layer__network", "label_concept", "grid"
        )
    }
    descriptions: dict[int, list[tuple[str, int]]] = defaultdict(list)
    counts: dict[int, list[int]] = defaultdict(list)
    if study.kind == CrowdTaskKind.DESCRIPTION:
        for hit_id, text, confidence_given in (
            _answered(study, simulated=simulated)
            .order_by("submitted_at", "id")
            .values_list("hit_id", "description", "confidence")
        ):
            descriptions[hit_id].append((text, confidence_given or 1))
    if study.kind == CrowdTaskKind.PURITY:
        for hit_id, count in _answered(study, simulated=simulated).values_list("hit_id", "count"):
            if count is not None:
                counts[hit_id].append(count)

    rules = aggregation.OverlapRules.from_study(study)
    dynamic = study.overlap_rule == OverlapRule.DYNAMIC
    label_counts: dict[int, Counter] = defaultdict(Counter)
    if dynamic:  # the live decision counts every answer that fills a place (simulated ones too)
        everyone = answers if simulated == "include" else study_answers(study, simulated="include")
        for task, label in zip(everyone["task"], everyone["label"]):
            label_counts[task][label] += 1

    rows = []
    for hit_id, vote in majority.iterrows():
        hit = hits[hit_id]
        row = {
            "hit": hit,
            "layer": hit.unit.layer.name if hit.unit_id else "",
            "unit": hit.unit.index if hit.unit_id else None,
            "label": hit.label,
            "origin": hit.get_label_origin_display() if hit.label_origin else "",
            "origin_key": hit.label_origin,
            "round": hit.validation_round,
            "category": hit.unit_category,
            "n": int(vote["n_answers"]),
            "majority": vote["label"],
            "majority_share": float(vote["share"]),
            "tied": bool(vote["tied"]),
            "layer_order": hit.unit.layer.order if hit.unit_id else 0,
        }
        if ds is not None and hit_id in ds.labels.index:
            row["ds"] = ds.labels[hit_id]
            row["ds_confidence"] = float(ds.confidence[hit_id])
            row["differs"] = row["ds"] != row["majority"]
        if descriptions.get(hit_id):
            chosen = canonical_description(descriptions[hit_id])
            row["canonical"] = chosen
        if counts.get(hit_id):
            row["mean_count"] = float(np.mean(counts[hit_id]))
            row["purity"] = row["mean_count"] / hit.purity_shown if hit.purity_shown else None
            row["shown"], row["k"] = hit.purity_shown, hit.purity_k
        if dynamic:
            row["overlap"] = aggregation.overlap_decision(hit_id, label_counts[hit_id], hit.max_assignments, rules)
        rows.append(row)
    nominal = study.kind != CrowdTaskKind.PURITY  # a purity count's "majority" is not a result worth sorting by
    rows.sort(
        key=lambda row: (
            not row.get("differs", False),
            not (nominal and row["tied"]),
            row["layer_order"],
            row["unit"] if row["unit"] is not None else -1,
            row["origin_key"],
        )
    )

    agreement_by_origin = []
    if study.kind == CrowdTaskKind.VALIDATION and not answers.empty:
        # Per origin over the blind comparison round (the selection round shows only canonical descriptions); a
        # HIT whose label was both a human description and the dissection label counts for both.
        origins_of = {
            pk: hit_origins(origin, source)
            for pk, origin, source in study.hits.filter(role=HitRole.TASK)
            .exclude(validation_round=ValidationRound.SELECTION)
            .values_list("pk", "label_origin", "source")
        }
        for origin in LabelOrigin:
            subset = answers[answers["task"].map(lambda task: origin.value in origins_of.get(task, ()))]
            if not subset.empty:
                agreement_by_origin.append(
                    {
                        "origin": ORIGIN_SHORT[origin],
                        "origin_key": origin.value,
                        **_agreement_dict(aggregation.agreement(subset, labels=order, **common)),
                    }
                )

    shown = {"exclude": {False}, "include": {False, True}, "only": {True}}[simulated]
    worker_rows = [row for row in crowd_worker_rows(study) if row["worker"].simulated in shown]
    joined = answers.join(majority["label"].rename("majority"), on="task")
    agree = (joined["label"] == joined["majority"]).groupby(joined["worker"]).mean() if not joined.empty else {}
    for row in worker_rows:
        pk = row["worker"].pk
        row["skill"] = float(ds.skills[pk]) if ds is not None and pk in ds.skills.index else None
        row["agrees_with_majority"] = float(agree[pk]) if pk in getattr(agree, "index", ()) else None
        row["task_answers"] = int((answers["worker"] == pk).sum())

    overlap_counts = Counter(row["overlap"].action.value for row in rows if "overlap" in row)
    return {
        "study": study,
        "simulated": simulated,
        "kind": study.kind,
        "n_answers": len(answers),
        "n_hits": len(rows),
        "n_workers": int(answers["worker"].nunique()) if not answers.empty else 0,
        "hits": rows,
        "differ": sum(row.get("differs", False) for row in rows),
        "ties": sum(row["tied"] for row in rows) if nominal else 0,
        "workers": worker_rows,
        "dawid_skene": (
            {
                "iterations": ds.iterations,
                "priors": {str(k): float(v) for k, v in ds.priors.items()},
                "gold_used": gold_used,
            }
            if ds is not None
            else None
        ),
        "agreement": _agreement_dict(summary),
        "agreement_by_origin": agreement_by_origin,
        "confidence": confidence,
        "replicates": replicates,
        "seed": seed,
        "overlap": {"dynamic": dynamic, "rules": rules, "counts": dict(overlap_counts)},
    }


# -- ND'18 Table 3 --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitVotes:
    """The votes one validation HIT got: its unit (within ``layer``), the unit's category (of its dissection
    label; "" without one), the label's origin, yes votes, all votes, and the ND'18 round the HIT belongs to
    (``selection`` or ``comparison``, :class:`annotation.models.ValidationRound`)."""

    layer: str
    unit: Any
    category: str
    origin: str
    yes: int
    n: int
    round: str = ValidationRound.COMPARISON.value


def _category_order(categories: Iterable[str]) -> list[str]:
    present = set(categories)
    ordered = [category for category in ND18_CATEGORIES if category in present]
    ordered += sorted(category for category in present if category not in ND18_CATEGORIES and category)
    if "" in present:
        ordered.append("")
    return ordered


def _mean_with_interval(values: Sequence[float], *, replicates: int, seed: int, confidence: float) -> dict[str, Any]:
    """The mean of per-unit shares with a percentile bootstrap interval over units (None when no unit)."""
    if not values:
        return {"value": None, "ci": None, "n_units": 0}
    array = np.asarray(values, dtype=np.float64)
    value = float(array.mean())
    ci = None
    if replicates and len(array) > 1:
        weights = agreement_engine.bootstrap_weights(len(array), replicates=replicates, seed=seed)
        means = weights @ array / len(array)
        tail = (1.0 - confidence) / 2.0 * 100.0
        low, high = np.percentile(means, [tail, 100.0 - tail])
        ci = [min(float(low), value), max(float(high), value)]
    return {"value": value, "ci": ci, "n_units": len(array)}


def table3_from_votes(
    votes: Iterable[UnitVotes],
    layers: Sequence[tuple[str, int]],
    *,
    interpretable: str = "validated",
    replicates: int = 1000,
    seed: int = 0,
    confidence: float = agreement_engine.DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """ND'18 Table 3 from validation votes (pure).

    ``layers``: ``(name, number of units)`` in the network's order. ``interpretable``:

    * ``validated`` (the paper: "units with validated descriptions are taken as interpretable units"): a unit
      whose canonical description got a strict majority of yes votes in the **selection round** (a tie is not a
      validation; the paper leaves the rule open: a strict majority is our reading). Without selection-round
      votes no unit is interpretable (``selection_votes`` is then 0, and the report says so);
    * ``all``: every unit with answered HITs (to read the % yes of all units).

    The percentages come from the **comparison round** only, so the votes that choose the units never measure
    them: under a crowd that says yes at random, human, dissection and control all come out near 50%
    (``tests/test_crowd_reports.py`` simulates it). A unit's yes share for an origin is its yes votes over its
    votes on that origin's comparison HIT(s); "human consistency" and "Network Dissection" are the means of
    these shares over the interpretable units with a human / dissection HIT (each unit counts once, whatever
    its number of raters — the paper's "average positive votes"), per layer and per category (the category of
    the unit's dissection label). Controls (a random other concept; not in the paper) get the same row as a
    floor. Intervals: percentile bootstrap over units (``replicates``, ``seed``).
    """
    if interpretable not in INTERPRETABLE_RULES:
        raise ValueError(f"interpretable must be one of {INTERPRETABLE_RULES}")
    selection_round, comparison_round = ValidationRound.SELECTION.value, ValidationRound.COMPARISON.value
    # per (layer, unit, origin): [yes, n] of comparison votes; per (layer, unit): [yes, n] of selection votes
    tallies: dict[tuple[str, Any, str], list[int]] = defaultdict(lambda: [0, 0])
    selection: dict[tuple[str, Any], list[int]] = defaultdict(lambda: [0, 0])
    category_of: dict[tuple[str, Any], str] = {}
    used = {selection_round: [0, 0], comparison_round: [0, 0]}  # [HITs, votes] per round
    for vote in votes:
        if vote.n <= 0:
            continue
        if vote.round not in used:
            raise ValueError(f"unknown validation round {vote.round!r}")
        used[vote.round][0] += 1
        used[vote.round][1] += vote.n
        tally = (
            selection[(vote.layer, vote.unit)]
            if vote.round == selection_round
            else tallies[(vote.layer, vote.unit, vote.origin)]
        )
        tally[0] += vote.yes
        tally[1] += vote.n
        category_of[(vote.layer, vote.unit)] = vote.category or category_of.get((vote.layer, vote.unit), "")
    shares = {key: yes / n for key, (yes, n) in tallies.items()}

    def is_interpretable(layer: str, unit: Any) -> bool:
        if interpretable == "all":
            return True
        votes_for = selection.get((layer, unit))
        return votes_for is not None and 2 * votes_for[0] > votes_for[1]

    result_layers = []
    all_categories: set[str] = set()
    for number, (layer, total) in enumerate(layers):
        units = sorted({unit for (name, unit) in category_of if name == layer}, key=lambda u: (str(type(u)), u))
        chosen = [unit for unit in units if is_interpretable(layer, unit)]
        by_category = Counter(category_of[(layer, unit)] for unit in chosen)
        all_categories |= set(by_category)

        def mean(origin: str, members: Sequence[Any], salt: int) -> dict[str, Any]:
            values = [shares[(layer, unit, origin)] for unit in members if (layer, unit, origin) in shares]
            return _mean_with_interval(
                values, replicates=replicates, seed=seed * 7919 + number * 101 + salt, confidence=confidence
            )

        entry = {
            "layer": layer,
            "units": total,
            "units_judged": len(units),
            "interpretable": len(chosen),
            "by_category": dict(by_category),
        }
        for salt, (name, origin) in enumerate(
            (("human", LabelOrigin.HUMAN), ("dissection", LabelOrigin.DISSECTION), ("control", LabelOrigin.CONTROL))
        ):
            entry[name] = mean(origin.value, chosen, salt)
            entry[f"{name}_by_category"] = {
                category: mean(origin.value, [u for u in chosen if category_of[(layer, u)] == category], 10 + salt)
                for category in by_category
            }
        result_layers.append(entry)
    categories = _category_order(all_categories)
    return {
        "layers": result_layers,
        "categories": categories,
        "interpretable_rule": interpretable,
        "confidence": confidence,
        "replicates": replicates,
        "selection_hits": used[selection_round][0],
        "selection_votes": used[selection_round][1],
        "comparison_hits": used[comparison_round][0],
        "comparison_votes": used[comparison_round][1],
    }


def _percent(share: dict[str, Any] | None) -> str:
    return "n/a" if share is None or share["value"] is None else f"{round(100 * share['value'])}%"


def table3_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Table 3's layout as rows of cells (one per layer), the paper's row order: interpretable units, units per
    category, human consistency and per category, Network Dissection and per category, then controls."""
    layers, categories = table["layers"], table["categories"]

    def category_label(category: str) -> str:
        return category or NO_CATEGORY_LABEL

    rows = [
        {
            "label": "Interpretable units",
            "kind": "count",
            "cells": [{"text": f"{entry['interpretable']}/{entry['units']}"} for entry in layers],
        }
    ]
    for category in categories:
        rows.append(
            {
                "label": f"{category_label(category)} units",
                "kind": "category",
                "category": category,
                "cells": [{"text": str(entry["by_category"].get(category, 0))} for entry in layers],
            }
        )
    for name, label in (
        ("human", "Human consistency"),
        ("dissection", "Network Dissection"),
        ("control", "Control labels (not in ND'18)"),
    ):
        rows.append(
            {
                "label": label,
                "kind": "share",
                "cells": [{"text": _percent(entry[name]), "share": entry[name]} for entry in layers],
            }
        )
        if name == "control":
            break
        for category in categories:
            rows.append(
                {
                    "label": f"on {category_label(category)} units",
                    "kind": "share-category",
                    "category": category,
                    "cells": [
                        {
                            "text": _percent(entry[f"{name}_by_category"].get(category)),
                            "share": entry[f"{name}_by_category"].get(category),
                        }
                        for entry in layers
                    ],
                }
            )
    return rows


def study_validation_votes(study: CrowdStudy, *, simulated: str = "exclude") -> list[UnitVotes]:
    """Per answered validation task HIT: its layer, unit, unit category, origin, yes votes and votes."""
    tallies: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for hit_id, answer in _answered(study, simulated=simulated).values_list("hit_id", "answer"):
        tallies[hit_id][0] += answer == YES
        tallies[hit_id][1] += 1
    votes = []
    for hit in (
        Hit.objects.filter(pk__in=list(tallies))
        .select_related("unit__layer")
        .only("pk", "unit_category", "label_origin", "source", "validation_round", "unit__index", "unit__layer__name")
    ):
        yes, n = tallies[hit.pk]
        for origin in hit_origins(hit.label_origin, hit.source):  # one HIT may stand for two origins' same label
            votes.append(
                UnitVotes(
                    layer=hit.unit.layer.name,
                    unit=hit.unit.index,
                    category=hit.unit_category,
                    origin=origin,
                    yes=yes,
                    n=n,
                    round=hit.validation_round or ValidationRound.COMPARISON.value,
                )
            )
    return votes


def hit_origins(label_origin: str, source: dict | None) -> list[str]:
    """The label origins a validation HIT answers for: its own, and ``source["also_origins"]`` when a human
    description and the dissection label were the same text (one HIT for both)."""
    return [label_origin, *((source or {}).get("also_origins") or [])]


def nd18_table3(
    study: CrowdStudy,
    *,
    simulated: str = "exclude",
    interpretable: str = "validated",
    replicates: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """ND'18 Table 3 from a validation study's live answers: :func:`table3_from_votes` over the study's layers
    (network order; each layer's unit count is the denominator of "interpretable units", as in the paper), plus
    the rows in the paper's layout (:func:`table3_rows`)."""
    layers = sorted(
        {e.layer for e in study.extractions.select_related("layer__network")},
        key=lambda layer: (layer.network.name, layer.order),
    )
    table = table3_from_votes(
        study_validation_votes(study, simulated=simulated),
        [(layer.name, layer.units) for layer in layers],
        interpretable=interpretable,
        replicates=replicates,
        seed=seed,
    )
    table["rows"] = table3_rows(table)
    table["network"] = ", ".join(sorted({layer.network.name for layer in layers}))
    return table


# -- Explanatory Graph Fig. 8: purity per pattern source -------------------------------------------------------------

PURITY_SOURCES = {
    RAW_FILTER_PEAKS: "Raw filter peaks",
    "raw_filter_maps": "Raw filter maps",
    EXPLANATORY_GRAPH: "Explanatory graph nodes",
}
"""Pattern sources of purity HITs, in the table's row order (EG Fig. 8: raw filter maps and peaks (Zhou et al.
2015 style) vs the explanatory graph's nodes). A purity HIT names its source in ``Hit.source["pattern_source"]``
and its pattern in ``Hit.source["pattern"]`` (as :mod:`annotation.crowd.hits` writes them: raw filter peaks
for a unit's top-K images, explanatory-graph nodes beside raw filter peaks drawn the same way); a HIT without
them counts as raw filter peaks of its unit. Another source plugs in by creating purity HITs with those two keys
(and a label here); sources not listed show under their key. EG compares the top-D nodes with the D filters of a
layer: a source should create HITs for its top-D patterns only."""
DEFAULT_PURITY_SOURCE = RAW_FILTER_PEAKS


def purity_source(hit: Hit) -> tuple[str, Any]:
    """``(source key, pattern key)`` of a purity HIT."""
    source = hit.source or {}
    return source.get("pattern_source", DEFAULT_PURITY_SOURCE), source.get("pattern", hit.unit_id)


def purity_studies(study: CrowdStudy) -> list[CrowdStudy]:
    """The purity studies compared with ``study``: itself and every purity study sharing one of its layers."""
    layers = list(study.extractions.values_list("layer_id", flat=True))
    others = (
        CrowdStudy.objects.filter(kind=CrowdTaskKind.PURITY, extractions__layer_id__in=layers)
        .distinct()
        .order_by("created_at", "id")
    )
    return list(dict.fromkeys([study, *others])) if study.kind == CrowdTaskKind.PURITY else list(others)


def purity_table(study: CrowdStudy, *, simulated: str = "exclude") -> dict[str, Any]:
    """EG Fig. 8 (purity of part semantics): for each (study, pattern source) and layer, the mean over patterns of
    each pattern's purity — its raters' mean of "how many of the top-K show the same part" over the images shown
    (:func:`annotation.crowd.aggregation.mean_purity`). K is the 30%-mass K (``Hit.purity_k``); when a HIT shows fewer
    (``purity_max_shown``), purity is over the images shown. Every purity study sharing a layer with ``study``
    (:func:`purity_studies`) adds its rows: sources are compared within a study, where their HITs were drawn
    alike and answered by the same crowd, and the rows of other studies sit beside them. A study over an explanatory
    graph names it in ``inputs`` (its category and inputs: the graph's nodes and the raw filters beside them were
    drawn on that category's crops or images); otherwise ``inputs`` is None (raw filters on whole images)."""
    studies = purity_studies(study)
    triples: dict[tuple[int, str, str], list[tuple[Any, int, int]]] = defaultdict(list)
    k_values: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    layer_order: dict[str, tuple] = {}
    order = {key: position for position, key in enumerate(PURITY_SOURCES)}
    rows = []
    for other in studies:
        hits = {
            hit.pk: hit
            for hit in Hit.objects.filter(study=other, role=HitRole.TASK, kind=CrowdTaskKind.PURITY).select_related(
                "unit__layer__network"
            )
        }
        sources: set[str] = set()
        graph_ids = {(hit.source or {}).get("graph") for hit in hits.values()} - {None}
        graphs = ExplanatoryGraph.objects.filter(pk__in=graph_ids).order_by("category")
        shown_on = "; ".join(f"graph of {graph.scope} (run {graph.run_id})" for graph in graphs) or None
        for hit_id, count in _answered(other, simulated=simulated).values_list("hit_id", "count"):
            hit = hits.get(hit_id)
            if hit is None or count is None or not hit.purity_shown:
                continue
            source, pattern = purity_source(hit)
            layer = hit.unit.layer if hit.unit_id else None
            name = layer.name if layer else "—"
            layer_order[name] = (layer.network.name, layer.order) if layer else ("", 0)
            triples[(other.pk, source, name)].append((pattern, count, hit.purity_shown))
            k_values[(other.pk, source, name)].append(hit.purity_k or hit.purity_shown)
            sources.add(source)
        for source in sorted(sources, key=lambda key: (order.get(key, len(order)), key)):
            rows.append(
                {"study": other, "source": source, "label": PURITY_SOURCES.get(source, source), "inputs": shown_on}
            )
    layers = sorted(layer_order, key=layer_order.__getitem__)
    for row in rows:
        key = (row["study"].pk, row["source"])
        row["cells"] = []
        for layer in layers:
            value, patterns = aggregation.mean_purity(triples.get((*key, layer), []))
            ks = k_values.get((*key, layer), [])
            row["cells"].append(
                {
                    "layer": layer,
                    "purity": value,
                    "patterns": patterns,
                    "answers": len(triples.get((*key, layer), [])),
                    "median_k": float(np.median(ks)) if ks else None,
                }
            )
    return {"layers": layers, "rows": rows, "studies": studies}
