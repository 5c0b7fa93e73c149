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
