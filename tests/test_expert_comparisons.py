"""Issue 7 item 4: human names vs the dataset's part vocabulary (GG'18 §4.3 / Table 3) and vs dissection labels;
the name normalisation and the study's synonym table; ``agreement_report --json``'s ``dissection_agreement``."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.urls import reverse

from analysis.models import Concept, LayerDissection, Run, RunStatus, UnitDissection
from annotation.expert import selectors, services
from annotation.models import Answer, ConceptSynonym, RaterKind, StudyPlan, StudyRater
from annotation.naming import normalise_concept_name, singular
from tests.test_expert_study import build_study_world, make_experts

pytestmark = pytest.mark.django_db


# -- normalisation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given,expected",
    [
        ("  Wheels ", "wheel"),
        ("WHEEL", "wheel"),
        ("front left legs", "leg"),
        ("lfleg", "leg"),  # PASCAL-Part raw short name
        ("door_3", "door"),  # PASCAL-Part instance number
        ("Left  Eye", "eye"),
        ("back_leg", "leg"),
        ("back", "back"),  # a part of its own (GG'18: "back", "belly"), not a dropped position word
        ("red-c", "red"),  # Broden colour suffix
        ("license plates", "license plate"),
        ("bodies", "body"),
        ("branches", "branch"),
        ("Feet", "foot"),
        ("grass", "grass"),
        ("bus", "bus"),
        ("   ", ""),
    ],
)
def test_normalise_concept_name(given, expected):
    assert normalise_concept_name(given) == expected


def test_singular_and_synonyms():
    assert [singular(word) for word in ("wheels", "glass", "boxes", "hooves", "is")] == [
        "wheel",
        "glass",
        "box",
        "hoof",
        "is",
    ]
    synonyms = {"tyre": "wheel", "rim": "tyre", "a": "b", "b": "a"}
    assert normalise_concept_name("Tyres", synonyms) == "wheel"
    assert normalise_concept_name("rims", synonyms) == "wheel"  # chains are followed
    assert normalise_concept_name("a", synonyms) == "b"  # a cycle stops
    assert normalise_concept_name("wing", synonyms) == "wing"


def test_synonym_service_normalises_and_refuses_identities():
    study = services.study_create(name="syn", extraction=build_study_world(name="syn"), experts=make_experts(1))
    synonym = services.synonym_set(study=study, name=" Tyres", maps_to="Wheels")
    assert (synonym.name, synonym.maps_to) == ("tyre", "wheel")
    services.synonym_set(study=study, name="tyre", maps_to="rim")  # replaces, not duplicates
    assert list(study.synonyms.values_list("name", "maps_to")) == [("tyre", "rim")]
    with pytest.raises(services.StudyInputError):
        services.synonym_set(study=study, name="wheels", maps_to="wheel")
    with pytest.raises(services.StudyInputError):
        services.synonym_set(study=study, name=" ", maps_to="wheel")


# -- a crafted study ----------------------------------------------------------------------------------------


@pytest.fixture
def crafted():
    """Five units × (car, bird, tree); two imported raters (people) and one simulated rater answer by hand.

    Part-majority tasks: (u0, car) wheel; (u1, car) rim; (u2, car) tyre; (u3, bird) beak (B's "not sure"
    rejected). Not a majority: (u2, bird) "left wing" vs "no". Not parts: (u1, tree) grass; u4 all "no".
    The simulated rater's "propeller" is left out by default.
    """
    world = build_study_world(name="cmp", units=5)
    study = services.study_create(name="comparisons", extraction=world, experts=make_experts(1), plan=StudyPlan.FULL)
    ann = StudyRater.objects.create(study=study, kind=RaterKind.IMPORTED, name="ann")
    bob = StudyRater.objects.create(study=study, kind=RaterKind.IMPORTED, name="bob")
    sim = StudyRater.objects.create(study=study, kind=RaterKind.SIMULATED, name="sim")

    def task(unit, cls):
        return study.tasks.get(unit__index=unit, object_class__name=cls)

    answers = [
        (0, "car", Answer.PART, "Wheels", Answer.PART, "wheel"),
        (1, "car", Answer.PART, "rim", Answer.PART, "Rims"),
        (2, "car", Answer.PART, "tyre", Answer.PART, "tyre"),
        (2, "bird", Answer.PART, "left wing", Answer.NO, ""),
        (3, "bird", Answer.PART, "beak", Answer.NOT_SURE, ""),
        (1, "tree", Answer.BACKGROUND, "grass", Answer.BACKGROUND, "Grass"),
        (4, "car", Answer.NO, "", Answer.NO, ""),
    ]
    for unit, cls, first, first_name, second, second_name in answers:
        services.judgment_submit(rater=ann, task=task(unit, cls), answer=first, concept=first_name)
        services.judgment_submit(rater=bob, task=task(unit, cls), answer=second, concept=second_name)
    services.judgment_submit(rater=sim, task=task(4, "tree"), answer=Answer.PART, concept="propeller")
    return study


def make_dissection(study, *, complete=True, labels=None):
    """A LayerDissection of the study's layer on its dataset with hand-made UnitDissection rows."""
    dataset = study.extraction.dataset
    run = Run.objects.create(kind="dissect", params={}, params_hash=f"d{complete}", status=RunStatus.SUCCEEDED)
    dissection = LayerDissection.objects.create(
        run=run,
        layer=study.layer,
        dataset=dataset,
        quantile=0.005,
        iou_threshold=0.04,
        directory="/nonexistent",
        complete=complete,
    )
    concepts = {concept.name: concept for concept in Concept.objects.filter(dataset=dataset)}
    labels = labels or {  # unit: (label, IoU, detector, top concepts)
        0: ("wheel", 0.20, True, ["wheel"]),
        1: ("grass", 0.05, True, ["grass", "wheel"]),
        2: ("wheel", 0.03, False, ["wheel", "wing"]),
        3: ("red-c", 0.06, True, ["red-c", "beak"]),
        4: ("wing", 0.09, True, ["wing"]),
    }
    for unit in study.layer.unit_set.all():
        label, iou, detector, top = labels[unit.index]
        UnitDissection.objects.create(
            dissection=dissection,
            unit=unit,
            concept=concepts[label],
            iou=iou,
            is_detector=detector,
            threshold=1.0,
            top_concepts=[{"name": name, "iou": iou} for name in top],
        )
    return dissection


