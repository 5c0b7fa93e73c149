"""Long jobs: a running run's progress bar says about how long is left; its parameters read as a table."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from analysis.models import Run, RunStatus
from analysis.templatetags.unitscope import param_rows, time_left

pytestmark = pytest.mark.django_db


def running(done: int, total: int, elapsed: float, **fields) -> Run:
    return Run.objects.create(
        kind="extract",
        params_hash=f"p{done}-{total}-{elapsed}",
        status=RunStatus.RUNNING,
        progress_done=done,
        progress_total=total,
        started_at=timezone.now() - timedelta(seconds=elapsed),
        **fields,
    )


def test_time_left_from_the_pace_so_far():
    now = timezone.now()
    run = running(25, 100, 60)
    assert time_left(run, run.started_at + timedelta(seconds=60)) == "about 3 min left"  # 60 s × 75 / 25
    assert time_left(run, run.started_at + timedelta(seconds=10)) == "about 30 s left"
    slow = running(1, 1000, 30)
    assert time_left(slow, slow.started_at + timedelta(seconds=30)) == "about 8 h 20 min left"  # 30 s × 999
    for quiet in (running(0, 100, 60), running(100, 100, 60), running(5, 100, 1)):
        assert time_left(quiet, now) == ""
    finished = running(25, 100, 60)
    finished.status = RunStatus.SUCCEEDED
    assert time_left(finished, now) == ""


def test_run_page_shows_time_left_and_a_parameter_table(researcher_client):
    run = running(
        25,
        100,
        60,
        params={
            "network": "demo-net",
            "layers": ["conv4", "conv5"],
            "quantile": 0.995,
            "training": {"epochs": 8, "learning_rate": 0.01},
            "steps": [{"name": "crop", "size": 224}],
        },
    )
    page = researcher_client.get(reverse("analysis:run_detail", args=[run.pk])).content.decode()
    assert "25% · about 3 min left" in page
    status = researcher_client.get(reverse("analysis:run_status", args=[run.pk])).content.decode()
    assert "about 3 min left" in status
    assert '<tr><th scope="row">Training · Epochs</th><td>8</td></tr>' in page
    assert '<tr><th scope="row">Training · Learning rate</th><td>0.0100</td></tr>' in page
    assert '<tr><th scope="row">Steps 1 · Size</th><td>224</td></tr>' in page
    assert '<tr><th scope="row">Layers</th><td>conv4, conv5</td></tr>' in page
    assert "{&#x27;" not in page and "{'epochs'" not in page  # no raw dicts


def test_param_rows_by_hand():
    assert param_rows({"a_b": {"c": True, "d": None}, "e": []}) == [("A b · C", "yes"), ("A b · D", "—"), ("E", "—")]
