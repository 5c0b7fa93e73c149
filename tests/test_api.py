"""The researchers' REST API: token auth, roles, per-object permissions, reads, run starts, imports, schema."""

from __future__ import annotations

import csv
import hashlib
import io

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.models import Run
from analysis.services.selfcheck import selfcheck_params
from annotation.expert import selectors, services
from annotation.models import Judgment, Study
from tests.test_expert_study import answer_all, build_study_world, make_experts

pytestmark = pytest.mark.django_db

IMPORT_CSV = (
    "item,rater,answer,concept\na,r1,part,Wheel\na,r2,part,wheels\nb,r1,no,\nb,r2,background,grass\n"
    "c,r1,not_sure,\nc,r2,no,\n"
)


def token_client(user) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return api


@pytest.fixture
def api(researcher):
    return token_client(researcher)


@pytest.fixture
def world():
    return build_study_world(units=2)


@pytest.fixture
def study(world, researcher):
    """A GG'18-plan study (2 units × 3 classes, overlap class car), both experts done: 8 judgments."""
    study = services.study_create(
        name="api-study", extraction=world, experts=make_experts(2), overlap_class="car", created_by=researcher
    )
    raters = {rater.name: rater for rater in study.raters.all()}
    answer_all(raters["expert1"], answer="part", concept="Wheel")
    answer_all(raters["expert2"], answer="no")
    return study


# -- who may use it ------------------------------------------------------------------------------------

LIST_URLS = [
    "api:network-list",
    "api:dataset-list",
    "api:layer-list",
    "api:unit-list",
    "api:run-list",
    "api:study-list",
    "api:root",
    "api:schema",
]


@pytest.mark.parametrize("name", LIST_URLS)
def test_only_researchers_with_a_token_or_session(name, make_user, researcher):
    url = reverse(name)
    assert APIClient().get(url).status_code == 401
    assert APIClient().get(url, HTTP_AUTHORIZATION="Token not-a-real-token").status_code == 401
    for role in ("expert", "crowd"):
        assert token_client(make_user(f"someone-{role}", role)).get(url).status_code == 403
    assert token_client(researcher).get(url).status_code == 200
    session = APIClient()
    session.force_login(researcher)
    assert session.get(url).status_code == 200


def test_inactive_researcher_token_stops_working(api, researcher):
    assert api.get(reverse("api:run-list")).status_code == 200
    researcher.is_active = False
    researcher.save()
    assert api.get(reverse("api:run-list")).status_code in (401, 403)


def test_token_command_and_page(client, researcher, expert):
    out = io.StringIO()
    call_command("create_api_token", "rita", stdout=out)
    key = out.getvalue().strip()
    assert Token.objects.get(user=researcher).key == key and len(key) == 40
    with pytest.raises(Exception, match="not an active researcher"):
        call_command("create_api_token", "ed")
    client.force_login(researcher)
    page = client.get(reverse("api:token"))
    assert page.status_code == 200 and key in page.content.decode()
    client.post(reverse("api:token"), {"action": "regenerate"})
    new_key = Token.objects.get(user=researcher).key
    assert new_key != key
    assert APIClient().get(reverse("api:run-list"), HTTP_AUTHORIZATION=f"Token {key}").status_code == 401
    assert APIClient().get(reverse("api:run-list"), HTTP_AUTHORIZATION=f"Token {new_key}").status_code == 200
    client.post(reverse("api:token"), {"action": "revoke"})
    assert not Token.objects.filter(user=researcher).exists()
    client.force_login(expert)
    assert client.get(reverse("api:token")).status_code == 403


# -- the machine side ----------------------------------------------------------------------------------


