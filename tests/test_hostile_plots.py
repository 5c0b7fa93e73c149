"""Every plot draws people's strings as plain text (issue 20, item 1): worker ids, concept names and descriptions
such as ``$x^{$`` reach chart labels, and matplotlib read them as mathtext (a report failed on every load)."""

from __future__ import annotations

import inspect

import pytest

from analysis import plots
from tests.test_crowd_reports import layers, table3_study  # noqa: F401 (fixtures)

HOSTILE = ["$x^{$", "$$", r"$\frac{$ a_b^c \\ %s{}", '<script>alert(1)</script> _hidden =HYPERLINK("x")']


def _charts() -> dict[str, object]:
    return {
        name: chart
        for name, chart in vars(plots).items()
        if inspect.isfunction(chart)
        and chart.__module__ == plots.__name__
        and not name.startswith("_")
        and name not in ("plain_text", "category_colour")
    }


def _calls(text: str) -> dict[str, tuple[tuple, dict]]:
    """One call per chart with ``text`` in every string it takes (labels, series names, titles, axis names)."""
    names = [f"{text} {number}" for number in range(3)]
    return {
        "line_chart": (
            ([1, 2, 3], {name: [0.1, None, 0.3] for name in names}),
            {"xlabel": text, "ylabel": text, "title": text},
        ),
        "stacked_bar_chart": (
            (names, {text: [0.5, 0.2, 0.1], text + "!": [0.5, 0.8, 0.9]}),
            {"xlabel": text, "title": text},
        ),
        "interval_chart": ((names, [0.1, 0.2, 0.3], [0.0, None, 0.1], [0.2, None, 0.5]), {"xlabel": text}),
        "category_bars": ((names, {text: [1, 2, 3], text + "!": [3, 2, 1]}), {"ylabel": text}),
        "stacked_category_bars": ((names, [text, text + "!"], [[1, 2], [3, 4], [5, 6]]), {"ylabel": text}),
        "rotation_chart": (([0.0, 0.5, 1.0], {text: [3, 2, 1]}, [3, 2, 1]), {"ylabel": text, "baseline": 1.0}),
        "comparison_scatter": (
            ([0.1, 0.2, 0.3], [0.2, 0.3, 0.4], names),
            {"xlabel": text, "ylabel": text, "labels": names},
        ),
        "pr_chart": (({name: ([0.0, 0.5, 1.0], [1.0, 0.6, 0.3]) for name in names},), {}),
        "delta_bars": (([0.1, -0.2, 0.5], 0.3), {"highlight": [2], "ylabel": text}),
        "scatter_chart": (([0.1, 0.2, 0.4], [0.3, 0.1, 0.5], names), {"xlabel": text, "ylabel": text, "title": text}),
        "horizontal_bars": (
            (names, {text: [0.1, 0.5, 0.9], text + "!": [0.2, 0.3, 0.4]}),
            {"xlabel": text, "reference": 0.5},
        ),
        "category_lines": (([1, 2, 3], {name: [0.1, 0.2, None] for name in names}), {"xlabel": text, "ylabel": text}),
    }


def test_every_chart_is_covered_here():
    assert set(_charts()) == set(_calls("x")), "a new chart: add a hostile call for it here"
    assert set(_charts()) >= {"scatter_chart", "interval_chart", "horizontal_bars"}


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_through_every_chart(text):
    for name, (args, kwargs) in _calls(text).items():
        svg = str(getattr(plots, name)(*args, **kwargs))
        assert svg.startswith("<svg") and "<script>" not in svg, name


def test_labels_are_kept_as_written_not_as_mathtext():
    """The SVG keeps a label's characters (drawn as text objects): ``$`` signs stay, nothing is typeset."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = str(plots.scatter_chart([0.1, 0.2], [0.2, 0.1], ["$x^{2}$", "w_1"], xlabel="a", ylabel="b"))
    assert "$x^{2}$" in svg and "w_1" in svg


def test_crowd_report_pages_load_with_hostile_worker_ids(researcher_client, table3_study):
    """The finding itself: workers who entered as ``$x^{$`` (and other mathtext) answered tasks and gold; every
    report page of the study still loads."""
    from django.urls import reverse

    for worker, name in zip(table3_study.workers.order_by("pk"), HOSTILE):
        worker.external_id = name
        worker.save()
    for page in (
        "annotation:crowd_report",
        "annotation:crowd_report_table3",
        "annotation:crowd_workers",
        "annotation:crowd_review",
        "annotation:crowd_study_detail",
    ):
        response = researcher_client.get(reverse(page, args=[table3_study.pk]))
        assert response.status_code == 200, page