def names(rows):
    return [row["name"] for row in rows]


def test_vocabulary_split(crafted):
    result = selectors.study_names_vs_vocabulary(crafted)
    assert result["dataset"] == "cmp-data" and result["vocabulary"] == ["wheel", "wing"]
    assert result["part_tasks"] == 4 and result["unnamed_tasks"] == 0
    assert names(result["in_vocabulary"]) == ["wheel"]
    assert result["in_vocabulary"][0]["given_as"] == ["wheel", "Wheels"]
    assert result["in_vocabulary"][0]["classes"] == [("car", 1)]
    assert names(result["not_in_vocabulary"]) == ["beak", "rim", "tyre"]
    assert result["vocabulary_unnamed"] == ["wing"]  # "left wing" had no majority

    services.synonym_set(study=crafted, name="tyre", maps_to="wheel")
    result = selectors.study_names_vs_vocabulary(crafted)
    wheel = result["in_vocabulary"][0]
    assert (wheel["name"], wheel["tasks"], wheel["units"]) == ("wheel", 2, 2)
    assert wheel["given_as"] == ["tyre", "wheel", "Wheels"]
    assert names(result["not_in_vocabulary"]) == ["beak", "rim"]

    with_simulated = selectors.study_names_vs_vocabulary(crafted, simulated="include")
    assert "propeller" in names(with_simulated["not_in_vocabulary"])


def test_dissection_comparison_exact_shares(crafted):
    assert selectors.study_dissection_agreement(crafted) is None
    make_dissection(crafted, complete=False)  # unfinished: ignored even though newer ones would win
    assert selectors.study_dissection_agreement(crafted) is None
    dissection = make_dissection(crafted)

    result = selectors.study_dissection_agreement(crafted)
    summary = result["summary"]
    assert summary["dissection_run"] == dissection.run_id
    # Named units: u0 {wheel}, u1 {rim, grass}, u2 {tyre, wing}, u3 {beak}; u4 unnamed (only "no").
    assert (summary["units_named"], summary["units_compared"], summary["matches"]) == (4, 4, 2)
    assert summary["share"] == pytest.approx(2 / 4)
    assert summary["detectors"] == {"units_compared": 3, "matches": 2, "share": pytest.approx(2 / 3)}
    rows = {row["unit"]: row for row in result["rows"]}
    assert [row["unit"] for row in result["rows"]] == [2, 3, 0, 1]  # disagreements first
    assert rows[0]["match"] and rows[1]["match"] and not rows[2]["match"] and not rows[3]["match"]
    assert rows[3]["label"] == "red-c" and rows[3]["top_rank"] == 2  # "beak" is the unit's second concept
    assert rows[2]["top_rank"] == 2 and rows[2]["iou"] == pytest.approx(0.03)

    services.synonym_set(study=crafted, name="tyres", maps_to="wheel")
    summary = selectors.study_dissection_agreement(crafted)["summary"]
    assert (summary["matches"], summary["share"]) == (3, pytest.approx(3 / 4))
    assert summary["detectors"]["share"] == pytest.approx(2 / 3)


