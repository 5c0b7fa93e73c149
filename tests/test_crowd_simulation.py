"""Crowd studies on a real (tiny) probe world: gold and qualification items from the pixel truth, purity K from
the activation cache, the simulated crowd, the demo's crowd studies and the command."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import call_command

from analysis.models import ExemplarKind, ExemplarSet
from analysis.services.dissection import dissection_run_start
from analysis.services.extraction import open_activation_cache
from annotation import models as crowd_models
from annotation.crowd import demo as crowd_demo
from annotation.crowd import hits as crowd_hits
from annotation.crowd import services
from annotation.crowd.truth import absent_concepts, peak_concepts, truth_concepts
from annotation.models import CrowdAssignment, CrowdAssignmentState, CrowdStudy, CrowdTaskKind, HitRole, LabelOrigin
from annotation.naming import normalise_concept_name

pytestmark = pytest.mark.django_db
UNITS = list(range(10))


@pytest.fixture
def tiny_dissected(tiny_layer_with_grids):
    run = dissection_run_start(network="seeded", dataset="tiny", layer="conv5", inline=True)
    assert run.status == "succeeded", run.error
    return tiny_layer_with_grids.layer_extractions.get(layer__name="conv5")


def test_truth_helpers_by_hand():
    per_image = [{"wheel", "car"}, {"wheel"}, {"grass"}, {"wheel", "grass"}]
    assert truth_concepts(per_image) == ["wheel"]  # 3 of 4 > half; grass 2 of 4 is not "most"
    assert truth_concepts(per_image, fraction=0.4) == ["wheel", "grass"]
    assert absent_concepts(per_image, ["wheel", "sky", "road"]) == ["road", "sky"]
    assert truth_concepts([]) == []


def test_gold_purity_and_the_command_on_a_real_probe_world(tiny_dissected, capsys):
    """One world for three checks (building it and dissecting take most of the time)."""
    check_gold_and_qualification_items_come_from_the_pixel_truth(tiny_dissected)
    check_purity_hits_show_the_top_k_holding_thirty_percent_of_the_score_mass(tiny_dissected)
    check_purity_qualification_counts_marked_parts_and_sorts_the_simulated_crowd(tiny_dissected)
    check_crowd_study_command_creates_and_simulates(tiny_dissected, capsys)
    check_graph_nodes_and_raw_filters_as_purity_sources(tiny_dissected)


def check_graph_nodes_and_raw_filters_as_purity_sources(extraction):
    """A default graph run learns one graph per category on its object crops; a purity study over one category's
    graph judges its top nodes and the raw filters on that category's crops."""
    from analysis.models import ExplanatoryGraph
    from analysis.services.explanatory_graph import (
        graph_inputs,
        graph_layer_maps,
        graph_purity_candidates,
        graph_run_start,
    )
    from annotation.crowd.exports import pattern_of

    run = graph_run_start(
        network="seeded",
        dataset="tiny",
        layers=["conv4", "conv5"],
        nodes_per_filter=[2, 2],
        iterations=2,
        neighbours=4,
        batch_size=36,
        landmarks=["head", "body"],
        top_images=5,
        inline=True,
    )
    assert run.status == "succeeded", run.error
    graphs = list(ExplanatoryGraph.objects.filter(run=run))
    assert len(graphs) > 1 and {graph.inputs for graph in graphs} == {"object_crops"}
    graph = min(graphs, key=lambda item: (-item.n_images, item.category))
    assert crowd_demo._demo_purity_graph("seeded", "tiny") == graph  # the demo's purity study judges this one
    crop_images = set(graph_inputs(graph).images.tolist())
    study = crowd_hits.crowd_study_create(
        name="eg-purity",
        kind=CrowdTaskKind.PURITY,
        extractions=[extraction],
        graph=graph,
        gold_count=0,
        qualification_required=False,
        purity_max_shown=8,
    )
    hits = list(study.hits.select_related("unit", "grid"))
    by_source = {}
    for hit in hits:
        by_source.setdefault(hit.source["pattern_source"], []).append(hit)
        assert hit.grid.style == "purity" and hit.purity_shown == len(hit.source["images"])
        assert hit.source["graph_category"] == graph.category and set(hit.source["images"]) <= crop_images
        assert pattern_of(hit)["graph_category"] == graph.category and pattern_of(hit)["graph"] == run.pk
    # nodes and raw filters are judged on the same number of crops (8), whatever their K, unless fewer crops
    # score above 0 (recounted from the inference arrays and the crops' maps)
    from analysis.services.explanatory_graph import graph_inference_arrays

    _, node_scores = graph_inference_arrays(graph, "conv5")
    node_scores = np.asarray(node_scores)
    maps = np.asarray(graph_layer_maps(graph, extraction.layer), dtype=np.float32)
    assert maps.shape[0] == graph.n_images < open_activation_cache(extraction).shape[0]
    nodes_per_filter = 2
    for hit in hits:
        parts = hit.source["pattern"].split("/")
        if hit.source["pattern_source"] == crowd_models.EXPLANATORY_GRAPH:
            positive = int((node_scores[:, int(parts[1]) * nodes_per_filter + int(parts[2])] > 0).sum())
        else:
            positive = int((maps[:, int(parts[1])].reshape(maps.shape[0], -1).max(1) > 0).sum())
        assert hit.purity_shown == min(8, positive)
    candidates = graph_purity_candidates(graph, layer="conv5")
    assert len(by_source[crowd_models.EXPLANATORY_GRAPH]) == len(candidates)
    assert 0 < len(by_source[crowd_models.RAW_FILTER_PEAKS]) <= 128
    expected_k = {f"conv5/{node.filter}/{node.node}": k for node, k in candidates}
    for hit in by_source[crowd_models.EXPLANATORY_GRAPH]:
        assert hit.purity_k == expected_k[hit.source["pattern"]]
        assert hit.unit.index == int(hit.source["pattern"].split("/")[1])


