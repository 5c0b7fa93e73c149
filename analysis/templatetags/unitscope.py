"""Small presentation filters shared by every page."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def humanize_key(key: str) -> str:
    """``conv_images_per_second`` → ``Conv images per second``."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


@register.filter
def format_value(value):
    """Numbers with sensible precision; lists joined; everything else as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        if magnitude >= 1e-3:
            return f"{value:.4f}"
        return f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(format_value(item)) for item in value)
    return value


def _duration_text(seconds: float) -> str:
    """``42 s``, ``3 min``, ``1 h 20 min``: a duration rounded to what a person plans with."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@register.filter
def time_left(run, now=None) -> str:
    """A running run's estimated time left, as text (``about 3 min left``), from its progress so far: elapsed
    since ``started_at`` × (total − done) / done, assuming the rest goes at the pace so far. Empty when there
    is nothing to estimate from (not running, no progress yet, or under 2 s elapsed)."""
    from django.utils import timezone

    if getattr(run, "status", None) != "running" or run.started_at is None:
        return ""
    done, total = run.progress_done, run.progress_total
    elapsed = ((now or timezone.now()) - run.started_at).total_seconds()
    if done <= 0 or total <= done or elapsed < 2:
        return ""
    return f"about {_duration_text(elapsed * (total - done) / done)} left"


@register.filter
def param_rows(params) -> list[tuple[str, object]]:
    """A run's parameters as ``(label, value)`` rows for a table: nested dicts flattened into
    ``Parent · child`` labels, lists of dicts one row each, values formatted with :func:`format_value`."""
    rows: list[tuple[str, object]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix} · {humanize_key(key)}" if prefix else humanize_key(key), inner)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(item, dict) for item in value):
            for position, item in enumerate(value, start=1):
                walk(f"{prefix} {position}", item)
        else:
            rows.append((prefix, "—" if value in (None, "", {}, []) else format_value(value)))

    walk("", params or {})
    return rows
