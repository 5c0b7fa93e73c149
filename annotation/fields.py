"""Form fields both wings' study forms use: choosing layer extractions, and unit lists like ``0-31, 40``."""

from __future__ import annotations

import re

from django import forms


class ExtractionChoiceField(forms.ModelChoiceField):
    """A layer extraction, shown as network / layer · units · dataset (run)."""

    def label_from_instance(self, extraction):
        return (
            f"{extraction.layer.network.name} / {extraction.layer.name} · {extraction.layer.units} units · "
            f"{extraction.dataset.name} (run {extraction.run_id})"
        )


class ExtractionMultipleChoiceField(forms.ModelMultipleChoiceField):
    """Several layer extractions, each shown as :class:`ExtractionChoiceField` shows one."""

    label_from_instance = ExtractionChoiceField.label_from_instance


def parse_units(text: str) -> list[int] | None:
    """``"0-31, 40, 42"`` → the unit indices; empty → None (every unit)."""
    text = (text or "").strip()
    if not text:
        return None
    units: set[int] = set()
    for part in re.split(r"[,\s]+", text):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise forms.ValidationError(f"{part!r} is not a unit index or a range like 0-31.")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first or last - first > 100_000:
            raise forms.ValidationError(f"{part!r} is not a valid range.")
        units.update(range(first, last + 1))
    return sorted(units)
