"""Forced-choice studies (issue 17) against the database and through HTTP: planning from a real extraction's
activation statistics (queries never among references, balanced sides, conditions, catch and practice trials),
the worker's practice and trial pages, blindness (HTML, URLs, image names), answers with condition and times."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from analysis.models import LayerExtraction
from annotation.crowd import services
from annotation.crowd.forced_choice_plan import forced_choice_study_create
from annotation.crowd.hits import unit_image_scores
from annotation.models import (
    ConditionAssignment,
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdTaskKind,
    ForcedChoiceCondition,
    ForcedChoiceReference,
    ForcedChoiceTrial,
    HitRole,
)
from tests.test_crowd_pages import Links

pytestmark = pytest.mark.django_db
ALL_CONDITIONS = [
    ForcedChoiceCondition.NATURAL,
    ForcedChoiceCondition.OVERLAY,
    ForcedChoiceCondition.NON_EXTREMAL,
    ForcedChoiceCondition.NONE,
]
SMALL = dict(reference_count=4, query_ranks=(5, 9), non_extremal_ranks=(10, 16))
"""36 probe images: 4 + 4 references, queries from ranks 5-9, non-extremal references from ranks 10-16."""


def fc_study(run, name="fc", **kwargs):
    extraction = LayerExtraction.objects.get(run=run, layer__name="conv5")
    params = dict(
        conditions=ALL_CONDITIONS,
        trials_per_unit=2,
        practice_trials=2,
        catch_rate=0.1,
        assignments_per_hit=2,
        seed=3,
        **SMALL,
    )
    params.update(kwargs)
    return forced_choice_study_create(name=name, extractions=[extraction], **params), extraction


def test_planning_keeps_queries_out_of_references_balances_sides_and_conditions(tiny_layer_with_grids):
    study, extraction = fc_study(tiny_layer_with_grids)
    scores = unit_image_scores(extraction)
    trials = list(ForcedChoiceTrial.objects.filter(hit__study=study).select_related("hit__unit"))
    tasks = [t for t in trials if t.hit.role == HitRole.TASK]
    assert {t.condition for t in tasks} == set(ALL_CONDITIONS)
    per_condition = {c: sum(t.condition == c for t in tasks) for c in ALL_CONDITIONS}
    assert len(set(per_condition.values())) == 1  # between trials: every condition on the same trials
    sides = [t.strong_position for t in trials]
    assert abs(sides.count(1) - sides.count(2)) <= 1
    assert any(t.catch and t.hit.role == HitRole.GOLD for t in trials)
    assert sum(t.practice and t.hit.role == HitRole.QUALIFICATION for t in trials) == 2
    assert study.qualification_required and study.qualification_size == 2 and study.gold_rate == 0.1
    for trial in trials:
        unit_scores = scores[:, trial.hit.unit.index]
        assert unit_scores[trial.strong_image] > unit_scores[trial.weak_image]
        assert trial.strong_score == pytest.approx(float(unit_scores[trial.strong_image]))
        references = ForcedChoiceReference.objects.filter(study=study, unit=trial.hit.unit)
        shown = {i for ref in references for i in ref.top_images + ref.bottom_images}
        if trial.catch:
            natural = references.get(condition=ForcedChoiceCondition.NATURAL)
            assert trial.strong_image in natural.top_images and trial.weak_image in natural.bottom_images
        else:
            assert not {trial.strong_image, trial.weak_image} & shown
            assert 5 <= trial.strong_rank <= 9 and 5 <= trial.weak_rank <= 9
    practice_queries = {(t.hit.unit_id, t.strong_image) for t in trials if t.practice}
    assert not practice_queries & {(t.hit.unit_id, t.strong_image) for t in tasks}
    natural = ForcedChoiceReference.objects.filter(study=study, condition=ForcedChoiceCondition.NATURAL).first()
    order = np.argsort(-scores[:, natural.unit.index], kind="stable")
    assert natural.top_images == order[:4].tolist()
    assert not ForcedChoiceReference.objects.filter(study=study, condition=ForcedChoiceCondition.NONE).exists()

    # Between workers: one HIT per trial, the condition is the worker's, in turn by arrival.
    study, _ = fc_study(
        tiny_layer_with_grids,
        name="fc-workers",
        condition_assignment=ConditionAssignment.WORKERS,
        conditions=[ForcedChoiceCondition.NATURAL, ForcedChoiceCondition.NONE],
        practice_trials=0,
        catch_rate=0.0,
    )
    seen = []
    for number in range(4):
        worker, _ = services.worker_enter(study=study, adapter="link", external_id=f"w{number}")
        assignment = services.hit_next_for_worker(worker=worker)
        result = services.assignment_submit(assignment=assignment, answer="1", confidence=2)
        seen.append(result.assignment.condition)
    assert seen == ["natural", "none", "natural", "none"]
    assert not ForcedChoiceTrial.objects.filter(hit__study=study, hit__role=HitRole.TASK).exclude(condition="").exists()
    with pytest.raises(services.CrowdInputError, match="too few"):
        fc_study(tiny_layer_with_grids, name="fc-big", reference_count=9, query_ranks=(10, 19), non_extremal_ranks=None)


def test_a_worker_practises_then_answers_blind_trials(tiny_layer_with_grids):
    study, _ = fc_study(tiny_layer_with_grids, hits_per_session=100, block_min_gold=100)
    client = Client()
    response = client.post(reverse("annotation:crowd_entry", args=[study.token]))
    url = response["Location"]
    code = url.split("/")[3]
    assert "/practice/" in client.get(reverse("annotation:crowd_qualification", args=[code]))["Location"]
    pages, visited = [], [url]
    right_in_practice, catch_feedback = [], []
    for _ in range(200):
        response = client.get(url)
        if response.status_code == 302:
            url = response["Location"]
            visited.append(url)
            continue
        html = response.content.decode()
        if "/practice/" in url:
            token = re.search(r'name="token" value="([0-9a-f]+)"', html).group(1)
            pages.append(html)
            feedback = client.post(url, {"token": token, "answer": "1"})
            assert feedback.status_code == 200
            text = feedback.content.decode()
            right_in_practice.append("Right!" in text)
            assert "makes the unit respond strongly" in text
            url = re.search(r'href="([^"]+)" id="next-link"', text).group(1).replace("&amp;", "&")
            visited.append(url)
            continue
        if "/done/" in url:  # after a catch trial: feedback, then on
            assert "Right!" in html or "Not quite" in html
            catch_feedback.append(url)
            url = re.search(r'href="([^"]+)" id="next-link"', html).group(1).replace("&amp;", "&")
            visited.append(url)
            continue
        if "/a/" not in url:
            assert "thank you" in html.lower(), re.search(r"<h1>(.*?)</h1>", html).group(1)
            break
        pages.append(html)
        assert 'name="client_ms"' in html and "js/forced_choice.js" in html
        assert "<script>" not in html  # no inline scripts (CSP)
        answer = client.post(url, {"answer": "2", "confidence": "3", "client_ms": "1234"})
        assert answer.status_code == 302
        url = answer["Location"]
        visited.append(url)
    worker = study.workers.get()
    assert worker.qualified is True
    attempt = worker.qualification_attempts.get()
    truth = dict(study.hits.filter(role=HitRole.QUALIFICATION).values_list("token", "gold_answer"))
    assert right_in_practice == [truth[token] == "1" for token in attempt.questions]
    answered = CrowdAssignment.objects.filter(worker=worker, state=CrowdAssignmentState.SUBMITTED)
    assert answered.filter(hit__role=HitRole.TASK).count() >= 10
    first = answered.first()
    assert first.answer == "2" and first.confidence == 3 and first.client_ms == 1234 and first.seconds is not None
    assert {a.condition for a in answered.filter(hit__role=HitRole.TASK)} <= set(ALL_CONDITIONS)
    # Blindness: no page, URL or image name says which query is strong.
    trials = ForcedChoiceTrial.objects.filter(hit__study=study)
    secrets_ = {str(value) for t in trials for value in (t.strong_rank, t.weak_rank, t.strong_score)}
    for html in pages:
        parser = Links()
        parser.feed(html)
        for link in parser.urls:
            assert not re.search(r"strong|weak|rank|catch|side", link.split("?")[0].lower()), link
        for image in re.findall(r'<img src="([^"]+)"', html):
            assert re.fullmatch(r"/media/grids/[0-9a-f]{2}/[0-9a-f]{64}\.png", image), image
        lowered = html.lower()
        assert "strong_position" not in lowered and "catch" not in lowered and "score" not in lowered
        assert 'value="1"' in html and 'value="2"' in html
    for url in visited:
        assert re.fullmatch(r"/crowd/w/[0-9a-f]+/((practice|a/[0-9a-f]+(/done)?)/)?(\?ctx=[^ ]*)?", url), url
    assert secrets_  # the truth exists server-side only

    # Bad answers are refused.
    study, _ = fc_study(tiny_layer_with_grids, name="fc-bad", practice_trials=0, catch_rate=0.0)
    worker, _ = services.worker_enter(study=study, adapter="link", external_id="x")
    assignment = services.hit_next_for_worker(worker=worker)
    assert assignment.hit.kind == CrowdTaskKind.FORCED_CHOICE
    with pytest.raises(services.CrowdInputError):
        services.assignment_submit(assignment=assignment, answer="yes")
    with pytest.raises(services.CrowdInputError):
        services.assignment_submit(assignment=assignment, answer="1", confidence=5)
    result = services.assignment_submit(assignment=assignment, answer="1", client_ms="-3")
    assert result.assignment.client_ms is None and result.assignment.confidence is None


def test_simulated_crowd_report_recovers_planted_readability_and_matches_scipy(
    tiny_layer_with_grids, researcher_client
):
    from scipy import stats
    from statsmodels.stats.proportion import proportion_confint

    from annotation.crowd.forced_choice_report import forced_choice_export_file, forced_choice_report
    from annotation.crowd.forced_choice_simulation import forced_choice_simulate

    study, _ = fc_study(
        tiny_layer_with_grids,
        name="fc-sim",
        trials_per_unit=4,
        assignments_per_hit=6,
        conditions=[ForcedChoiceCondition.NATURAL, ForcedChoiceCondition.NONE],
        catch_rate=0.15,
        hits_per_session=1000,
        units=range(12),
    )
    outcome = forced_choice_simulate(study=study, seed=2)
    assert outcome["submitted"] > 0
    people = forced_choice_report(study)
    assert people["counted"] == 0 and people["trials"] == []  # simulated answers stay out unless asked
    report = forced_choice_report(study, simulated="include")
    careless = {reason for name, reason in report["excluded_workers"] if name == "fc-simulated-7"}
    assert careless and ("response time" in next(iter(careless)) or "catch" in next(iter(careless)))
    assert {name for name, _ in report["excluded_workers"]} == {"fc-simulated-7"}
    rho, _p, n = report["planted_rho"]
    assert n >= 8 and rho > 0.6, report["planted_rho"]
    natural = {row["unit"]: row for row in report["units"] if row["condition"] == "natural"}
    for row in list(natural.values())[:5]:
        low, high = proportion_confint(row["correct"], row["n"], method="beta")
        assert row["ci_low"] == pytest.approx(low) and row["ci_high"] == pytest.approx(high)
    layer = {row["condition"]: row for row in report["layers"]}
    assert layer["natural"]["proportion"] > layer["none"]["proportion"]
    test = report["tests"][0]
    none = {row["unit"]: row["proportion"] for row in report["units"] if row["condition"] == "none"}
    keys = sorted(set(natural) & set(none))
    assert test["n"] == len(keys)
    assert test["wilcoxon_p"] == pytest.approx(
        stats.wilcoxon([natural[k]["proportion"] for k in keys], [none[k] for k in keys]).pvalue
    )
    assert all(row["proxy"] is not None for row in report["comparison"])
    iou = next(row for row in report["correlations"] if row["score"] == "iou")
    assert iou["n"] == 0 or iou["n"] == len(report["comparison"])
    text, _content_type, filename = forced_choice_export_file(study, "trials.csv", simulated="include")
    header = text.splitlines()[0].split(",")
    assert "exclusion_reason" in header and "strong_rank" in header and "top_reference_ranks" in header
    assert "fc-simulated-7" in text and filename.endswith("trials-simulated-include.csv")
    seconds = [row["seconds"] for row in report["trials"] if not row["excluded"]]
    assert 2.0 < float(np.median(seconds)) < 6.0
    # The report page, the site's export and the API's file.
    page = researcher_client.get(
        reverse("annotation:crowd_report_forced_choice", args=[study.pk]) + "?simulated=include"
    )
    html = page.content.decode()
    assert page.status_code == 200 and "Does the machine predict the human?" in html and "<svg" in html
    assert "fc-simulated-7" in html and "Clopper" in html
    export = researcher_client.get(
        reverse("annotation:crowd_study_export", args=[study.pk, "comparison.json"]) + "?simulated=include"
    )
    data = json.loads(export.content)
    assert {row["unit"] for row in data["comparison"]} == {row["unit"] for row in report["comparison"]}
    api = researcher_client.get(f"/api/crowd-studies/{study.pk}/files/units.json/?simulated=include")
    assert api.status_code == 200 and json.loads(api.content)["units"] == json.loads(json.dumps(report["units"]))


def test_demo_forced_choice_study_is_simulated_then_open_to_people(tiny_layer_with_grids):
    from annotation.crowd import demo
    from annotation.crowd.forced_choice_report import forced_choice_report

    assert demo.demo_trial_params(36)["reference_count"] == 3
    study = demo.demo_forced_choice_study_ensure(
        network="seeded", dataset="tiny", layers=("conv5",), units=range(6), assignments_per_hit=2, proxy=True
    )
    answers = CrowdAssignment.objects.filter(hit__study=study).count()
    assert answers > 0 and study.workers.filter(simulated=False).count() == 0
    again = demo.demo_forced_choice_study_ensure(network="seeded", dataset="tiny", layers=("conv5",), units=range(6))
    assert again.pk == study.pk and CrowdAssignment.objects.filter(hit__study=study).count() == answers
    assert not study.hits.filter(role=HitRole.TASK, max_assignments=2).exists()  # places for people
    worker, _ = services.worker_enter(study=study, adapter="link", external_id="person")
    worker.qualified = True
    worker.save()
    assert services.hit_next_for_worker(worker=worker) is not None
    report = forced_choice_report(study, simulated="include")
    assert report["counted"] > 0 and report["proxy_units"] == 6
    assert {row["condition"] for row in report["layers"]} == {"natural", "overlay", "none"}
    # The researchers' pages: the generic results page and the creation form for the new kind.
    from django.test import Client

    from accounts.roles import Role
    from accounts.services import user_create

    client = Client()
    client.force_login(user_create(username="rf", password="a-test-password-9", role=Role.RESEARCHER))
    assert client.get(reverse("annotation:crowd_report", args=[study.pk]) + "?simulated=include").status_code == 200
    assert client.get(reverse("annotation:crowd_study_detail", args=[study.pk])).status_code == 200
    extraction = LayerExtraction.objects.get(run=tiny_layer_with_grids, layer__name="conv5")
    response = client.post(
        reverse("annotation:crowd_study_create"),
        {
            "name": "fc-form",
            "kind": "forced_choice",
            "extractions": [extraction.pk],
            "units": "0-3",
            "assignments_per_hit": 2,
            "gold_rate": 0.1,
            "qualification_required": "on",
            "lease_seconds": 600,
            "overlap_rule": "fixed",
            "purity_mass": 0.3,
            "external_submit_hosts": "www.mturk.com",
            "seed": 0,
            "conditions": ["natural", "none"],
            "condition_assignment": "workers",
            "trials_per_unit": 1,
        },
    )
    assert response.status_code in (200, 302)
    text = response.content.decode()
    # 36 probe images are too few for the papers' 9 + 9 references and ranks 10-19: a readable refusal.
    assert response.status_code == 200 and "too few" in text