def test_networks_datasets_layers_units(api, world):
    network = api.get(reverse("api:network-list")).json()["results"]
    assert [row["name"] for row in network] == ["w-net"] and network[0]["layer_count"] == 1
    assert api.get(reverse("api:network-detail", args=["w-net"])).json()["input_height"] == 64
    assert api.get(reverse("api:network-detail", args=["nope"])).status_code == 404
    dataset = api.get(reverse("api:dataset-detail", args=["w-data"])).json()
    assert dataset["concept_count"] == 7
    concepts = api.get(reverse("api:dataset-concepts", args=["w-data"]), {"category": "part"}).json()
    assert [row["name"] for row in concepts["results"]] == ["wheel", "wing"]
    layers = api.get(reverse("api:layer-list"), {"network": "w-net"}).json()["results"]
    assert [(row["name"], row["units"], row["network"]) for row in layers] == [("conv5", 2, "w-net")]
    units = api.get(reverse("api:unit-list"), {"layer": layers[0]["id"]}).json()
    assert units["count"] == 2 and [row["index"] for row in units["results"]] == [0, 1]
    assert api.get(reverse("api:unit-list"), {"layer": "x"}).status_code == 400
    unit = api.get(reverse("api:unit-detail", args=[units["results"][1]["id"]])).json()
    assert unit["index"] == 1 and unit["dissection"] is None
    assert sorted(row["object_class"] for row in unit["exemplars"]) == ["bird", "car", "tree"]
    assert all(row["grid_url"].startswith("/media/") and len(row["grid_sha256"]) == 64 for row in unit["exemplars"])
    grid = unit["exemplars"][0]
    response = Client().get(grid["grid_url"])  # a file, named by its content: cacheable for good
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert hashlib.sha256(b"".join(response.streaming_content)).hexdigest() == grid["grid_sha256"]
    assert {"public", "immutable", "max-age=31536000"} <= set(response["Cache-Control"].replace(" ", "").split(","))


def test_start_a_run_with_validated_params(api, researcher):
    url = reverse("api:run-list")
    response = api.post(url, {"kind": "selfcheck", "params": {"matmul_size": 64, "repeats": 2}}, format="json")
    assert response.status_code == 201, response.content
    run = Run.objects.get(pk=response.json()["id"])
    assert run.kind == "selfcheck" and run.status == "queued" and run.created_by == researcher
    assert run.params == selfcheck_params(matmul_size=64, repeats=2)
    again = api.post(url, {"kind": "selfcheck", "params": {"repeats": 2, "matmul_size": 64}}, format="json")
    assert again.status_code == 200 and again.json()["id"] == run.pk  # identical and queued: reused
    bad = [
        ({"kind": "format_disk", "params": {}}, "kind"),
        ({"kind": "selfcheck", "params": {"matmul": 64}}, "params"),  # misspelt: refused, not ignored
        ({"kind": "selfcheck", "params": {"matmul_size": 1}}, "params"),  # the kind's own range check
        ({"kind": "selfcheck", "params": {"repeats": "many"}}, "params"),
        ({"kind": "selfcheck", "params": []}, "params"),
        ({"kind": "dissect", "params": {"network": "nope", "dataset": "nope", "layer": "conv5"}}, "params"),
        ({"kind": "dissect", "params": {"network": "x"}}, "params"),
    ]
    for payload, field in bad:
        response = api.post(url, payload, format="json")
        assert response.status_code == 400 and field in response.json(), (payload, response.content)
    assert Run.objects.count() == 1
    status = api.get(reverse("api:run-detail", args=[run.pk])).json()
    assert status["status"] == "queued" and status["percent"] == 0 and status["created_by"] == "rita"
    assert api.get(url, {"kind": "selfcheck", "status": "queued"}).json()["count"] == 1
    assert api.get(url, {"status": "failed"}).json()["count"] == 0
    assert api.get(reverse("api:run-export", args=[run.pk])).status_code == 409
    assert api.post(reverse("api:run-cancel", args=[run.pk])).json()["status"] == "cancelled"
    assert api.post(reverse("api:run-cancel", args=[run.pk])).status_code == 409


def test_a_run_naming_missing_inputs_is_refused_naming_the_parameter(api, world):
    url, runs = reverse("api:run-list"), Run.objects.count()
    for params, field, words in [
        ({"network": "nope", "dataset": "w-data", "layer": "conv5"}, "network", "nope"),
        ({"network": "w-net", "dataset": "nope", "layer": "conv5"}, "dataset", "nope"),
        ({"network": "w-net", "dataset": "w-data", "layer": "conv9"}, "layer", "conv5"),
    ]:
        response = api.post(url, {"kind": "dissect", "params": params}, format="json")
        assert response.status_code == 400, response.content
        assert words in response.json()["params"][field], response.json()  # the layer error lists the real ones
    assert Run.objects.count() == runs


