"""Network Dissection blocks on the unit browser's pages (``{% load dissection %}``).

The layer and unit pages are rendered by their own views; these tags read the newest dissection through the
selectors so those pages can show labels and IoU without knowing about dissection.
"""

from __future__ import annotations

from django import template

from analysis import selectors
from analysis.plots import category_colour

register = template.Library()


@register.simple_tag
def layer_dissection(layer, extraction=None):
    """``{"dissection", "baseline", "detectors", "unique"}`` for the layer's newest complete dissection on the
    extraction's dataset (any dataset when there is no extraction); the counts leave dead and saturated units
    out (see ``selectors.dissection_live_detectors``)."""
    dissection = selectors.latest_dissection(layer, dataset=extraction.dataset if extraction else None)
    if dissection is None:
        return {"dissection": None, "baseline": None}
    statuses = selectors.unit_statuses(extraction or dissection.extraction)
    dead = {index for index, status in statuses.items() if status != "live"}
    if dissection.unit_results.filter(is_detector=True, unit__index__in=dead).exists():
        counts = selectors.dissection_live_detectors(dissection, dead)
    else:
        counts = {"detectors": dissection.n_detectors, "unique": dissection.n_unique_detectors}
    return {
        "dissection": dissection,
        "baseline": selectors.latest_baseline_for(dissection),
        "detectors": counts["detectors"],
        "unique": counts["unique"],
        "dead": len(dead),
    }


@register.simple_tag
def unit_dissection(unit, extraction=None):
    """The unit's result in the newest complete dissection of its layer (None when there is none), with its
    top concepts' bar widths relative to the best one."""
    result = selectors.unit_dissection_result(unit, dataset=extraction.dataset if extraction else None)
    if result is not None:
        best = max((concept["iou"] for concept in result.top_concepts), default=0) or 1
        result.top_rows = [
            {**concept, "width": round(100 * concept["iou"] / best), "colour": category_colour(concept["category"])}
            for concept in result.top_concepts
        ]
    return result


@register.filter
def get_item(mapping, key):
    """``mapping[key]`` or None."""
    return mapping.get(key) if mapping else None


@register.filter
def concept_colour(category: str) -> str:
    """The colour of a concept category, as the plots draw it."""
    return category_colour(category or "")


@register.filter
def iou(value) -> str:
    """IoU with three decimals (``—`` when missing)."""
    return "—" if value is None else f"{float(value):.3f}"
