"""Plots for pages and reports: matplotlib figures rendered to inline SVG (no files, no JavaScript).

Every string is drawn as plain text (:func:`plain_text`): labels come from people (worker ids, concept names,
descriptions), and matplotlib would otherwise read ``$…$`` as mathtext — ``$x^{$`` as a worker id made a report
fail on every load.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import wraps

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from django.utils.safestring import SafeString, mark_safe

ACCENT, SECOND, MUTED = "#2450a6", "#c2410c", "#5d6778"


PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def plain_text(chart: Callable[..., SafeString]) -> Callable[..., SafeString]:
    """Run ``chart`` (figure built and saved) with mathtext and TeX off: every label is literal text."""

    @wraps(chart)
    def wrapped(*args, **kwargs) -> SafeString:
        with matplotlib.rc_context(PLAIN_TEXT):
            return chart(*args, **kwargs)

    return wrapped


def _svg(figure) -> SafeString:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    # Inline SVG: drop the XML prolog and let CSS size it.
    text = text[text.index("<svg") :]
    return mark_safe(text.replace("<svg ", '<svg class="chart" role="img" ', 1))


@plain_text
def line_chart(
    x: Sequence[float],
    series: dict[str, Sequence[float | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
    size=(5.2, 2.8),
) -> SafeString:
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


@plain_text
def stacked_bar_chart(
    labels: Sequence[str],
    segments: dict[str, Sequence[float]],
    *,
    xlabel: str,
    colours: Sequence[str] | None = None,
    title: str = "",
    percent: bool = True,
    width: float = 6.4,
) -> SafeString:
    """Horizontal bars, one per label, each split into the named segments (shares summing to 1), like
    GG'18 Fig. 9's filter-type distributions. Segments of 8% or more carry their value."""
    colours = list(colours or (ACCENT, "#1f7a4d", SECOND, MUTED, "#7aa2ec"))
    height = 0.9 + 0.36 * len(labels)
    figure, axes = plt.subplots(figsize=(width, height), dpi=100)
    positions = list(range(len(labels)))[::-1]
    left = [0.0] * len(labels)
    for colour, (name, values) in zip(colours, segments.items()):
        axes.barh(positions, values, left=left, color=colour, label=name, height=0.7, edgecolor="white", linewidth=0.6)
        for position, start, value in zip(positions, left, values):
            if value >= 0.08:
                text = f"{value * 100:.0f}%" if percent else f"{value:.2f}"
                dark = colour.lower() in {"#c9d0db", "#e6e9ef", "#7aa2ec"}
                axes.text(
                    start + value / 2,
                    position,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="#1c2330" if dark else "white",
                )
        left = [start + value for start, value in zip(left, values)]
    axes.set_yticks(positions, labels=list(labels), fontsize=8.5)
    axes.set_xlim(0, max(1.0, max(left, default=1.0)))
    if percent:
        from matplotlib.ticker import PercentFormatter

        axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xlabel(xlabel)
    if title:
        axes.set_title(title, fontsize=10)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(
        frameon=False,
        fontsize=8,
        ncol=min(len(segments), 4),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22 - 0.6 / height),
    )
    figure.tight_layout()
    return _svg(figure)


@plain_text
def interval_chart(
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    *,
    xlabel: str,
    xlim: tuple[float, float] | None = None,
    width: float = 5.6,
    reference: float = 0.0,
) -> SafeString:
    """One row per label: the point estimate with its interval as a horizontal whisker (None: no whisker); a thin
    vertical line marks ``reference`` (0, or chance)."""
    figure, axes = plt.subplots(figsize=(width, 0.7 + 0.42 * len(labels)), dpi=100)
    positions = list(range(len(labels)))[::-1]
    for position, value, low, high in zip(positions, values, lows, highs):
        if low is not None and high is not None:
            axes.plot([low, high], [position, position], color=ACCENT, linewidth=2, solid_capstyle="butt")
            axes.plot([low, low], [position - 0.15, position + 0.15], color=ACCENT, linewidth=1.4)
            axes.plot([high, high], [position - 0.15, position + 0.15], color=ACCENT, linewidth=1.4)
        axes.plot([value], [position], marker="o", color=SECOND, markersize=6, zorder=3)
    axes.axvline(reference, color=MUTED, linewidth=0.8, alpha=0.6)
    axes.set_yticks(positions, labels=list(labels), fontsize=8.5)
    axes.set_ylim(-0.6, len(labels) - 0.4)
    if xlim:
        axes.set_xlim(*xlim)
    axes.set_xlabel(xlabel)
    axes.grid(axis="x", alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return _svg(figure)


# -- Network Dissection -----------------------------------------------------------------------------

#: ND'18's figures colour concepts by category; the same hue for a category on every page.
CATEGORY_COLOURS = {
    "object": "#2450a6",
    "part": "#c2410c",
    "scene": "#1f7a4d",
    "material": "#8a5a00",
    "texture": "#7b3fa0",
    "color": "#b42318",
    "colour": "#b42318",
}
_EXTRA_COLOURS = ("#0e7490", "#5d6778", "#a21caf", "#4d7c0f")


def category_colour(category: str, position: int = 0) -> str:
    """The colour of a concept category (a fixed one for Broden's six, a stable fallback otherwise)."""
    return CATEGORY_COLOURS.get(category, _EXTRA_COLOURS[position % len(_EXTRA_COLOURS)])


@plain_text
def category_bars(
    categories: Sequence[str], series: dict[str, Sequence[int]], *, ylabel: str, size=(5.6, 2.8)
) -> SafeString:
    """Grouped bars: one group per category, one bar per named series (e.g. detectors, unique concepts)."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    width = 0.8 / max(1, len(series))
    styles = ({"alpha": 1.0, "hatch": ""}, {"alpha": 0.55, "hatch": ""}, {"alpha": 0.35, "hatch": "//"})
    for number, (name, values) in enumerate(series.items()):
        style = styles[number % len(styles)]
        positions = [index + (number - (len(series) - 1) / 2) * width for index in range(len(categories))]
        bars = axes.bar(
            positions,
            values,
            width=width * 0.95,
            label=name,
            alpha=style["alpha"],
            hatch=style["hatch"],
            color=[category_colour(category, index) for index, category in enumerate(categories)],
            edgecolor="white",
            linewidth=0.5,
        )
        axes.bar_label(bars, labels=[str(value) if value else "" for value in values], fontsize=7, padding=1)
    axes.set_xticks(range(len(categories)), list(categories))
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, max(1, max((max(values, default=0) for values in series.values()), default=0)) * 1.15)
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.grid(axis="y", alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    if len(series) > 1:  # bars take their category's colour: the legend shows each series' style in grey
        from matplotlib.patches import Patch

        handles = [
            Patch(
                facecolor=MUTED,
                alpha=styles[number % len(styles)]["alpha"],
                hatch=styles[number % len(styles)]["hatch"],
                label=name,
            )
            for number, name in enumerate(series)
        ]
        axes.legend(handles=handles, frameon=False, fontsize=8)
    figure.tight_layout()
    return _svg(figure)


@plain_text
def stacked_category_bars(
    groups: Sequence[str], categories: Sequence[str], values: Sequence[Sequence[int]], *, ylabel: str, size=(5.6, 3.0)
) -> SafeString:
    """ND'18 Fig. 9 style: one bar per group (layer), stacked by category; ``values[group][category]``."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    bottoms = [0] * len(groups)
    for position, category in enumerate(categories):
        heights = [row[position] for row in values]
        axes.bar(
            range(len(groups)),
            heights,
            bottom=bottoms,
            color=category_colour(category, position),
            width=0.6,
            label=category,
            edgecolor="white",
            linewidth=0.5,
        )
        bottoms = [bottom + height for bottom, height in zip(bottoms, heights)]
    for index, total in enumerate(bottoms):
        axes.annotate(
            str(total), (index, total), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points"
        )
    axes.set_xticks(range(len(groups)), list(groups))
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, max(1, max(bottoms, default=0)) * 1.12)
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.grid(axis="y", alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, fontsize=8, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    figure.tight_layout()
    return _svg(figure)


@plain_text
def rotation_chart(
    alphas: Sequence[float],
    per_seed: dict[str, Sequence[float]],
    mean: Sequence[float],
    *,
    ylabel: str,
    baseline: float | None = None,
    size=(5.6, 3.0),
) -> SafeString:
    """ND'18 Fig. 6 style: a count against the rotation fraction α, one thin line per seed, the mean in bold,
    and (optionally) a dashed reference level such as the shuffled-mask baseline."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    for _name, values in per_seed.items():
        axes.plot(alphas, values, color=MUTED, alpha=0.45, linewidth=1, marker="o", markersize=2)
    axes.plot(
        alphas,
        mean,
        color=ACCENT,
        linewidth=2.2,
        marker="o",
        markersize=4,
        label="mean over seeds" if len(per_seed) > 1 else "unique detectors",
    )
    if baseline is not None:
        axes.axhline(baseline, color=SECOND, linestyle="--", linewidth=1.2, label="shuffled-mask baseline")
    axes.set_xlabel("α (fraction of the random rotation Q)")
    axes.set_ylabel(ylabel)
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    return _svg(figure)


# -- Net2Vec -----------------------------------------------------------------------------------------


@plain_text
def comparison_scatter(
    single: Sequence[float],
    combined: Sequence[float],
    categories: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    labels: Sequence[str] | None = None,
    limit: tuple[float, float] = (0, 1),
    size=(4.4, 4.0),
) -> SafeString:
    """Net2Vec Fig. 2 style per concept: one point per concept at (single filter, combination), coloured by
    category, with the diagonal y = x (points on or above it: the combination is at least as good). With
    ``labels``, the points furthest from the diagonal (up to 6) are named."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    low, high = limit
    axes.plot([low, high], [low, high], color=MUTED, linestyle="--", linewidth=1, label="y = x")
    order = list(dict.fromkeys(categories))
    for position, category in enumerate(order):
        points = [(x, y) for x, y, c in zip(single, combined, categories) if c == category]
        axes.scatter(
            *zip(*points),
            s=22,
            color=category_colour(category, position),
            alpha=0.85,
            label=category,
            edgecolors="white",
            linewidths=0.4,
            zorder=3,
        )
    if labels:
        spread = sorted(range(len(single)), key=lambda i: -abs(combined[i] - single[i]))[:6]
        for i in spread:
            axes.annotate(
                labels[i],
                (single[i], combined[i]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
                color="#1c2330",
            )
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, fontsize=7.5, loc="lower right")
    figure.tight_layout()
    return _svg(figure)


# -- Part detection and discriminativeness (GG'18) --------------------------------------------------


@plain_text
def pr_chart(curves: dict[str, tuple[Sequence[float], Sequence[float]]], *, size=(5.2, 3.2)) -> SafeString:
    """GG'18 Fig. 6 style: precision against recall, one step line per named curve (the last drawn bold)."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    colours = (MUTED, "#7aa2ec", "#1f7a4d", SECOND, ACCENT)
    names = list(curves)
    for number, name in enumerate(names):
        recall, precision = curves[name]
        bold = number == len(names) - 1
        axes.step(
            recall,
            precision,
            where="post",
            label=name,
            linewidth=2.2 if bold else 1.3,
            color=colours[(number - len(names)) % len(colours)] if not bold else ACCENT,
        )
    axes.set_xlabel("Recall")
    axes.set_ylabel("Precision")
    axes.set_xlim(0, 1.0)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    return _svg(figure)


@plain_text
def delta_bars(
    deltas: Sequence[float], threshold: float, *, highlight: Sequence[int] = (), ylabel: str, size=(7.2, 2.8)
) -> SafeString:
    """GG'18 Fig. 10a style: one bar per filter (its δ), the discriminative ones highlighted, and the dashed
    ``kσ`` line that separates them."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    chosen = set(highlight)
    colours = [SECOND if index in chosen else "#9aa3b2" for index in range(len(deltas))]
    axes.bar(range(len(deltas)), deltas, width=0.85, color=colours, linewidth=0)
    axes.axhline(
        threshold, color=ACCENT, linestyle="--", linewidth=1.2, label=f"2σ = {threshold:.3g}" if threshold else "2σ"
    )
    axes.axhline(0, color=MUTED, linewidth=0.6)
    axes.set_xlabel("filter")
    axes.set_ylabel(ylabel)
    axes.set_xlim(-1, len(deltas))
    axes.grid(axis="y", alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    return _svg(figure)


@plain_text
def scatter_chart(
    x: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    size=(4.4, 3.3),
) -> SafeString:
    """GG'18 Fig. 3 / Fig. 15 style: one labelled point per item and the least-squares line."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    axes.scatter(x, y, s=18, color=ACCENT, zorder=3)
    for a, b, label in zip(x, y, labels):
        axes.annotate(label, (a, b), fontsize=6.5, xytext=(3, 2), textcoords="offset points", color=MUTED)
    if len(x) >= 2 and max(x) > min(x):
        import numpy as np

        slope, intercept = np.polyfit(list(x), list(y), 1)
        xs = np.array([min(x), max(x)])
        axes.plot(xs, slope * xs + intercept, color=SECOND, linewidth=1.2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title, fontsize=9.5)
    axes.grid(alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    return _svg(figure)


@plain_text
def horizontal_bars(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    xlabel: str,
    reference: float | None = None,
    width: float = 6.4,
    unit_interval: bool = True,
) -> SafeString:
    """Grouped horizontal bars, one group per label (e.g. best single filter vs GA AP per part), with an optional
    dashed reference line (e.g. the 30% AP emergence criterion); ``unit_interval`` fixes the axis to [0, 1]
    (otherwise it fits the values, negative ones included)."""
    figure, axes = plt.subplots(figsize=(width, 0.8 + 0.3 * len(labels) * max(1, len(series)) ** 0.5), dpi=100)
    height = 0.8 / max(1, len(series))
    positions = list(range(len(labels)))[::-1]
    for number, (colour, (name, values)) in enumerate(zip((MUTED, ACCENT, SECOND, "#1f7a4d"), series.items())):
        offsets = [p + (len(series) - 1) / 2 * height - number * height for p in positions]
        axes.barh(offsets, values, height=height * 0.95, color=colour, label=name)
    if reference is not None:
        axes.axvline(reference, color=SECOND, linestyle="--", linewidth=1.1)
    axes.set_yticks(positions, labels=list(labels), fontsize=8)
    axes.set_xlabel(xlabel)
    if unit_interval:
        axes.set_xlim(0, max(1.0, max((max(v, default=0) for v in series.values()), default=0)))
    else:
        axes.axvline(0, color=MUTED, linewidth=0.8)
    axes.grid(axis="x", alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, fontsize=8, loc="lower right")
    figure.tight_layout()
    return _svg(figure)


@plain_text
def category_lines(
    x: Sequence[float], series: dict[str, Sequence[float | None]], *, xlabel: str, ylabel: str, size=(5.2, 2.8)
) -> SafeString:
    """Net2Vec Fig. 3 style: one line per concept category (in its category colour) against ``x`` (None values are
    skipped), any number of categories."""
    figure, axes = plt.subplots(figsize=size, dpi=100)
    for position, (category, values) in enumerate(series.items()):
        points = [(a, b) for a, b in zip(x, values) if b is not None]
        if points:
            axes.plot(
                *zip(*points),
                marker="o",
                markersize=3,
                linewidth=1.6,
                label=category,
                color=category_colour(category, position),
            )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.25)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    return _svg(figure)
