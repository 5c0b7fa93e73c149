"""The demo build: every step succeeds, and a second build reuses every finished step."""

import pytest
from django.core.management import call_command

from analysis.models import ExemplarSet, Network, Run, RunStatus

pytestmark = pytest.mark.django_db


def test_build_demo_is_complete_and_idempotent(capsys):
    args = ["--images", "42", "--image-size", "56", "--epochs", "1"]
    call_command("build_demo", *args)
    output = capsys.readouterr().out
    assert "Log in as researcher / " in output
    assert "Log in as expert1 / " in output and "Log in as expert2 / " in output
    assert "Expert study " in output and ": http://127.0.0.1:8000/" in output  # every study's links, full URLs
    # descriptions, labels, purity, forced choice
    assert output.count("  worker link (mturk): http://127.0.0.1:8000/crowd/s/") == 4
    kinds = list(Run.objects.exclude(kind="dissect_shard").order_by("pk").values_list("kind", "status"))
    assert [kind for kind, _ in kinds] == [
        "probe_world",
        "train_demo_network",
        "extract",
        "render_grids",
        "render_grids",
        "render_grids",
        *["dissect"] * 6,
        "dissect_rotation",
        "explanatory_graph",
        *["net2vec"] * 3,
        *["score_parts"] * 2,
        *["ablate"] * 2,
    ]
    assert {status for _, status in kinds} == {RunStatus.SUCCEEDED}
    network = Network.objects.get()
    assert network.training_report["epochs"] and network.layers.filter(name="conv5", units=128).exists()
    assert not ExemplarSet.objects.filter(grid__isnull=True).exists()
    assert ExemplarSet.objects.filter(extraction__layer__name="conv3").exists()

    runs_after_first_build = Run.objects.count()
    call_command("build_demo", *args)
    again = capsys.readouterr().out
    assert again.count("(already done)") == len(kinds)
    assert Run.objects.count() == runs_after_first_build
    from annotation.models import Study

    study = Study.objects.get()
    assert study.tasks.count() > 0 and study.layer_id == network.layers.get(name="conv5").pk
    from annotation.models import CrowdAssignment, CrowdStudy, CrowdTaskKind

    purity = CrowdStudy.objects.get(kind=CrowdTaskKind.PURITY)  # over the demo's explanatory graph, open to people
    sources = {hit.source.get("pattern_source") for hit in purity.hits.filter(role="task")}
    assert sources == {"explanatory_graph", "raw_filter_peaks"} and purity.is_open
    assert CrowdAssignment.objects.filter(hit__study=purity, worker__simulated=True).exists()