def check_gold_and_qualification_items_come_from_the_pixel_truth(tiny_dissected):
    study = crowd_hits.crowd_study_create(
        name="truth",
        kind=CrowdTaskKind.VALIDATION,
        extractions=[tiny_dissected],
        units=UNITS,
        gold_count=6,
        qualification_size=3,
    )
    gold = list(study.hits.exclude(role=HitRole.TASK).select_related("unit"))
    assert study.qualification_required and sum(h.role == HitRole.QUALIFICATION for h in gold) >= 3
    sets = {s.unit_id: s for s in ExemplarSet.objects.filter(extraction=tiny_dissected, kind=ExemplarKind.TOP_OVERALL)}
    per_image = peak_concepts(tiny_dissected, [sets[hit.unit_id] for hit in gold])
    for hit in gold:
        name = normalise_concept_name(hit.label)
        images = per_image[hit.unit_id]
        present = sum(name in names for names in images)
        if hit.gold_answer == "yes":
            assert present > len(images) / 2, (hit.label, images)
        else:
            assert present == 0
        assert hit.kind == CrowdTaskKind.VALIDATION and hit.gold_explanation
    tasks = study.hits.filter(role=HitRole.TASK)
    # Gold never reuses a task's question (issue 20, item 4): its units are ones no task shows.
    assert not {hit.unit_id for hit in gold} & set(tasks.values_list("unit_id", flat=True))
    assert tasks.filter(label_origin=LabelOrigin.DISSECTION).count() >= 1
    assert (
        tasks.filter(label_origin=LabelOrigin.CONTROL).count()
        == tasks.filter(label_origin=LabelOrigin.DISSECTION).count()
    )


