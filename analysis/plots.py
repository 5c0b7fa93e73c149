"""Plots for pages and reports: matplotlib figures rendered to inline SVG (no files, no JavaScript)."""
from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from django.utils.safestring import SafeString, mark_safe  # noqa: E402

ACCENT, SECOND, MUTED = "#2450a6", "#c2410c", "#5d6778"


def _svg(figure) -> SafeString:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    # Inline SVG: drop the XML prolog and let CSS size it.
    text = text[text.index("<svg"):]
    return mark_safe(text.replace("<svg ", '<svg class="chart" role="img" ', 1))


def line_chart(x: Sequence[float], series: dict[str, Sequence[float | None]], *, xlabel: str, ylabel: str,
               title: str = "", ylim: tuple[float, float] | None = None, size=(5.2, 2.8)) -> SafeString:
    """A small line chart with one line per named series (None values are skipped)."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    for colour, (name, values) in zip((ACCENT, SECOND, MUTED, "#1f7a4d"), series.items()):
        points = [(a, b) for a, b in zip(x, values) if b is not None]
        if points:
            axes.plot(*zip(*points), marker="o", markersize=3, color=colour, label=name, linewidth=1.6)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if ylim:
        axes.set_ylim(*ylim)
    if title:
        axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    if len(series) > 1:
        axes.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    return _svg(figure)
