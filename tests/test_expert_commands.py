"""The commands: import_judgments (atomic, bad rows by line), agreement_report --json, simulate_annotators."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from analysis.engine import agreement as engine
from annotation.expert.simulation import PartBox, PeakTruth, simulated_answer, true_answer
from annotation.models import Answer, Judgment, RaterKind, Study, StudyKind

pytestmark = pytest.mark.django_db

GOOD = """item,rater,answer,concept
u1,ann,part,wheel
u1,bob,part, Wheel
u2,ann,no,
u2,bob,no,
u3,ann,background,grass
u3,bob,other,green colour
u4,ann,not_sure,
u4,bob,no,
u5,ann,part,head
u5,bob,part,head
"""


def report(capsys, *args) -> dict:
    call_command("agreement_report", *args, "--json", "--replicates", "500")
    return json.loads(capsys.readouterr().out)


def test_import_then_agreement_report_json(tmp_path, capsys):
    path = tmp_path / "judgments.csv"
    path.write_text(GOOD)
    call_command("import_judgments", "--study", "imported-one", str(path))
    assert "created: 10 rows — 10 new judgments" in capsys.readouterr().out
    study = Study.objects.get(name="imported-one")
    assert study.kind == StudyKind.IMPORTED and study.tasks.count() == 5
    assert set(study.raters.values_list("kind", flat=True)) == {RaterKind.IMPORTED}
    assert Judgment.objects.get(rater__name="bob", task__item="u1").concept == "Wheel"
    assert Judgment.objects.filter(origin="imported", source_line__isnull=False).count() == 10

    result = report(capsys, "--study", "imported-one")
    for key in ("percent_agreement", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
        assert set(result[key]) == {"value", "ci", "n_items"}, key
        low, high = result[key]["ci"]
        assert low <= result[key]["value"] <= high
    # The headline counts the five answers as GG'18's 79% does: "not sure" is a category, so five items.
    assert result["n_raters"] == 2 and result["raters"] == ["ann", "bob"] and result["not_sure"] == "category"
    assert "GG'18" in result["method"]
    assert result["n_items"] == 5 and result["percent_agreement"]["value"] == pytest.approx(3 / 5)
    alternative = result["alternative"]
    assert alternative["not_sure"] == "rejected" and alternative["method"].startswith("variant")
    # "Not sure" rejected: u4 has one answer left, so four items; agreement on u1, u2, u5.
    assert alternative["n_items"] == 4 and alternative["percent_agreement"]["value"] == pytest.approx(3 / 4)
    # Hand computation of Cohen's kappa over the four items: ann part,no,background,part; bob part,no,other,part.
    # p_o = 3/4; p_e = (2/4·2/4) + (1/4·1/4) + 0 + 0 = 5/16; kappa = (3/4 − 5/16)/(1 − 5/16) = 7/11.
    assert alternative["cohen_kappa"]["value"] == pytest.approx(7 / 11)
    matrix = np.array([[0, 0], [3, 3], [1, 2], [0, 0]])
    assert alternative["fleiss_kappa"]["value"] == pytest.approx(engine.fleiss_kappa(matrix, 5))
    assert alternative["krippendorff_alpha"]["value"] == pytest.approx(engine.krippendorff_alpha(matrix, 5))
    assert result["type_distribution"]["classes"][0]["class"] == "all items"

    # A second file extends the study: a changed answer becomes a revision, an identical one is skipped.
    more = tmp_path / "more.csv"
    more.write_text(
        "item,rater,answer\nu2,bob,part\nu2,ann,no\nu6,cy,no\nu1,cy,part\n"
    )  # the concept column is optional
    call_command("import_judgments", "--study", "imported-one", str(more))
    assert "extended: 4 rows — 2 new judgments, 1 revisions, 1 unchanged" in capsys.readouterr().out
    assert Judgment.objects.filter(task__study=study).count() == 13
    revised = Judgment.objects.current().get(rater__name="bob", task__item="u2")
    assert (revised.answer, revised.concept) == (Answer.PART, "") and revised.revision_of.answer == Answer.NO
    three = report(capsys, "--study", "imported-one")
    assert three["n_raters"] == 3 and three["cohen_kappa"] is None  # Cohen's kappa is for two raters
    assert three["raters"] == three["all_raters"] == ["ann", "bob", "cy"]


BAD = """item,rater,answer,concept
u1,ann,part,wheel
u1,bob,maybe,
,bob,no,
u2,ann,part,{longname}
u2,ann,no,
u3,bob,no
u4,{long},no,
u1,ann,no,
"""


def test_import_rejects_a_malformed_file_atomically(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text(BAD.replace("{long}", "r" * 151).replace("{longname}", "x" * 101))
    with pytest.raises(CommandError) as caught:
        call_command("import_judgments", "--study", "never", str(path))
    message = str(caught.value)
    for line, text in [
        (3, "answer 'maybe' is not one of"),
        (4, "empty item"),
        (5, "A concept name has at most 100 characters"),
        (7, "expected 4 columns, found 3"),
        (8, "rater longer than 150"),
        (9, "rater 'ann' already answered item 'u1' on line 2"),
    ]:
        assert f"line {line}: " in message and text in message, (line, message)
    assert "line 2:" not in message and "line 6:" not in message
    assert "nothing imported" in message
    assert not Study.objects.exists() and not Judgment.objects.exists()
    for content, expected in [
        ("", "the file is empty"),
        ("item,answer\nu1,no\n", "header must be item,rater,answer"),
        ("item,rater,answer\n", "no judgments"),
    ]:
        path.write_text(content)
        with pytest.raises(CommandError, match=expected):
            call_command("import_judgments", "--study", "never", str(path))
    path.write_bytes(b"item,rater,answer\nu1,\xff\xfe,no\n")
    with pytest.raises(CommandError, match="not UTF-8"):
        call_command("import_judgments", "--study", "never", str(path))
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_judgments", "--study", "never", str(tmp_path / "missing.csv"))
    assert not Study.objects.exists()


def test_import_reads_any_line_ending_and_reports_a_stray_carriage_return():
    from annotation.expert.services import ImportProblems, judgments_parse

    rows = judgments_parse(GOOD.replace("\n", "\r\n"))
    assert [(row.item, row.rater, row.answer) for row in rows[:2]] == [("u1", "ann", "part"), ("u1", "bob", "part")]
    assert len(judgments_parse(GOOD.replace("\n", "\r"))) == 10
    with pytest.raises(ImportProblems, match="line 3: expected 4 columns, found 1"):  # found by the API fuzzer
        judgments_parse("item,rater,answer,concept\n\r0")
    with pytest.raises(ImportProblems, match="not readable as CSV"):
        judgments_parse('item,rater,answer\nu1,"' + "x" * 200_000 + '",no\n')  # over the csv field limit


def test_import_refuses_to_extend_a_network_study(tmp_path):
    from annotation.expert.services import study_create
    from tests.test_expert_study import build_study_world, make_experts

    study_create(name="net", extraction=build_study_world(units=1), experts=make_experts(1))
    path = tmp_path / "ok.csv"
    path.write_text(GOOD)
    with pytest.raises(CommandError, match="study of network units"):
        call_command("import_judgments", "--study", "net", str(path))
    assert not Judgment.objects.exists()


def test_agreement_report_needs_a_known_study(capsys):
    with pytest.raises(CommandError, match="No study named 'nope'"):
        call_command("agreement_report", "--study", "nope", "--json")


# -- simulated raters ------------------------------------------------------------------------------------


def boxes(name, count, total=10, size=(10, 10, 30, 30)):
    inside = PartBox(name, *size)
    return [PeakTruth(parts=(inside,) if position < count else (), background=None) for position in range(total)]


def test_true_answer_applies_the_seven_of_ten_rule():
    assert true_answer(boxes("wheel", 7)) == (Answer.PART, "wheel")
    assert true_answer(boxes("wheel", 6)) == (Answer.NO, "")
    # Fewer than ten images: seven tenths of them, rounded up (5 → 4).
    assert true_answer(boxes("wheel", 4, total=5)) == (Answer.PART, "wheel")
    assert true_answer(boxes("wheel", 3, total=5)) == (Answer.NO, "")
    head, eye = PartBox("head", 0, 0, 40, 40), PartBox("eye", 10, 10, 14, 14)
    nested = [PeakTruth(parts=(head, eye), background=None)] * 8 + [PeakTruth(parts=(head,), background=None)] * 2
    assert true_answer(nested) == (Answer.PART, "head")  # head in 10, eye in 8: the more frequent wins
    both = [PeakTruth(parts=(head, eye), background=None)] * 10
    assert true_answer(both) == (Answer.PART, "eye")  # a tie goes to the smaller, more specific part
    grass = [PeakTruth(parts=(), background="grass")] * 7 + [PeakTruth(parts=(), background="sky")] * 3
    assert true_answer(grass) == (Answer.BACKGROUND, "grass")
    mixed = [PeakTruth(parts=(), background="grass")] * 5 + [PeakTruth(parts=(), background="sky")] * 5
    assert true_answer(mixed) == (Answer.NO, "")
    assert PartBox("wheel", 0, 0, 10, 10).contains(9.9, 0) and not PartBox("wheel", 0, 0, 10, 10).contains(10, 5)


def test_simulated_answers_err_at_the_requested_rate():
    rng = np.random.default_rng(0)
    answers = [
        simulated_answer((Answer.PART, "wheel"), error_rate=0.2, rng=rng, wrong_names=["grass"]) for _ in range(4000)
    ]
    wrong = [answer for answer in answers if answer != (Answer.PART, "wheel")]
    assert len(wrong) / len(answers) == pytest.approx(0.2, abs=0.02)
    assert Counter(answer for answer, _ in wrong).keys() == {
        Answer.BACKGROUND,
        Answer.OTHER,
        Answer.NO,
        Answer.NOT_SURE,
    }
    assert all(concept == "" for answer, concept in wrong if answer in (Answer.NO, Answer.NOT_SURE))
    assert all(concept for answer, concept in wrong if answer in (Answer.BACKGROUND, Answer.OTHER))


@pytest.fixture
def probe_study(make_probe_world):
    """A tiny probe world, a seeded network's conv5 and an expert study of it (grids stubbed: not judged here)."""
    from PIL import Image

    from analysis.models import ExemplarKind, ExemplarSet, LayerExtraction
    from analysis.services.grids import store_grid
    from annotation.expert.services import study_create
    from tests.test_expert_study import make_experts
    from tests.worlds import extraction_run, seeded_network

    make_probe_world("expert-tiny", n_images=42, size=64, seed=5)
    seeded_network(name="expert-seeded", input_size=(64, 64))
    run = extraction_run(network="expert-seeded", dataset="expert-tiny", layers=["conv5"], batch_size=8)
    ExemplarSet.objects.filter(kind=ExemplarKind.TOP_CLASS).update(
        grid=store_grid(Image.new("RGB", (64, 26)), style=ExemplarKind.TOP_CLASS)
    )
    extraction = LayerExtraction.objects.get(run=run)
    return study_create(name="probe", extraction=extraction, experts=make_experts(2), object_classes=["car", "bird"])