def check_purity_hits_show_the_top_k_holding_thirty_percent_of_the_score_mass(tiny_dissected):
    study = crowd_hits.crowd_study_create(
        name="purity",
        kind=CrowdTaskKind.PURITY,
        extractions=[tiny_dissected],
        units=[0, 1, 2, 3],
        gold_count=0,
        qualification_required=False,
        purity_max_shown=6,
    )
    maps = np.asarray(open_activation_cache(tiny_dissected), dtype=np.float32)
    hits = list(study.hits.select_related("unit", "grid"))
    assert hits
    for hit in hits:
        scores = [float(maps[image, hit.unit.index].max()) for image in range(maps.shape[0])]  # naive loop
        ordered = sorted(scores, reverse=True)
        k = next(k for k in range(1, len(ordered) + 1) if sum(ordered[:k]) >= 0.3 * sum(ordered) - 1e-6)
        # the images shown: 6 at evenly spaced ranks of the top K (K ≥ 6), else the 6 best with a positive score
        ranks = (
            [int((i + 0.5) * k / 6) for i in range(6)]
            if k >= 6
            else list(range(min(6, sum(score > 0 for score in scores))))
        )
        assert hit.purity_k == k and hit.purity_shown == len(ranks)
        assert [scores[i] for i in hit.source["images"]] == [ordered[rank] for rank in ranks]
        assert hit.grid.style == "purity" and hit.grid.width > 0
    worker, _ = services.worker_enter(study=study, adapter="link", external_id="p")
    assignment = services.hit_next_for_worker(worker=worker)
    with pytest.raises(services.CrowdInputError, match="between 0 and"):
        services.assignment_submit(assignment=assignment, count=assignment.hit.purity_shown + 1)
    services.assignment_submit(assignment=assignment, count=assignment.hit.purity_shown)


def check_purity_qualification_counts_marked_parts_and_sorts_the_simulated_crowd(tiny_dissected):
    """Issue 21 item 5: a purity study's qualification asks counts (not yes/no labels) whose known answers are
    what the dataset's part masks show under the marked points; a careful simulated worker qualifies, a careless
    one does not."""
    from analysis.engine.broden import BrodenReader
    from annotation.crowd.simulation import crowd_simulate

    study = crowd_hits.crowd_study_create(
        name="purity-qualification",
        kind=CrowdTaskKind.PURITY,
        extractions=[tiny_dissected],
        units=[0, 1, 2, 3],
        qualification_size=2,
        purity_max_shown=6,
    )
    questions = list(study.hits.filter(role=HitRole.QUALIFICATION).select_related("grid"))
    assert study.qualification_required and len(questions) == 4
    reader = BrodenReader(tiny_dissected.dataset.root)
    for hit in questions:
        assert hit.kind == CrowdTaskKind.PURITY and hit.purity_shown == 6 and hit.grid.style == "purity"
        for image, (y, x), part in zip(hit.source["images"], hit.source["points"], hit.source["parts"]):
            row = reader.row(image)
            layers = reader.load_segmentation(row)["part"].layers
            pixel = (int(y * row.sh), int(x * row.sw))
            under = layers[0][pixel]
            if part:
                assert normalise_concept_name(reader.label_name(int(under))) == part
            else:
                assert not layers[:, pixel[0], pixel[1]].any()  # on no part at all
        assert int(hit.gold_answer) == hit.source["parts"].count(hit.source["part"]) >= 2
    crowd_simulate(study=study, reliabilities=(1.0, 0.0), truth={})
    careful, careless = study.workers.order_by("external_id")
    assert careful.qualified is True and careless.qualified is False
    assert careful.assignments.exists() and not careless.assignments.exists()


