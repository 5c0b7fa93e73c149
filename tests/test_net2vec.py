"""Net2Vec (Fong & Vedaldi §3.1): the engine on planted data, and the run, its rows and its page on a tiny probe
world."""

from __future__ import annotations

import pytest
import torch
from django.urls import reverse

from analysis.engine.net2vec import (
    ProbeConfig,
    cosine_similarity,
    fit_concept_probes,
    nearest_concepts,
    probe_masks,
    sample_pixels,
    set_iou,
    set_iou_counts,
    weighted_bce,
)

SIZE = 64
INPUT = (112, 112)


# -- engine ---------------------------------------------------------------------------------------------


def planted(seed: int = 1, pixels: int = 16000, units: int = 10):
    """Binary unit masks; the concept is exactly where units 3 and 7 are both on (the linear rule
    u3 + u7 − 1.5 > 0), so no single unit segments it (IoU ≈ 0.4) but a combination does (IoU 1)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(pixels, units, generator=gen) < 0.4
    truth = features[:, 3] & features[:, 7]
    half = pixels // 2
    return features[:half], truth[:half], features[half:], truth[half:]


def test_combination_beats_every_single_filter_and_weights_concentrate_on_the_planted_units():
    train_x, train_y, val_x, val_y = planted()
    probes = fit_concept_probes(train_x, train_y, config=ProbeConfig(epochs=10, top_f=(1, 2, 4)))
    inter, union = set_iou_counts(val_x.T, val_y.unsqueeze(0))
    single = set_iou(inter, union)[0]
    assert single.argmax().item() in (3, 7) and single.max() < 0.45
    masks = probe_masks(val_x, [probes.full, probes.top[1], probes.top[2], probes.top[4]])
    inter, union = set_iou_counts(masks, val_y.unsqueeze(0))
    full, top1, top2, top4 = set_iou(inter, union)[0].tolist()
    assert full > single.max() + 0.2
    assert top2 == 1.0 and top4 > single.max()
    assert probes.top[1].units.item() in (3, 7)  # F = 1 is that unit's own mask again
    assert top1 == pytest.approx(single[probes.top[1].units.item()].item(), abs=1e-12)
    weight = probes.embedding.abs()
    assert set(weight.topk(2).indices.tolist()) == {3, 7}
    assert weight[[3, 7]].min() > 3 * weight[[0, 1, 2, 4, 5, 6, 8, 9]].max()
    assert probes.top[2].units.tolist() == [3, 7]
    assert probes.alpha == pytest.approx(1 - train_y.float().mean().item())


def test_training_is_deterministic_under_a_seed_and_depends_on_it():
    train_x, train_y, _, _ = planted(seed=2, pixels=6000)
    config = ProbeConfig(epochs=3, batch_pixels=512, top_f=(2,), seed=4)
    first = fit_concept_probes(train_x, train_y, config=config)
    again = fit_concept_probes(train_x, train_y, config=config)
    other = fit_concept_probes(train_x, train_y, config=ProbeConfig(epochs=3, batch_pixels=512, top_f=(2,), seed=5))
    assert torch.equal(first.full.weight, again.full.weight) and first.full.bias == again.full.bias
    assert torch.equal(first.top[2].weight, again.top[2].weight)
    assert not torch.equal(first.full.weight, other.full.weight)
    assert torch.equal(sample_pixels(100, 10, seed=1, image=3), sample_pixels(100, 10, seed=1, image=3))
    assert not torch.equal(sample_pixels(100, 10, seed=1, image=3), sample_pixels(100, 10, seed=1, image=4))
    assert sample_pixels(5, 10, seed=0, image=0).tolist() == [0, 1, 2, 3, 4]


def test_set_iou_counts_weighted_loss_and_cosine_by_hand():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    truth = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    inter, union = set_iou_counts(pred, truth)
    assert inter.tolist() == [[1, 0]] and union.tolist() == [[3, 2]]
    assert set_iou(inter, union).tolist() == [[1 / 3, 0.0]]
    logits, target = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    expected = -(0.8 * torch.log(torch.tensor(0.5)) + 0.2 * torch.log(torch.tensor(0.5))) / 2
    assert weighted_bce(logits, target, 0.8).item() == pytest.approx(expected.item())
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    assert cosine_similarity(embeddings)[0, 3].item() == pytest.approx(-1.0)
    assert nearest_concepts(embeddings, 0, 2) == [(1, pytest.approx(2**-0.5)), (2, pytest.approx(0.0))]


def planted_images(seed: int, images: int = 600, units: int = 10):
    """Pooled activations of different scales (unit k spans [0, 0.5·(k + 1)]); concept 0 is present when units 3
    and 7 together are high (x3/max3 + x7/max7 > 1: no single unit separates it, their sum does); concept 1 is
    exactly unit 5 above its median (one unit suffices)."""
    gen = torch.Generator().manual_seed(seed)
    scale = 0.5 * torch.arange(1, units + 1, dtype=torch.float32)
    x = torch.rand(images, units, generator=gen) * scale
    both = x[:, 3] / scale[3] + x[:, 7] / scale[7] > 1.0
    one = x[:, 5] > 0.5 * scale[5]
    return x, torch.stack([both, one], dim=1)


def naive_average_precision(scores, truth):
    """AP by its definition: mean over thresholds t (distinct scores) of precision(t) times the recall gained."""
    pairs = sorted(zip(scores.tolist(), truth.tolist()), key=lambda pair: -pair[0])
    total, ap, previous_recall = sum(truth.tolist()), 0.0, 0.0
    for threshold in sorted({score for score, _ in pairs}, reverse=True):
        kept = [label for score, label in pairs if score >= threshold]
        recall = sum(kept) / total
        ap += (recall - previous_recall) * sum(kept) / len(kept)
        previous_recall = recall
    return ap


def test_classification_combination_beats_single_filter_only_when_the_concept_needs_two_units():
    from analysis.engine.net2vec import ClassifierConfig, average_precision, balanced_accuracy, fit_concept_classifiers

    train_x, train_y = planted_images(seed=3)
    val_x, val_y = planted_images(seed=4)
    fit = fit_concept_classifiers(train_x, train_y, config=ClassifierConfig(epochs=20), top_f=(1, 2, 3))
    full = balanced_accuracy(fit.full.logits(val_x), val_y)
    single = balanced_accuracy(fit.top[1].logits(val_x), val_y)
    pair = balanced_accuracy(fit.top[2].logits(val_x), val_y)
    # concept 0: the single unit (3 or 7) is right ~3/4 of the time, the combination almost always
    assert fit.top_units[1][0].nonzero().flatten().item() in (3, 7)
    assert set(fit.top_units[2][0].nonzero().flatten().tolist()) == {3, 7}
    assert single[0] < 0.85 and full[0] > 0.95 and pair[0] > 0.95 and full[0] > single[0] + 0.1
    # concept 1: unit 5 alone is the concept; the single filter matches the combination
    assert fit.top_units[1][1].nonzero().flatten().tolist() == [5]
    assert single[1] > 0.97 and abs(float(single[1] - full[1])) < 0.03
    ap = average_precision(fit.full.logits(val_x), val_y)
    assert ap[0] > 0.99 and average_precision(fit.top[1].logits(val_x), val_y)[0] < ap[0] - 0.05
    # the embedding is the full classifier's eq. 5 weights on raw inputs: unit 3 and 7 dominate for concept 0, unit 5
    # for concept 1; it is the standardised weight divided by each unit's scale (units span 0.5·(k + 1))
    assert set(fit.embeddings[0].abs().topk(2).indices.tolist()) == {3, 7}
    assert fit.embeddings[1].abs().argmax().item() == 5
    raw = fit.full.weight.to(torch.float64) / fit.full.scale.to(torch.float64)
    assert torch.allclose(fit.embeddings, raw) and not torch.allclose(fit.embeddings, fit.full.weight.to(torch.float64))
    # the top-F ranking reads that raw w, as the paper's |w_k| does (unit 3 spans half of unit 7's range, so its
    # raw weight is about twice as large for the same standardised weight)
    from analysis.engine.net2vec import top_units

    for f in (1, 2, 3):
        assert torch.equal(fit.top_units[f], top_units(fit.embeddings, f))
    assert fit.top_units[1][0].nonzero().flatten().item() == 3


def test_classifier_training_is_deterministic_under_a_seed_and_independent_of_other_concepts():
    from analysis.engine.net2vec import ClassifierConfig, fit_concept_classifiers, train_classifiers

    x, y = planted_images(seed=5, images=200)
    config = ClassifierConfig(epochs=3, seed=7)
    first = fit_concept_classifiers(x, y, config=config, top_f=(1, 2))
    again = fit_concept_classifiers(x, y, config=config, top_f=(1, 2))
    other = fit_concept_classifiers(x, y, config=ClassifierConfig(epochs=3, seed=8), top_f=(1, 2))
    assert torch.equal(first.full.weight, again.full.weight) and torch.equal(first.full.bias, again.full.bias)
    assert torch.equal(first.top[2].weight, again.top[2].weight)
    assert not torch.equal(first.full.weight, other.full.weight)
    # concept 1 alone (its column kept at index 1) trains exactly as alongside concept 0
    alone = train_classifiers(x, y, config=config, owners=torch.tensor([1]))
    assert torch.allclose(alone.weight[0], first.full.weight[1], atol=1e-6)


def test_balanced_accuracy_and_average_precision_by_hand():
    from analysis.engine.net2vec import average_precision, balanced_accuracy

    logits = torch.tensor([[2.0], [0.0], [-1.0], [-3.0], [1.0]])
    truth = torch.tensor([[True], [False], [True], [False], [False]])
    # positives: rows 0, 2 -> predicted (≥ 0) rows 0 and 1 and 4: TPR 1/2, TNR 1/3
    assert balanced_accuracy(logits, truth).item() == pytest.approx((1 / 2 + 1 / 3) / 2)
    # ranking 2.0(+) 1.0(−) 0.0(−) −1.0(+) −3.0(−): AP = 1/2·1 + 1/2·2/4
    assert average_precision(logits, truth).item() == pytest.approx(0.5 + 0.25)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40, 3), generator=gen).float()  # many ties
    labels = torch.rand(40, 3, generator=gen) < 0.4
    expected = [naive_average_precision(scores[:, column], labels[:, column]) for column in range(3)]
    assert average_precision(scores, labels).tolist() == pytest.approx(expected)


# -- service and page -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker, probe_world_files):
    """The tiny probe world and the seeded demo network with its conv5 extraction, built once for the module."""
    from analysis.models import Dataset, Network, Run
    from tests.worlds import extraction_run, probe_world_register, seeded_network

    with django_db_blocker.unblock():
        first_run = (Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
        world = {"n_images": 36, "size": SIZE, "seed": 5}
        probe_world_register(name="tiny-n2v", root=probe_world_files(**world), **world)
        seeded_network(name="seeded-n2v", input_size=INPUT)
        extraction_run(network="seeded-n2v", dataset="tiny-n2v", layers=["conv5"], batch_size=36)
        yield
        Network.objects.filter(name="seeded-n2v").delete()
        Dataset.objects.filter(name="tiny-n2v").delete()
        Run.objects.filter(pk__gte=first_run).delete()


@pytest.fixture(scope="module")
def study(shared_world, django_db_blocker):
    from analysis.models import Net2VecStudy, RunStatus
    from analysis.services.net2vec import net2vec_run_start

    with django_db_blocker.unblock():
        run = net2vec_run_start(
            network="seeded-n2v",
            dataset="tiny-n2v",
            layer="conv5",
            concepts=4,
            epochs=3,
            min_images=2,
            pixels_per_image=64,
            top_f=[1, 4, 1000],
            classification_epochs=3,
            classification_top_f=[1, 2, 1000],
            inline=True,
        )
        assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
        yield Net2VecStudy.objects.get(run=run)


@pytest.mark.django_db
def test_run_stores_one_row_per_concept(study):
    from analysis.models import Net2VecConcept

    rows = list(Net2VecConcept.objects.filter(study=study).select_related("concept"))
    units = study.layer.units
    assert study.n_concepts == len(rows) == 4
    assert study.top_f == [1, 4]  # sizes above the layer's width are dropped
    assert study.n_combination_wins == sum(row.combination_val_iou >= row.single_val_iou for row in rows)
    for row in rows:
        assert row.train_images >= 2 and row.val_images >= 2
        assert 0 <= row.best_unit < units and len(row.embedding) == units
        assert 0 <= row.single_val_iou <= 1 and 0 <= row.combination_val_iou <= 1
        assert 0 <= row.best_unit_train_iou <= 1 and 0 < row.alpha < 1
        assert set(row.top_f_val_iou) == {"1", "4"}
    images = [row.train_images + row.val_images for row in rows]
    assert images == sorted(images, reverse=True)  # the most frequent concepts
    # the "every pixel" baseline recounted from the masks: Σ |L_c| / Σ mask pixels over val images with c
    import numpy as np

    from analysis.engine.broden import BrodenReader

    reader = BrodenReader(study.dataset.root)
    val = [(entry, reader.load_segmentation(entry)) for entry in reader.rows() if entry.split == "val"]
    for row in rows:
        hits = [
            (
                entry.sh * entry.sw,
                int(
                    np.any(
                        np.stack(
                            [layer == row.concept.number for category in masks.values() for layer in category.layers]
                        ),
                        axis=0,
                    ).sum()
                ),
            )
            for entry, masks in val
        ]
        hits = [(size, count) for size, count in hits if count]
        assert len(hits) == row.val_images
        assert row.all_pixels_val_iou == pytest.approx(sum(c for _, c in hits) / sum(size for size, _ in hits))


def bilinear_matrix(out_len: int, in_len: int):
    """``[out, in]`` weights of 1-D linear interpolation with half-pixel centres (align_corners=False): a resize of
    a grid ``G`` is ``Wy @ G @ Wx.T``, written from the formula (no torch)."""
    import numpy as np

    weights = np.zeros((out_len, in_len))
    for i in range(out_len):
        position = max((i + 0.5) * in_len / out_len - 0.5, 0.0)
        low = min(int(np.floor(position)), in_len - 1)
        high = min(low + 1, in_len - 1)
        weights[i, low] += 1 - (position - low)
        weights[i, high] += position - low
    return weights


@pytest.mark.django_db
def test_single_filters_and_exemplars_follow_the_papers_mask_rule_recounted_independently(study):
    """§3.1.1 recounted with numpy from the cache and the Broden masks: M_k = S(A_k > T_k) ≥ ½ (threshold on the map,
    strict, plain bilinear); the stored val set IoU of each concept's best unit is its Σ∩ / Σ∪ over the val images
    holding the concept, and the stored non-extremal exemplars are the deciles of the non-zero IoU_ind (eq. 3)."""
    import numpy as np

    from analysis.engine.broden import BrodenReader
    from analysis.engine.net2vec import nonextremal_exemplars
    from analysis.services.extraction import open_activation_cache
    from analysis.services.inputs import unit_thresholds

    assert study.params["mask_rule"] == "net2vec" and study.upsample == "plain"
    maps = np.asarray(open_activation_cache(study.extraction), dtype=np.float32)
    thresholds = unit_thresholds(study.extraction, study.layer).numpy()
    reader = BrodenReader(study.dataset.root_dir)
    val = [(position, entry) for position, entry in enumerate(reader.rows()) if entry.split == "val"]
    segmentations = {position: reader.load_segmentation(entry) for position, entry in val}
    for row in study.concept_results.select_related("concept"):
        k, number = row.best_unit, row.concept.number
        rows, ious, inter_sum, union_sum = [], [], 0, 0
        for position, _ in val:
            layers = [layer for category in segmentations[position].values() for layer in category.layers]
            truth = np.any(np.stack([layer == number for layer in layers]), axis=0)
            if not truth.any():
                continue
            grid = (maps[position, k] > thresholds[k]).astype(np.float64)
            rows_weights, columns_weights = (bilinear_matrix(truth.shape[axis], grid.shape[axis]) for axis in (0, 1))
            up = rows_weights @ grid @ columns_weights.T
            mask = up >= 0.5 - 1e-9
            inter, union = int((mask & truth).sum()), int((mask | truth).sum())
            rows.append(position)
            ious.append(inter / union)
            inter_sum, union_sum = inter_sum + inter, union_sum + union
        assert row.val_images == len(rows)
        assert row.single_val_iou == pytest.approx(inter_sum / union_sum, abs=1e-12)
        expected = nonextremal_exemplars(torch.tensor(rows), torch.tensor(ious, dtype=torch.float64))
        single = row.exemplars["single"]
        assert (single["rows"], single["images"], single["zero"]) == (expected["rows"], len(rows), expected["zero"])
        assert single["ious"] == pytest.approx(expected["ious"], abs=1e-12)
        combination = row.exemplars["combination"]
        assert combination["images"] == len(rows) and len(combination["rows"]) == min(
            10, len(rows) - combination["zero"]
        )
        assert set(combination["rows"]) <= set(rows)


@pytest.mark.django_db
def test_the_export_holds_every_probe_and_its_weights(study, tmp_path):
    import csv
    import json

    import numpy as np

    from analysis.services.exports import run_export

    files = {path.name: path for path in run_export(run=study.run, out_dir=tmp_path)}
    assert set(files) == {
        "segmentation.csv",
        "segmentation_weights.npz",
        "classification.csv",
        "classification_weights.npz",
        "run.json",
    }
    stored = {row.concept.name: row for row in study.concept_results.select_related("concept")}
    with open(files["segmentation.csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["concept"] for row in rows] == sorted(stored)
    for row in rows:
        concept = stored[row["concept"]]
        assert (int(row["best_unit"]), float(row["combination_val_iou"]), float(row["top4_val_iou"])) == (
            concept.best_unit,
            concept.combination_val_iou,
            concept.top_f_val_iou["4"],
        )
    with np.load(files["segmentation_weights.npz"]) as weights:
        assert weights["weight"].shape == (len(rows), study.layer.units)
        assert list(weights["concepts"]) == [row["concept"] for row in rows]
        np.testing.assert_array_equal(weights["weight"][-1], np.float32(stored[rows[-1]["concept"]].embedding))
    classifiers = {row.concept.name: row for row in study.classifications.select_related("concept")}
    with open(files["classification.csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["concept"] for row in rows] == sorted(classifiers)
    assert all(float(row["top2_val_ap"]) == classifiers[row["concept"]].top_f_val_ap["2"] for row in rows)
    with np.load(files["classification_weights.npz"]) as weights:
        np.testing.assert_array_equal(weights["weight"][0], np.float32(classifiers[rows[0]["concept"]].embedding))
        np.testing.assert_array_equal(
            weights["standardized_weight"][0], np.float32(classifiers[rows[0]["concept"]].standardized_weight)
        )
        np.testing.assert_array_equal(weights["bias"], np.float32([classifiers[row["concept"]].bias for row in rows]))
    meta = json.loads(files["run.json"].read_text())
    assert (meta["run"], meta["layer"], meta["segmentation_concepts"]) == (study.run_id, "conv5", len(stored))


@pytest.mark.django_db
def test_classification_rows_match_a_naive_recount_and_their_stored_classifiers(study):
    """Presence counts recounted image by image from the Broden files; the stored combination's balanced val accuracy
    recomputed from its raw eq. 5 weights and the activation cache; F = 1 is the unit of largest |w|."""
    import numpy as np

    from analysis.engine.broden import BrodenReader
    from analysis.engine.net2vec import balanced_accuracy
    from analysis.models import Net2VecClassification
    from analysis.services.extraction import open_activation_cache

    rows = list(Net2VecClassification.objects.filter(study=study).select_related("concept"))
    assert study.n_classification_concepts == len(rows) > 0
    assert study.classification_top_f == [1, 2]
    assert study.n_classification_wins == sum(row.combination_val_accuracy >= row.single_val_accuracy for row in rows)
    reader = BrodenReader(study.dataset.root)
    index = list(reader.rows())
    labels_of = []
    for entry in index:
        present = set()
        for category in reader.load_segmentation(entry).values():
            present |= set(np.unique(category.layers).tolist()) | {int(label) for label in category.image_labels}
        labels_of.append(present - {0})
    maps = open_activation_cache(study.extraction)
    pooled = torch.from_numpy(np.asarray(maps, dtype=np.float32).mean(axis=(2, 3)))
    val = [position for position, entry in enumerate(index) if entry.split == "val"]
    for row in rows:
        number = row.concept.number
        count = {
            split: sum(number in labels_of[position] for position, entry in enumerate(index) if entry.split == split)
            for split in ("train", "val")
        }
        assert (row.train_positives, row.val_positives) == (count["train"], count["val"])
        assert row.train_negatives == sum(entry.split == "train" for entry in index) - count["train"]
        assert min(row.train_positives, row.train_negatives, row.val_positives, row.val_negatives) >= 2
        # the embedding is eq. 5's raw w: with b it reproduces the stored accuracy on raw pooled activations
        logits = pooled[val].to(torch.float64) @ torch.tensor(row.embedding, dtype=torch.float64) + row.bias
        truth = torch.tensor([number in labels_of[position] for position in val])
        assert balanced_accuracy(logits.unsqueeze(1), truth.unsqueeze(1)).item() == pytest.approx(
            row.combination_val_accuracy, abs=1e-6
        )
        assert row.single_unit == int(torch.tensor(row.embedding).abs().argmax())
        assert set(row.top_f_val_accuracy) == {"1", "2"} and row.top_f_val_accuracy["1"] == row.single_val_accuracy
        assert 0 <= row.single_val_ap <= 1 and 0 <= row.combination_val_ap <= 1
    assert {row.concept.category for row in rows} >= {"scene"}  # whole-image labels are classified too


@pytest.mark.django_db
def test_page_renders_for_researchers_and_refuses_experts(study, client, make_user):
    from analysis.models import Net2VecConcept

    url = reverse("analysis:layer_net2vec", args=["seeded-n2v", "conv5"])
    client.force_login(make_user("rita", "researcher"))
    response = client.get(url)
    assert response.status_code == 200
    text = response.content.decode()
    assert "combination" in text and "Classification" in text and text.count("<svg") >= 3
    assert f"{study.classification_share:.1f}%" in text and f"{study.combination_share:.1f}%" in text
    # the study probed 4 concepts, not all: the page says the table covers a subset and how it was chosen
    assert "<strong>a subset</strong> — the 4 most frequent" in text and "Non-extremal exemplars" in text
    row = study.concept_results.first()
    assert reverse("analysis:dataset_image", args=[study.dataset.name, row.exemplars["single"]["rows"][0]]) in text
    for classified in study.classifications.select_related("concept"):
        assert classified.concept.name in text
    assert client.get(url, {"run": 999999}).status_code == 404
    embeddings = reverse("analysis:layer_net2vec_embeddings", args=["seeded-n2v", "conv5"])
    assert embeddings.encode() in response.content
    row = Net2VecConcept.objects.filter(study=study).select_related("concept").last()
    response = client.get(embeddings, {"run": study.run_id, "concept": row.concept.number})
    assert response.status_code == 200 and "Nearest concepts to" in response.content.decode()
    assert row.concept.name in response.content.decode()
    assert client.get(embeddings, {"run": study.run_id, "concept": 99999}).status_code == 404
    network_page = client.get(reverse("analysis:network_net2vec", args=["seeded-n2v"]))
    assert network_page.status_code == 200 and url.encode() in network_page.content
    assert f"{study.classification_share:.1f}%" in network_page.content.decode()
    layer_page = client.get(reverse("analysis:layer_dissection", args=["seeded-n2v", "conv5"]))
    assert layer_page.status_code == 200 and url.encode() in layer_page.content
    client.force_login(make_user("eve", "expert"))
    assert client.get(url).status_code == 403


def test_demo_runs_net2vec_on_conv3_to_conv5_after_the_extraction():
    from analysis.services.demo import DEMO_LAYERS, DemoSize, demo_steps

    steps = demo_steps(DemoSize())
    kinds = [step.kind for step in steps]
    net2vec = [step for step in steps if step.kind == "net2vec"]
    assert [step.params()["layer"] for step in net2vec] == DEMO_LAYERS == ["conv3", "conv4", "conv5"]
    assert all(kinds.index("extract") < kinds.index("net2vec") for _ in net2vec)
    params = net2vec[0].params()
    assert params["network"] == DemoSize().network and params["dataset"] == DemoSize().dataset
    assert params["classification"] and params["standardize"]
    # every eligible concept (the paper's rule), 30 epochs, the paper's mask rule
    assert (params["concepts"], params["epochs"], params["mask_rule"]) == (0, 30, "net2vec")
    assert (params["upsample"], params["strict_threshold"]) == ("plain", True)