def test_start_a_dissection_names_existing_inputs(api, world):
    response = api.post(
        reverse("api:run-list"),
        {
            "kind": "dissect",
            "params": {"network": "w-net", "dataset": "w-data", "layer": "conv5", "shards": 2, "baseline": "shuffled"},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    params = Run.objects.get(pk=response.json()["id"]).params
    assert params["shards"] == 2 and params["baseline"] == "shuffled" and params["iou_threshold"] == 0.04
    for kind, params, overflow in [
        ("score_parts", {"layer": "conv5", "population": 20, "generations": 5}, "context"),
        ("ablate", {"layer": "conv5", "max_images": 10}, "context"),
        ("explanatory_graph", {"layers": ["conv5"], "iterations": 3}, "tau"),
    ]:
        response = api.post(
            reverse("api:run-list"),
            {"kind": kind, "params": {"network": "w-net", "dataset": "w-data", **params}},
            format="json",
        )
        assert response.status_code == 201, (kind, response.content)
        run = Run.objects.get(pk=response.json()["id"])
        assert run.kind == kind and all(run.params[key] == value for key, value in params.items())
        for wrong in ({"seed": "x"}, {overflow: 10**400}, {"no_such_parameter": 1}):
            bad = api.post(
                reverse("api:run-list"),
                {"kind": kind, "params": {"network": "w-net", "dataset": "w-data", **params, **wrong}},
                format="json",
            )
            assert bad.status_code == 400, (kind, wrong, bad.content)
    missing_layer = api.post(
        reverse("api:run-list"),
        {"kind": "dissect", "params": {"network": "w-net", "dataset": "w-data", "layer": "conv9"}},
        format="json",
    )
    assert missing_layer.status_code == 400 and "conv9" in str(missing_layer.json())


# -- the human side ------------------------------------------------------------------------------------


def test_studies_tasks_agreement_results(api, study):
    rows = api.get(reverse("api:study-list")).json()["results"]
    assert [(row["name"], row["task_count"], row["rater_count"]) for row in rows] == [("api-study", 6, 2)]
    detail = api.get(reverse("api:study-detail", args=[study.pk])).json()
    assert detail["network"] == "w-net" and detail["dataset"] == "w-data" and detail["overlap_class"] == "car"
    assert detail["claim_hours"] == 24 and detail["suggest_given_names"] is True
    tasks = api.get(reverse("api:task-list"), {"study": study.pk}).json()
    assert tasks["count"] == 6 and all(len(row["grid_sha256"]) == 64 for row in tasks["results"])
    assert api.get(reverse("api:task-list")).status_code == 400
    assert api.get(reverse("api:task-list"), {"study": 999999}).status_code == 404
    agreement = api.get(reverse("api:study-agreement", args=[study.pk])).json()
    expected = selectors.study_agreement(study)
    # The two car tasks: part vs no on both → percent agreement 0.
    assert agreement["agreement"]["n_items"] == expected["n_items"] == 2
    assert agreement["agreement"]["percent_agreement"]["value"] == 0.0
    assert api.get(reverse("api:study-agreement", args=[study.pk]), {"simulated": "bogus"}).status_code == 400
    results = {row["item"]: row for row in api.get(reverse("api:study-results", args=[study.pk])).json()["results"]}
    assert results["0/car"]["raters"] == 2 and results["0/car"]["majority"] is None  # 1 part vs 1 no: a tie
    assert results["0/bird"]["majority"] in ("part", "no") and results["0/bird"]["majority_share"] == 1.0
    assert results["0/bird"]["names"] in ([{"name": "wheel", "count": 1}], [])


def test_judgments_carry_provenance_and_revision_chains(api, researcher):
    response = api.post(reverse("api:judgment-import"), {"study": "imported", "csv": IMPORT_CSV}, format="json")
    assert response.status_code == 201, response.content
    assert response.json() | {} == {
        "study": "imported",
        "study_id": response.json()["study_id"],
        "created_study": True,
        "rows": 6,
        "items": 3,
        "raters": 2,
        "created": 6,
        "revised": 0,
        "unchanged": 0,
    }
    revision = "item,rater,answer,concept\nb,r1,other,red\na,r1,part,Wheel\n"
    second = api.post(reverse("api:judgment-import"), {"study": "imported", "csv": revision}, format="json").json()
    assert (second["created"], second["revised"], second["unchanged"]) == (0, 1, 1)
    study_id = second["study_id"]
    rows = api.get(reverse("api:judgment-list"), {"study": study_id}).json()
    assert rows["count"] == 7
    chain = [row for row in rows["results"] if row["item"] == "b" and row["rater"] == "r1"]
    first, revised = sorted(chain, key=lambda row: row["version"])
    assert (first["answer"], first["current"], first["revised_by"], first["version"]) == (
        "no",
        False,
        revised["judgment"],
        1,
    )
    assert (
        revised["answer"],
        revised["concept"],
        revised["revision_of"],
        revised["version"],
        revised["chain_first"],
        revised["current"],
    ) == ("other", "red", first["judgment"], 2, first["judgment"], True)
    assert revised["adapter"] == "imported" and revised["rater_kind"] == "imported" and revised["simulated"] is False
    assert revised["source_line"] == 2 and revised["submitted_at"]
    current = api.get(reverse("api:judgment-list"), {"study": study_id, "current": "true"}).json()
    assert current["count"] == 6 and all(row["current"] for row in current["results"])
    paged = api.get(reverse("api:judgment-list"), {"study": study_id, "limit": 2, "offset": 6}).json()
    assert len(paged["results"]) == 1
    assert api.get(reverse("api:judgment-list")).status_code == 400


def test_import_refuses_bad_files_and_imports_nothing(api, make_user):
    url = reverse("api:judgment-import")
    bad_rows = api.post(url, {"study": "x", "csv": "item,rater,answer\na,r1,maybe\n,r2,no\n"}, format="json")
    assert bad_rows.status_code == 400
    assert [problem["line"] for problem in bad_rows.json()["problems"]] == [2, 3]
    assert not Study.objects.exists() and not Judgment.objects.exists()
    upload = io.BytesIO(IMPORT_CSV.encode())
    upload.name = "judgments.csv"
    assert api.post(url, {"study": "uploaded", "file": upload}, format="multipart").status_code == 201
    assert Judgment.objects.count() == 6
    for name, content, why in [
        ("weights.pt", b"item,rater,answer\n", "csv"),
        ("j.csv", b"\x80\x04\x95\x00binary", "binary"),
        ("j.csv", "item,rater,answer\nä,r,no\n".encode("latin-1"), "UTF-8"),
    ]:
        upload = io.BytesIO(content)
        upload.name = name
        response = api.post(url, {"study": "uploaded-2", "file": upload}, format="multipart")
        assert response.status_code == 400 and why in str(response.json()), response.content
    both = api.post(url, {"study": "y", "csv": IMPORT_CSV, "file": io.BytesIO(b"x")}, format="multipart")
    assert both.status_code == 400
    assert Judgment.objects.count() == 6 and Study.objects.count() == 1


def test_import_size_limit(api, monkeypatch):
    from api import serializers

    monkeypatch.setattr(serializers, "JUDGMENT_IMPORT_MAX_BYTES", 64)
    upload = io.BytesIO(IMPORT_CSV.encode())
    upload.name = "big.csv"
    response = api.post(reverse("api:judgment-import"), {"study": "big", "file": upload}, format="multipart")
    assert response.status_code == 400 and "larger than" in str(response.json())
    assert not Judgment.objects.exists()


def test_only_the_creator_adds_to_a_study(api, make_user, expert):
    assert (
        api.post(reverse("api:judgment-import"), {"study": "mine", "csv": IMPORT_CSV}, format="json").status_code == 201
    )
    other = token_client(make_user("rob", "researcher"))
    response = other.post(
        reverse("api:judgment-import"), {"study": "mine", "csv": "item,rater,answer\nz,q,no\n"}, format="json"
    )
    assert response.status_code == 403
    assert (
        token_client(expert)
        .post(reverse("api:judgment-import"), {"study": "mine", "csv": IMPORT_CSV}, format="json")
        .status_code
        == 403
    )
    assert Judgment.objects.count() == 6
    # Reading is open to every researcher, as on the site.
    study = Study.objects.get(name="mine")
    assert other.get(reverse("api:study-detail", args=[study.pk])).status_code == 200
    assert token_client(expert).get(reverse("api:study-detail", args=[study.pk])).status_code == 403


def test_study_files_through_the_api(api, study):
    url = reverse("api:study-files", args=[study.pk, "judgments.csv"])
    response = api.get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == Judgment.objects.filter(task__study=study).count() == 8
    assert {row["rater"] for row in rows} == {"expert1", "expert2"} and all(
        row["rater_kind"] == "expert" for row in rows
    )
    report = api.get(reverse("api:study-files", args=[study.pk, "report.html"]))
    assert report.status_code == 200 and b"<svg" in report.content and b"api-study" in report.content
    assert api.get(reverse("api:study-files", args=[study.pk, "secrets.txt"])).status_code == 404


def test_schema_describes_every_endpoint(api):
    response = api.get(reverse("api:schema"), {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for path in [
        "/api/networks/",
        "/api/datasets/{name}/concepts/",
        "/api/units/{id}/",
        "/api/runs/",
        "/api/runs/{id}/export/",
        "/api/studies/{id}/agreement/",
        "/api/studies/{id}/files/{file}/",
        "/api/tasks/",
        "/api/judgments/",
        "/api/judgments/import/",
    ]:
        assert path in schema["paths"], path
    assert "post" in schema["paths"]["/api/runs/"] and "tokenAuth" in schema["components"]["securitySchemes"]