def test_agreement_report_json_dissection_field(crafted, capsys):
    def report():
        call_command("agreement_report", "--study", "comparisons", "--json", "--replicates", "50")
        return json.loads(capsys.readouterr().out)

    assert report()["dissection_agreement"] is None
    dissection = make_dissection(crafted)
    field = report()["dissection_agreement"]
    assert field["dissection_run"] == dissection.run_id and field["layer"] == "conv5"
    assert (field["units_compared"], field["matches"], field["share"]) == (4, 2, 0.5)
    assert field["detectors"]["matches"] == 2 and field["detectors"]["share"] == pytest.approx(2 / 3)
    call_command("agreement_report", "--study", "comparisons", "--replicates", "50")
    assert "2/4 units match (0.500)" in capsys.readouterr().out


# -- the page -----------------------------------------------------------------------------------------------


def test_report_page_comparisons_and_synonym_editing(client, researcher, crafted):
    crafted.created_by = researcher  # the synonym table is its creator's to edit
    crafted.save()
    client.force_login(researcher)
    url = reverse("annotation:study_report", args=[crafted.pk])
    page = client.get(url).content.decode()
    assert "Human names vs the dataset's vocabulary" in page and "Human names vs dissection labels" in page
    assert 'id="names-not-in-vocabulary"' in page and "beak" in page and "tyre" in page
    assert 'id="no-dissection"' in page
    assert reverse("analysis:layer_dissection", args=[crafted.layer.network.name, "conv5"]) in page
    assert "issue 6" not in page and "once part-AP" not in page and 'id="pending-comparisons"' not in page
    assert reverse("analysis:layer_parts", args=[crafted.layer.network.name, "conv5"]) in page
    assert reverse("analysis:layer_ablation", args=[crafted.layer.network.name, "conv5"]) in page

    synonyms_url = reverse("annotation:study_synonyms", args=[crafted.pk])
    response = client.post(synonyms_url, {"name": "Tyres", "maps_to": "wheel"})
    assert response.status_code == 302 and response["Location"].endswith("#names")
    synonym = ConceptSynonym.objects.get(study=crafted)
    assert (synonym.name, synonym.maps_to, synonym.created_by) == ("tyre", "wheel", researcher)
    refused = client.post(synonyms_url, {"name": "wheels", "maps_to": "wheel"}, follow=True)
    assert "Synonym not saved" in refused.content.decode() and ConceptSynonym.objects.count() == 1

    make_dissection(crafted)
    response = client.get(url)
    context = response.context
    assert names(context["names_vs_vocabulary"]["not_in_vocabulary"]) == ["beak", "rim"]
    assert context["dissection_agreement"]["summary"]["share"] == pytest.approx(3 / 4)
    page = response.content.decode()
    assert 'id="dissection-units"' in page and 'id="no-dissection"' not in page
    assert 'data-unit="3"' in page and "0.750" in page and 'id="synonym-table"' in page

    assert client.post(synonyms_url, {"delete": synonym.pk}).status_code == 302
    assert not ConceptSynonym.objects.exists()
    assert client.get(url).context["dissection_agreement"]["summary"]["share"] == pytest.approx(2 / 4)


def test_comparison_pages_are_for_researchers_only(client, expert, crafted):
    client.force_login(expert)
    assert client.get(reverse("annotation:study_report", args=[crafted.pk])).status_code == 403
    response = client.post(reverse("annotation:study_synonyms", args=[crafted.pk]), {"name": "a", "maps_to": "b"})
    assert response.status_code == 403 and not ConceptSynonym.objects.exists()