def test_simulate_annotators_answer_from_the_probe_worlds_truth(probe_study, capsys):
    from annotation.expert.simulation import study_ground_truth

    truth = study_ground_truth(probe_study)
    assert len(truth) == probe_study.tasks.count() == 2 * 128
    counts = Counter(answer for answer, _ in truth.values())
    assert counts[Answer.NO] > 0 and counts[Answer.PART] + counts[Answer.BACKGROUND] > 0, counts
    from analysis.engine.probe_world import BACKGROUND_MATERIALS, CLASS_PARTS

    for task in probe_study.tasks.select_related("object_class"):
        answer, concept = truth[task.pk]
        if answer == Answer.PART:
            assert concept in CLASS_PARTS[task.object_class.name]
        elif answer == Answer.BACKGROUND:
            assert concept in BACKGROUND_MATERIALS

    call_command("simulate_annotators", "--study", str(probe_study.pk), "--error-rate", "0", "--seed", "1")
    assert "2 simulated raters (error rate 0.0, seed 1) gave 512 new judgments" in capsys.readouterr().out
    assert Judgment.objects.filter(simulated=True, origin="simulated").count() == 512
    simulated = Judgment.objects.filter(rater__name="simulated-1")
    assert {
        task: (answer, concept) for task, answer, concept in simulated.values_list("task", "answer", "concept")
    } == truth
    # Left out of reports unless asked; asked, two error-free raters agree perfectly.
    assert report(capsys, "--study", "probe")["n_items"] == 0
    only = report(capsys, "--study", "probe", "--simulated", "only")
    assert only["n_items"] == 256 and only["percent_agreement"]["value"] == 1.0
    assert only["cohen_kappa"]["value"] == pytest.approx(1.0) and only["cohen_kappa"]["ci"] == [1.0, 1.0]
    # Idempotent; more raters with errors disagree sometimes, reproducibly.
    call_command("simulate_annotators", "--study", "probe", "--raters", "4", "--error-rate", "0.3", "--seed", "2")
    assert "gave 512 new judgments" in capsys.readouterr().out
    noisy = Judgment.objects.filter(rater__name="simulated-3")
    wrong = sum(
        truth[task] != (answer, concept) for task, answer, concept in noisy.values_list("task", "answer", "concept")
    )
    assert 0.15 < wrong / 256 < 0.45
    four = report(capsys, "--study", "probe", "--include-simulated")
    assert four["n_raters"] == 4 and four["cohen_kappa"] is None and four["fleiss_kappa"]["value"] < 1.0
    with pytest.raises(CommandError, match="between 0 and 1"):
        call_command("simulate_annotators", "--study", "probe", "--error-rate", "2")