def test_simulated_crowd_finishes_a_study_and_the_demo_builds_both_studies(tiny_dissected, capsys):
    result = crowd_demo.demo_crowd_studies_ensure(
        network="seeded", dataset="tiny", layers=("conv5",), units=UNITS, real_places=2
    )
    description = CrowdStudy.objects.get(name=crowd_demo.DEMO_DESCRIPTION_STUDY)
    validation = CrowdStudy.objects.get(name=crowd_demo.DEMO_VALIDATION_STUDY)
    assert result["links"]["mturk"].endswith(f"/crowd/s/{validation.token}/mturk/")
    assert "crowd1" in result["credentials"]
    assert validation.is_open and not description.is_open  # people are sent to the validation study
    for study in (description, validation):
        assert study.workers.filter(simulated=True).count() == 7
        assert not study.workers.filter(simulated=False).exists()
        assert CrowdAssignment.objects.filter(hit__study=study, simulated=False).count() == 0
    # Every description HIT has its three answers; every validation HIT three, plus two places left for people.
    for hit in description.hits.filter(role=HitRole.TASK):
        assert hit.assignments.filter(state=CrowdAssignmentState.SUBMITTED).count() == 3 == hit.max_assignments
    origins = set()
    for hit in validation.hits.filter(role=HitRole.TASK):
        assert hit.assignments.filter(state=CrowdAssignmentState.SUBMITTED).count() == 3 and hit.max_assignments == 5
        origins.add(hit.label_origin)
    assert origins == set(LabelOrigin.values)  # the description study's canonical phrases became human labels
    # Careful simulated workers validate dissection labels more often than controls.
    answers = CrowdAssignment.objects.answered().tasks().filter(hit__study=validation)
    yes_share = {
        origin: answers.filter(hit__label_origin=origin, answer="yes").count()
        / max(answers.filter(hit__label_origin=origin).count(), 1)
        for origin in LabelOrigin.values
    }
    assert yes_share[LabelOrigin.CONTROL] <= yes_share[LabelOrigin.HUMAN]
    # The careless-answer signals are calibrated: no simulated worker (they answer from the pixel truth) shows a
    # suspicious streak, in either study.
    from annotation.crowd.selectors import crowd_worker_rows

    for study in (description, validation):
        for row in crowd_worker_rows(study):
            assert not [flag for flag in row["signals"] if flag.startswith("streak")], (study.name, row["signals"])
    # The demo prints every study's page and worker links as full URLs.
    from annotation.apps import demo_crowd_lines

    lines = demo_crowd_lines(result["studies"], site_url="http://127.0.0.1:8000")
    for study in (description, validation):
        assert (
            f"Crowd study {study.name} ({study.get_kind_display()}, "
            f"{'open to people' if study.is_open else 'closed'}): http://127.0.0.1:8000/"
        ) in "\n".join(lines)
        assert f"  worker link (mturk): http://127.0.0.1:8000/crowd/s/{study.token}/mturk/" in lines
    assert all("http://127.0.0.1:8000/" in line for line in lines)
    # Idempotent: a second run adds nothing.
    count = CrowdAssignment.objects.count()
    crowd_demo.demo_crowd_studies_ensure(network="seeded", dataset="tiny", layers=("conv5",), units=UNITS)
    assert CrowdAssignment.objects.count() == count
    # A person entering through the printed link still finds HITs (the places left open).
    person, _ = services.worker_enter(study=validation, adapter="link", external_id="person")
    person.qualified = True
    person.save()
    assert services.hit_next_for_worker(worker=person) is not None
    call_command("crowd_study", "links", "--study", validation.name, "--base-url", "http://example.org")
    out = capsys.readouterr().out
    assert f"prolific: http://example.org/crowd/s/{validation.token}/prolific/?PROLIFIC_PID=" in out


def check_crowd_study_command_creates_and_simulates(tiny_dissected, capsys):
    call_command(
        "crowd_study",
        "create",
        "--name",
        "cmd",
        "--kind",
        "description",
        "--network",
        "seeded",
        "--layer",
        "conv5",
        "--no-qualification",
        "--gold-rate",
        "0",
    )
    out = capsys.readouterr().out
    study = CrowdStudy.objects.get(name="cmd")
    assert f"Crowd study {study.pk} (cmd): 128 HITs" in out
    assert f"link: http://127.0.0.1:8000/crowd/s/{study.token}/" in out
    study.hits.filter(unit__index__gte=5).delete()
    call_command("crowd_study", "simulate", "--study", "cmd")
    assert "simulated workers submitted 15 assignments" in capsys.readouterr().out
    with pytest.raises(Exception, match="No crowd study"):
        call_command("crowd_study", "links", "--study", "nope")
