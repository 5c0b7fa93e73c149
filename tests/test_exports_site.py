"""Exports downloaded from the site (and the same files through the API): study judgments with provenance,
aggregated results, agreement reports, the self-contained study report, and run exports as zips."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile

import numpy as np
import pytest
from django.urls import reverse

from annotation.expert import exports, selectors, services
from annotation.models import Judgment
from tests.test_api import token_client
from tests.test_expert_study import build_study_world, make_experts

pytestmark = pytest.mark.django_db
FILES = ["judgments.csv", "judgments.json", "results.csv", "results.json", "agreement.json", "report.html"]


@pytest.fixture
def study(researcher):
    """Paper plan, 2 units × classes bird (overlap), car, tree; expert1 answers, then revises one answer."""
    world = build_study_world(units=2)
    study = services.study_create(
        name="exported <b>study</b>",
        extraction=world,
        experts=make_experts(2),
        overlap_class="bird",
        created_by=researcher,
    )
    raters = {rater.name: rater for rater in study.raters.all()}
    for name, answer, concept in (("expert1", "part", "Wheels"), ("expert2", "part", "wheel")):
        while (task := services.task_next_for_rater(rater=raters[name])) is not None:
            services.judgment_submit(rater=raters[name], task=task, answer=answer, concept=concept, started_at=None)
    first = Judgment.objects.filter(rater=raters["expert2"], task__item="0/bird").get()
    services.judgment_submit(rater=raters["expert2"], task=first.task, answer="no")  # a revision
    services.simulated_raters_run(
        study=study, raters=1, error_rate=0.0, truth={task.pk: ("background", "grass") for task in study.tasks.all()}
    )
    return study


def download(client, study, name, **query):
    response = client.get(reverse("annotation:study_export_file", args=[study.pk, name]), query)
    assert response.status_code == 200, response.content[:500]
    assert f'filename="study-{study.pk}-' in response["Content-Disposition"]
    return response


def test_every_study_export_is_for_researchers_only(client, make_user, study):
    for name in FILES:
        url = reverse("annotation:study_export_file", args=[study.pk, name])
        assert client.get(url).status_code == 302
        client.force_login(make_user(f"e-{name}", "expert"))
        assert client.get(url).status_code == 403
        client.logout()
    client.force_login(make_user("r", "researcher"))
    assert client.get(reverse("annotation:study_export_file", args=[study.pk, "passwords.csv"])).status_code == 404
    detail = client.get(reverse("annotation:study_detail", args=[study.pk])).content.decode()
    for name in FILES:
        assert reverse("annotation:study_export_file", args=[study.pk, name]) in detail


def test_judgments_csv_and_json_carry_full_provenance(researcher_client, study):
    rows = list(csv.DictReader(io.StringIO(download(researcher_client, study, "judgments.csv").content.decode())))
    data = json.loads(download(researcher_client, study, "judgments.json").content)
    assert data["fields"] == list(exports.JUDGMENT_FIELDS) and list(rows[0]) == list(exports.JUDGMENT_FIELDS)
    # 4 bird (overlap) + 2 car + 2 tree first answers, 1 revision, 6 simulated answers.
    assert len(rows) == len(data["judgments"]) == Judgment.objects.filter(task__study=study).count() == 15
    by_id = {int(row["judgment"]): row for row in rows}
    for row, item in zip(rows, data["judgments"]):
        assert str(item["judgment"]) == row["judgment"] and item["answer"] == row["answer"]
    revised = [row for row in rows if row["revision_of"]]
    assert len(revised) == 1
    new, old = revised[0], by_id[int(revised[0]["revision_of"])]
    assert (old["answer"], old["concept"], old["current"], old["version"]) == ("part", "wheel", "0", "1")
    assert (new["answer"], new["concept"], new["current"], new["version"]) == ("no", "", "1", "2")
    assert old["revised_by"] == new["judgment"] and new["chain_first"] == old["judgment"] == old["chain_first"]
    simulated = [row for row in rows if row["simulated"] == "1"]
    assert len(simulated) == 6 and {row["rater_kind"] for row in simulated} == {"simulated"}
    assert {row["adapter"] for row in simulated} == {"simulated"}
    for row in rows:
        judgment = Judgment.objects.select_related("task__exemplar_set__grid", "rater").get(pk=row["judgment"])
        assert row["rater"] == judgment.rater.name and row["rater_id"] == str(judgment.rater_id)
        assert row["task"] == str(judgment.task_id) and row["item"] == judgment.task.item
        assert row["grid_sha256"] == judgment.task.exemplar_set.grid.sha256 and row["grid_style"] == "top_class"
        assert row["submitted_at"] == judgment.submitted_at.isoformat()
        assert row["user"] == (str(judgment.rater.user_id) if judgment.rater.user_id else "")


def test_results_are_aggregated_per_task(researcher_client, study):
    rows = {
        row["item"]: row
        for row in csv.DictReader(io.StringIO(download(researcher_client, study, "results.csv").content.decode()))
    }
    assert len(rows) == 6
    # 0/bird: expert1 part "Wheels", expert2 now "no" → a tie, no majority; one name.
    assert (rows["0/bird"]["raters"], rows["0/bird"]["n_part"], rows["0/bird"]["n_no"], rows["0/bird"]["majority"]) == (
        "2",
        "1",
        "1",
        "",
    )
    # 1/bird: both part, "Wheels" and "wheel" normalise to one name given twice.
    assert rows["1/bird"]["majority"] == "part" and float(rows["1/bird"]["majority_share"]) == 1.0
    assert (
        json.loads(rows["1/bird"]["names"]) == [{"name": "wheel", "count": 2}] and rows["1/bird"]["top_name"] == "wheel"
    )
    simulated = json.loads(download(researcher_client, study, "results.json", simulated="only").content)
    assert simulated["simulated"] == "only"
    assert all(row["majority"] == "background" and row["raters"] == 1 for row in simulated["results"])


def test_agreement_report_matches_the_report_page(researcher_client, study):
    report = json.loads(download(researcher_client, study, "agreement.json").content)
    assert report["agreement"] == json.loads(json.dumps(selectors.study_agreement(study)))
    assert report["agreement"]["n_items"] == 2  # the bird tasks; the simulated rater is left out
    assert report["agreement"]["percent_agreement"]["value"] == 0.5
    assert {row["rater"] for row in report["answers_per_rater"]} == {"expert1", "expert2"}
    included = json.loads(download(researcher_client, study, "agreement.json", simulated="include").content)
    assert "simulated-1" in {row["rater"] for row in included["answers_per_rater"]}


def test_study_report_is_one_self_contained_page(researcher_client, study):
    response = download(researcher_client, study, "report.html")
    html = response.content.decode()
    assert response["Content-Type"].startswith("text/html")
    assert html.count("<svg") >= 2  # the agreement intervals and the filter-type distribution
    assert "<link" not in html and "<script" not in html and not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "--accent" in html  # the stylesheet is inline
    assert "exported &lt;b&gt;study&lt;/b&gt;" in html and "<b>study</b>" not in html
    assert "Krippendorff" in html and "expert1" in html


MAPS = np.arange(3 * 2 * 2 * 2, dtype=np.float16).reshape(3, 2, 2, 2) / 4
"""A hand-made activation cache: 3 images × 2 units × 2 × 2 (exact in float16)."""


@pytest.fixture
def extraction_run(settings):
    """A succeeded extraction run whose float16 cache holds :data:`MAPS` (no network is run)."""
    from analysis.models import Dataset, DatasetImage, Layer, LayerExtraction, Network, Run

    run = Run.objects.create(kind="extract", params={"layers": ["conv5"]}, params_hash="e", status="succeeded")
    dataset = Dataset.objects.create(name="three", kind="probe_world", root_dir="/nonexistent", image_count=3)
    for index in range(3):
        DatasetImage.objects.create(
            dataset=dataset,
            index=index,
            path=f"img{index}.png",
            split="train",
            height=8,
            width=8,
            seg_height=4,
            seg_width=4,
        )
    network = Network.objects.create(name="n", source="module", input_height=8, input_width=8, mean=[0], std=[1])
    layer = Layer.objects.create(network=network, name="conv5", order=5, units=2, out_height=2, out_width=2)
    cache = settings.UNITSCOPE_DATA_DIR / "cache"
    cache.mkdir()
    (cache / "meta.json").write_text(json.dumps({"shape": list(MAPS.shape)}))
    MAPS.tofile(cache / "maps.f16")
    extraction = LayerExtraction.objects.create(
        run=run,
        layer=layer,
        dataset=dataset,
        cache_key="e",
        cache_path=str(cache),
        stats_path="",
        n_images=3,
        map_height=2,
        map_width=2,
        quantile=0.995,
        k_overall=15,
        k_per_class=10,
    )
    for index, (peak, threshold, active) in enumerate([(4.75, 4.5, 3), (0.0, 0.0, 0)]):  # unit 1 reads as dead
        unit = layer.unit_set.create(index=index)
        extraction.unit_summaries.create(unit=unit, max_activation=peak, threshold=threshold, active_images=active)
    return run


def test_run_export_downloads_as_zip_from_the_run_page_and_the_api(
    researcher_client, researcher, extraction_run, tmp_path
):
    from analysis.services.exports import run_export

    page = researcher_client.get(reverse("analysis:run_detail", args=[extraction_run.pk])).content.decode()
    assert reverse("analysis:run_export", args=[extraction_run.pk]) in page
    expected_dir = tmp_path / "expected"
    expected = {path.name: path.read_bytes() for path in run_export(run=extraction_run, out_dir=expected_dir)}
    assert set(expected) == {"conv5.npy", "conv5_units.csv", "images.csv", "run.json"}
    site = researcher_client.get(reverse("analysis:run_export", args=[extraction_run.pk]))
    api = token_client(researcher).get(reverse("api:run-export", args=[extraction_run.pk]))
    for response in (site, api):
        assert response.status_code == 200 and response["Content-Type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as bundle:
            names = sorted(bundle.namelist())
            assert names == sorted(f"run-{extraction_run.pk}/{name}" for name in expected)
            for name, content in expected.items():
                got = bundle.read(f"run-{extraction_run.pk}/{name}")
                if name == "conv5.npy":
                    exported = np.load(io.BytesIO(got))
                    assert exported.dtype == np.float32 and np.array_equal(exported, MAPS.astype(np.float32))
                elif name == "images.csv":
                    assert got == content == b"index,image\n0,img0.png\n1,img1.png\n2,img2.png\n"
                elif name == "conv5_units.csv":
                    assert (
                        got
                        == content
                        == (
                            b"unit,max_activation,threshold,active_images,status\n0,4.75,4.5,3,live\n1,0.0,0.0,0,dead\n"
                        )
                    )
                else:
                    assert json.loads(got)["run"] == extraction_run.pk and json.loads(got)["layers"] == ["conv5"]


def test_run_without_export_says_so(researcher_client):
    from analysis.models import Run

    run = Run.objects.create(kind="selfcheck", params={}, params_hash="x", status="succeeded")
    response = researcher_client.get(reverse("analysis:run_export", args=[run.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("analysis:run_detail", args=[run.pk])
    assert "have no export" in response.content.decode()
    page = researcher_client.get(reverse("analysis:run_detail", args=[run.pk])).content.decode()
    assert reverse("analysis:run_export", args=[run.pk]) not in page


def test_crowd_answers_and_results_from_the_site_and_the_api(researcher_client, researcher):
    from annotation.crowd import exports as crowd_exports
    from annotation.crowd import services as crowd_services
    from annotation.models import CrowdAssignment
    from tests.test_crowd_study import enter, validation_study

    study = validation_study(name="votes", units=1, assignments_per_hit=3)  # 2 HITs: dissection label, control
    hits = list(study.hits.order_by("position"))
    answers = {0: ["yes", "yes", "no"], 1: ["no", "yes"]}  # worker n answers answers[hit][n]
    for number in range(3):
        worker = enter(study, number)
        while (assignment := crowd_services.hit_next_for_worker(worker=worker)) is not None:
            position = hits.index(assignment.hit)
            if number < len(answers[position]):
                crowd_services.assignment_submit(assignment=assignment, answer=answers[position][number])
            else:
                crowd_services.assignment_return(assignment=assignment)
    robot, _ = crowd_services.worker_enter(study=study, adapter="link", external_id="robot", simulated=True)
    robot_assignment = crowd_services.hit_next_for_worker(worker=robot)
    crowd_services.assignment_submit(assignment=robot_assignment, answer="no")

    url = reverse("annotation:crowd_study_export", args=[study.pk, "answers.csv"])
    rows = list(csv.DictReader(io.StringIO(researcher_client.get(url).content.decode())))
    assert list(rows[0]) == list(crowd_exports.CROWD_ANSWER_FIELDS)
    assert len(rows) == CrowdAssignment.objects.filter(hit__study=study).count() == 7  # 5 answers, 1 return, robot
    assert sorted(row["state"] for row in rows) == ["returned"] + ["submitted"] * 6
    for row in rows:
        assignment = CrowdAssignment.objects.select_related("hit__grid", "worker").get(pk=row["assignment"])
        assert row["hit_token"] == assignment.hit.token and row["label_origin"] == assignment.hit.label_origin
        assert row["grid_sha256"] == assignment.hit.grid.sha256 and row["answer"] == assignment.answer
        assert row["worker_external_id"] == assignment.worker.external_id
        assert row["worker_simulated"] == str(int(assignment.worker.simulated))
    results = {
        row["hit"]: row
        for row in json.loads(
            researcher_client.get(reverse("annotation:crowd_study_export", args=[study.pk, "results.json"])).content
        )["results"]
    }
    first, second = results[hits[0].pk], results[hits[1].pk]
    assert (first["answers"], first["n_yes"], first["n_no"], first["majority"], first["tied"]) == (
        2 + 1,
        2,
        1,
        "yes",
        False,
    )
    assert first["majority_share"] == pytest.approx(2 / 3)
    assert (second["answers"], second["n_yes"], second["n_no"], second["tied"]) == (2, 1, 1, True)  # a tie, flagged
    everyone = json.loads(
        researcher_client.get(
            reverse("annotation:crowd_study_export", args=[study.pk, "results.json"]), {"simulated": "include"}
        ).content
    )["results"]
    assert sum(row["answers"] for row in everyone) == 6
    api = token_client(researcher)
    assert api.get(reverse("api:crowd-study-list")).json()["results"][0]["hit_count"] == 2
    via_api = api.get(reverse("api:crowd-study-files", args=[study.pk, "answers.csv"]))
    assert via_api.status_code == 200 and via_api.content == researcher_client.get(url).content
    assert researcher_client.get(reverse("annotation:crowd_study_export", args=[study.pk, "x.csv"])).status_code == 404
