"""Part detection engine (GG'18 §3.1): VOC AP against a straightforward devkit-style implementation, the
precomputed matching against both, box regression on synthetic activations, NMS against a naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from analysis.engine.genetic import GAConfig
from analysis.engine.part_detection import (
    DetectionConfig,
    DetectionMatching,
    apply_box_regressors,
    average_precision,
    best_ground_truth,
    boxes_to_image,
    boxes_to_view,
    context_frame,
    fit_box_regressors,
    fit_part_regressors,
    grouped_nms,
    local_maxima,
    location_prior_score,
    neighbourhood_features,
    part_size,
    regression_pairs,
    score_part,
)
from analysis.engine.receptive_field import unit_centers
from tests.devices import cpu_and_cuda

DEVICES = cpu_and_cuda()


def naive_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def naive_voc_ap(dets, gts, threshold=0.4):
    """The VOC devkit (VOCevaldet + VOCap, 2010+) written out plainly: dets = [(image, score, box)] in input
    order, sorted stably by score; gts = [(image, box)]."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])  # Python's sort is stable
    taken = [False] * len(gts)
    tp, fp = [], []
    for i in order:
        image, _, box = dets[i]
        best, best_j = -1.0, -1
        for j, (gt_image, gt_box) in enumerate(gts):
            if gt_image != image:
                continue
            overlap = naive_iou(box, gt_box)
            if overlap > best:
                best, best_j = overlap, j
        if best >= threshold and not taken[best_j]:
            taken[best_j] = True
            tp.append(1)
            fp.append(0)
        else:
            tp.append(0)
            fp.append(1)
    if not gts:
        return 0.0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(fp)
    rec = ctp / len(gts)
    prec = ctp / np.maximum(ctp + cfp, 1e-300)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def random_problem(seed, n_images=6, n_gt=10, n_det=60, n_filters=4):
    rng = np.random.default_rng(seed)
    gt_image = rng.integers(0, n_images, n_gt)
    xy = rng.uniform(0, 40, (n_gt, 2))
    wh = rng.uniform(5, 20, (n_gt, 2))
    gt = np.concatenate([xy, xy + wh], 1)
    det_image = rng.integers(0, n_images, n_det)
    # half of the detections jitter a ground-truth box of their image (if any), the rest are random
    det = np.zeros((n_det, 4))
    for k in range(n_det):
        same = np.flatnonzero(gt_image == det_image[k])
        if len(same) and rng.random() < 0.6:
            det[k] = gt[rng.choice(same)] + rng.normal(0, 2.5, 4)
        else:
            p = rng.uniform(0, 40, 2)
            det[k] = np.concatenate([p, p + rng.uniform(5, 20, 2)])
    det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 0.5)
    score = rng.choice([0.1, 0.5, 0.9, 1.3], n_det) if seed % 2 else rng.random(n_det)  # ties on odd seeds
    det_filter = rng.integers(0, n_filters, n_det)
    return gt, gt_image, det, det_image, score, det_filter


def engine_ap(det, det_image, score, gt, gt_image, device="cpu"):
    return average_precision(*(torch.tensor(value, device=device) for value in (det, score, det_image, gt, gt_image)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_ap_equals_the_devkit_on_random_detections(seed, device):
    gt, gt_image, det, det_image, score, _ = random_problem(seed)
    expected = naive_voc_ap(
        [(det_image[k], score[k], det[k]) for k in range(len(det))], [(gt_image[j], gt[j]) for j in range(len(gt))]
    )
    ap, recall = engine_ap(det, det_image, score, gt, gt_image, device)
    assert ap == pytest.approx(expected, abs=1e-12)
    assert expected > 0.05  # the case is not trivial
    assert 0 < recall <= 1


@pytest.mark.parametrize("seed", range(6))
def test_precomputed_matching_equals_the_devkit_for_every_union(seed):
    gt, gt_image, det, det_image, score, det_filter = random_problem(seed, n_det=80)
    best = best_ground_truth(
        torch.tensor(det), torch.tensor(det_image), torch.tensor(gt), torch.tensor(gt_image), 0.4
    ).numpy()
    matching = DetectionMatching(det_filter, score, best, len(gt), 4)
    looping = DetectionMatching(det_filter, score, best, len(gt), 4, max_table_cells=0)  # no table: binary searches
    for bits in range(1, 16):
        chosen = np.array([(bits >> f) & 1 for f in range(4)], dtype=bool)
        picked = np.flatnonzero(chosen[det_filter])  # the union in input order
        expected = naive_voc_ap(
            [(det_image[k], score[k], det[k]) for k in picked], [(gt_image[j], gt[j]) for j in range(len(gt))]
        )
        assert matching.ap(chosen)[0] == pytest.approx(expected, abs=1e-12)
        assert looping.ap(chosen) == matching.ap(chosen)
        assert engine_ap(det[picked], det_image[picked], score[picked], gt, gt_image)[0] == pytest.approx(expected)


def test_hand_made_cases():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]])
    gt_image = np.array([0, 0])
    # a perfect hit, its duplicate (lower score), a miss, the second box found last
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60], [20, 20, 30, 30.0]])
    score = np.array([0.9, 0.8, 0.7, 0.6])
    ap, recall = engine_ap(det, np.zeros(4, int), score, gt, gt_image)
    # precision at the two hits: 1/1 and 2/4 -> AP = 0.5 * 1 + 0.5 * 0.5
    assert ap == pytest.approx(0.75)
    assert recall == 1.0
    # the duplicate scored above the true hit: the first (IoU 0.9) takes the box, the exact one is a duplicate
    ap, _ = engine_ap(det, np.zeros(4, int), np.array([0.8, 0.9, 0.7, 0.6]), gt, gt_image)
    assert ap == pytest.approx(0.75)
    # ties in score keep input order: the miss first, then the hit -> precision 1/2 at recall 1/2
    ap, _ = engine_ap(det[[2, 0]], np.zeros(2, int), np.array([0.5, 0.5]), gt, gt_image)
    assert ap == pytest.approx(0.25)
    # IoU exactly 0.4 counts; misses only give 0; a detection in another image never matches
    edge = np.array([[0, 0, 4, 10.0]])
    assert engine_ap(edge, np.zeros(1, int), np.ones(1), gt[:1], gt_image[:1])[0] == pytest.approx(1.0)
    assert engine_ap(det[[2]], np.zeros(1, int), np.ones(1), gt, gt_image) == (0.0, 0.0)
    assert engine_ap(det[[0]], np.ones(1, int), np.ones(1), gt, gt_image) == (0.0, 0.0)


def test_regression_recovers_a_known_affine_offset():
    """Activations whose part box is the receptive-field centre shifted by an affine function of the
    neighbourhood: the weighted least squares finds it, and applying it reproduces the boxes."""
    gen = torch.Generator().manual_seed(0)
    views, h, w = 40, 7, 7
    maps = torch.rand((views, 2, h, w), generator=gen) * 3
    cy = 4.0 + 8.0 * torch.arange(h, dtype=torch.float32)
    cx = 4.0 + 8.0 * torch.arange(w, dtype=torch.float32)
    view = torch.arange(views).repeat_interleave(h * w)
    row = torch.arange(h).repeat_interleave(w).repeat(views)
    col = torch.arange(w).repeat(h).repeat(views)
    true_w = torch.zeros(12, 4, dtype=torch.float64)
    true_w[11] = torch.tensor([3.0, -2.0, 12.0, 20.0])  # constant offsets and sizes
    true_w[0, 0] = 0.05  # d_x grows with c_x
    true_w[6, 2] = 1.5  # width grows with the centre activation
    true_w[3, 3] = -0.5  # height shrinks with the activation above
    for f in range(2):
        feats = neighbourhood_features(maps, view, torch.full_like(view, f), row, col, cy, cx)
        design = torch.cat([feats.double(), torch.ones(len(feats), 1, dtype=torch.float64)], 1)
        targets = design @ true_w
        weights, fitted = fit_box_regressors(feats[None], maps[view, f, row, col][None], targets)
        assert bool(fitted.all())
        assert torch.allclose(weights[0], true_w, atol=1e-3)
        boxes = apply_box_regressors(weights, fitted, torch.zeros(len(feats), dtype=torch.int64), feats, (16, 16))
        centre_x = feats[:, 0].double() + targets[:, 0]
        assert torch.allclose((boxes[:, 0] + boxes[:, 2]).double() / 2, centre_x, atol=1e-3)
        assert torch.allclose((boxes[:, 2] - boxes[:, 0]).double(), targets[:, 2].clamp_min(1), atol=1e-3)


def test_regression_pairs_and_unfitted_filters_keep_receptive_fields():
    cy = torch.tensor([2.0, 6.0, 10.0])
    cx = torch.tensor([2.0, 6.0, 10.0])
    gt = torch.tensor([[0.0, 0.0, 6.0, 7.0]])  # x in [0, 6) holds column 0 only; y in [0, 7) rows 0, 1
    _box, row, col = regression_pairs(cy, cx, gt, torch.tensor([0]))
    assert sorted(zip(row.tolist(), col.tolist())) == [(0, 0), (1, 0)]
    feats = torch.zeros(1, 2, 11)
    weights, fitted = fit_box_regressors(feats, torch.zeros(1, 2), torch.ones(2, 4))
    assert not bool(fitted[0])
    boxes = apply_box_regressors(
        weights, fitted, torch.tensor([0]), torch.tensor([[6.0, 2.0] + [0.0] * 9]), (8, 4), frame=(12, 12)
    )
    assert boxes.tolist() == [[4.0, 0.0, 8.0, 6.0]]


def naive_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(naive_iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(i)
    return sorted(keep)


def felzenszwalb_nms(boxes, scores, threshold=0.5):
    """Felzenszwalb et al.'s ``nms.m`` (voc-release) transcribed: sort by score, keep the best remaining box,
    drop every other box whose overlap with it, intersection / *that other box's* area, exceeds ``threshold``.
    (``nms.m`` counts pixels inclusively, ``+1``; our boxes are continuous, so areas are plain products.)"""
    remaining = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    while remaining:
        i = remaining.pop(0)
        keep.append(i)
        survivors = []
        for j in remaining:
            iw = max(0.0, min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0]))
            ih = max(0.0, min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1]))
            area_j = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            if not (area_j > 0 and iw * ih / area_j > threshold):
                survivors.append(j)
        remaining = survivors
    return sorted(keep)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_grouped_nms_area_rule_matches_felzenszwalbs_nms(seed, device):
    rng = np.random.default_rng(100 + seed)
    n = 250
    xy = rng.uniform(0, 30, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 15, (n, 2))], 1)
    scores = rng.random(n)
    groups = rng.integers(0, 20, n)
    kept = grouped_nms(
        torch.tensor(boxes, device=device),
        torch.tensor(scores, device=device),
        torch.tensor(groups, device=device),
        0.5,
        "suppressed_area",
        max_cells=400,
    ).tolist()
    expected = []
    for g in range(20):
        members = np.flatnonzero(groups == g)
        expected += members[felzenszwalb_nms(boxes[members].tolist(), scores[members].tolist())].tolist()
    assert kept == sorted(expected)


def test_area_rule_drops_a_box_nested_in_a_kept_one_which_iou_keeps():
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [2.0, 2.0, 8.0, 8.0]])  # IoU 0.09, inside: 100% of its area
    scores = torch.tensor([0.9, 0.8])
    groups = torch.zeros(2, dtype=torch.int64)
    assert grouped_nms(boxes, scores, groups, 0.5, "suppressed_area").tolist() == [0]
    assert grouped_nms(boxes, scores, groups, 0.3, "iou").tolist() == [0, 1]
    # The measure is asymmetric: a big box under a small kept one is not suppressed.
    assert grouped_nms(boxes, torch.tensor([0.8, 0.9]), groups, 0.5, "suppressed_area").tolist() == [0, 1]
    with pytest.raises(ValueError):
        grouped_nms(boxes, scores, groups, 0.5, "overlap")


def _planted_part_views(rng, n_views: int, fixed: bool, size: int = 64):
    """Views of ``size`` px with one 16-px part box each: always at the same place (``fixed``), or anywhere."""
    boxes = []
    for _ in range(n_views):
        x, y = (20.0, 36.0) if fixed else (float(rng.uniform(0, size - 16)), float(rng.uniform(0, size - 16)))
        boxes.append([x, y, x + 16, y + 16])
    return torch.tensor(boxes, dtype=torch.float32), torch.arange(n_views)


def test_location_prior_is_high_for_parts_at_fixed_places_and_low_for_parts_anywhere():
    rng = np.random.default_rng(0)
    cy = cx = 4.0 + 8.0 * torch.arange(8, dtype=torch.float32)  # stride 8, 8x8 map on 64 px
    fixed = location_prior_score(60, cy, cx, *_planted_part_views(rng, 60, True), rf_size=(20, 20), input_size=(64, 64))
    anywhere = location_prior_score(
        60, cy, cx, *_planted_part_views(rng, 60, False), rf_size=(20, 20), input_size=(64, 64)
    )
    assert fixed.ap > 0.95 and fixed.recall == 1.0  # the floor finds a part that never moves, blind
    assert anywhere.ap < 0.3
    assert fixed.prior.shape == (8, 8) and fixed.prior.max() == 1.0


def naive_location_prior_ap(n_views, cy, cx, gt_boxes, gt_view, threshold=0.5, iou=0.4):
    """The floor written out plainly: prior per position from loops, boxes from numpy's lstsq on (c_x, c_y, 1),
    Felzenszwalb NMS per view, then the devkit AP."""
    cy, cx = cy.tolist(), cx.tolist()
    inside = np.zeros((n_views, len(cy), len(cx)), bool)
    rows, targets = [], []
    for (x1, y1, x2, y2), v in zip(gt_boxes.tolist(), gt_view.tolist()):
        for i, y in enumerate(cy):
            for j, x in enumerate(cx):
                if x1 <= x < x2 and y1 <= y < y2:
                    inside[v, i, j] = True
                    rows.append([x, y, 1.0])
                    targets.append([(x1 + x2) / 2 - x, (y1 + y2) / 2 - y, x2 - x1, y2 - y1])
    prior = inside.mean(axis=0)
    weights = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]
    dets = []
    for v in range(n_views):
        boxes, scores = [], []
        for i, y in enumerate(cy):
            for j, x in enumerate(cx):
                dx, dy, w, h = np.array([x, y, 1.0]) @ weights
                box = [
                    min(max(x + dx - w / 2, 0), 64),
                    min(max(y + dy - h / 2, 0), 64),
                    min(max(x + dx + w / 2, 0), 64),
                    min(max(y + dy + h / 2, 0), 64),
                ]
                boxes.append(box)
                scores.append(float(np.float32(prior[i, j])))
        for k in felzenszwalb_nms(boxes, scores, threshold):
            if scores[k] > 0:
                dets.append((v, scores[k], boxes[k]))
    return naive_voc_ap(dets, list(zip(gt_view.tolist(), gt_boxes.tolist())), iou)


@pytest.mark.parametrize("seed", range(3))
def test_location_prior_matches_a_plain_implementation(seed):
    rng = np.random.default_rng(seed)
    n_views = 12
    boxes = []
    for _ in range(n_views):  # parts near one place, jittered, so the prior is graded
        x, y = 20 + float(rng.normal(0, 6)), 30 + float(rng.normal(0, 6))
        boxes.append([max(x, 0.0), max(y, 0.0), min(x + 14, 64.0), min(y + 18, 64.0)])
    gt_boxes, gt_view = torch.tensor(boxes, dtype=torch.float32), torch.arange(n_views)
    cy = cx = 4.0 + 8.0 * torch.arange(8, dtype=torch.float32)
    ours = location_prior_score(
        n_views, cy, cx, gt_boxes, gt_view, rf_size=(20, 20), input_size=(64, 64), config=DetectionConfig(ridge=0.0)
    )
    assert ours.ap == pytest.approx(naive_location_prior_ap(n_views, cy, cx, gt_boxes, gt_view), abs=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_grouped_nms_matches_a_naive_loop_and_torchvision(seed, device):
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 30, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(4, 15, (n, 2))], 1)
    scores = rng.random(n)
    groups = rng.integers(0, 25, n)
    kept = grouped_nms(
        torch.tensor(boxes, device=device),
        torch.tensor(scores, device=device),
        torch.tensor(groups, device=device),
        0.3,
        max_cells=500,
    ).tolist()
    expected = []
    for g in range(25):
        members = np.flatnonzero(groups == g)
        expected += members[naive_nms(boxes[members].tolist(), scores[members].tolist(), 0.3)].tolist()
        tv = nms(torch.tensor(boxes[members]), torch.tensor(scores[members]), 0.3)
        assert sorted(members[tv.numpy()].tolist()) == sorted(
            members[naive_nms(boxes[members].tolist(), scores[members].tolist(), 0.3)].tolist()
        )
    assert kept == sorted(expected)


def test_local_maxima():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 1] = 2.0
    maps[0, 0, 1, 2] = 1.0
    maps[0, 0, 3, 3] = 0.5
    peaks = local_maxima(maps)
    assert list(zip(peaks.filter.tolist(), peaks.row.tolist(), peaks.col.tolist())) == [(0, 1, 1), (0, 3, 3)]
    assert peaks.score.tolist() == [2.0, 0.5]
    assert len(local_maxima(maps, include_zero_peaks=True)) > 2  # the flat zero filter becomes all peaks


# -- one part class over its views (the maths the score_parts run drives) -----------------------------------------


def test_boxes_move_between_image_and_view_pixels_and_back():
    frames = np.array([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 64.0, 32.0]])
    boxes = np.array([[30.0, 60.0, 40.0, 80.0], [16.0, 8.0, 32.0, 16.0]])
    in_view = boxes_to_view(boxes, frames, (64, 32))  # input (H, W) = (64, 32)
    assert in_view[0].tolist() == pytest.approx([(30 - 10) * 32 / 40, (60 - 20) * 64 / 80, 24.0, 48.0])
    assert in_view[1].tolist() == pytest.approx([8.0, 16.0, 16.0, 32.0])
    np.testing.assert_allclose(boxes_to_image(in_view, frames, (64, 32)), boxes)
    assert context_frame((10.0, 20.0, 110.0, 70.0), 0.25) == pytest.approx((-40.0, -5.0, 160.0, 95.0))
    mean_size, relative = part_size([[0, 0, 4, 2], [0, 0, 2, 2]], [[0, 0, 10, 10]])
    assert mean_size == pytest.approx((3 + 2) / 2) and relative == pytest.approx((8 + 4) / 2 / 100)


def _planted_views():
    """4 views of 6x6 maps of 3 filters; filter 1 peaks at the unit whose receptive field is the part's box."""
    from analysis.engine.receptive_field import LayerGeometry

    geometry = LayerGeometry(size=(8, 8), stride=(8, 8), offset=(4.0, 4.0))  # unit (i, j) covers [8i, 8i + 8)
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 3, 6, 6, generator=g) * 0.5
    gt_boxes, gt_view = [], []
    for view, (i, j) in enumerate([(1, 2), (4, 4), (0, 5), (3, 1)]):
        maps[view, 1, i, j] = 5.0
        gt_boxes.append([8.0 * j, 8.0 * i, 8.0 * j + 8, 8.0 * i + 8])
        gt_view.append(view)
    return maps, geometry, torch.tensor(gt_boxes), torch.tensor(gt_view)


def test_score_part_finds_the_planted_filter_and_its_aps_agree_with_the_from_scratch_ap():
    maps, geometry, gt_boxes, gt_view = _planted_views()
    config = DetectionConfig(regression=False)
    scored = score_part(
        maps,
        geometry,
        gt_boxes,
        gt_view,
        rf_size=geometry.size,
        input_size=(48, 48),
        config=config,
        ga=GAConfig(population=10, generations=3),
    )
    assert scored.best_filter == 1 and scored.single_ap[1] == pytest.approx(1.0) and scored.ga_ap >= 1.0 - 1e-12
    mine = scored.det_filter == 1
    assert np.allclose(scored.det_box[mine][:, 2] - scored.det_box[mine][:, 0], 8.0)  # unregressed: RF boxes
    for f in range(3):
        chosen = scored.det_filter == f
        ap, _ = average_precision(
            torch.from_numpy(scored.det_box[chosen]),
            torch.from_numpy(scored.det_score[chosen]),
            torch.from_numpy(scored.det_view[chosen]),
            gt_boxes,
            gt_view,
            0.4,
        )
        assert scored.single_ap[f] == pytest.approx(ap)
    ap_all, _ = average_precision(
        torch.from_numpy(scored.det_box),
        torch.from_numpy(scored.det_score),
        torch.from_numpy(scored.det_view),
        gt_boxes,
        gt_view,
        0.4,
    )
    assert scored.all_ap == pytest.approx(ap_all)
    summary = scored.summary()
    assert summary["n_detections"] == len(scored.det_filter) and summary["best_ap"] == pytest.approx(1.0)
    assert set(scored.curves) == {"filter 1", "filter 0", "filter 2", "GA combination", "TopFilters"}


def test_part_regressors_learn_a_constant_offset_and_size():
    maps, geometry, gt_boxes, gt_view = _planted_views()
    shifted = gt_boxes + torch.tensor([2.0, 1.0, 6.0, 5.0])  # centre +4, +3 from the RF centre; size 12 x 12
    cy, cx = unit_centers(geometry, 6, 6, device="cpu")
    _weights, fitted = fit_part_regressors(maps, cy, cx, shifted, gt_view)
    assert fitted.all()
    scored = score_part(
        maps,
        geometry,
        shifted,
        gt_view,
        rf_size=geometry.size,
        input_size=(48, 48),
        config=DetectionConfig(),
        ga=GAConfig(population=10, generations=2),
    )
    top = scored.det_filter == 1
    best = np.argmax(np.where(top, scored.det_score, -np.inf))
    assert scored.det_gt[best] >= 0 and scored.single_ap[1] == pytest.approx(1.0)


def test_score_part_reads_views_a_chunk_at_a_time_from_a_memory_map_with_the_same_result(tmp_path):
    """Bounded memory: the maps can be a memory map read a few views at a time. The detections, their order and
    every AP are those of the whole stack at once; the regressors differ only in the sums' order."""
    from analysis.engine.receptive_field import LayerGeometry

    geometry = LayerGeometry(size=(12, 12), stride=(4, 4), offset=(2.0, 2.0))
    g = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(23, 6, 9, 9, generator=g))
    gt_view = torch.arange(23).repeat_interleave(2)[:40]
    corner = torch.randint(0, 24, (40, 2), generator=g).to(torch.float32)
    gt_boxes = torch.cat([corner, corner + 10 + torch.rand(40, 2, generator=g) * 6], dim=1)
    stored = np.lib.format.open_memmap(tmp_path / "maps.npy", mode="w+", dtype=np.float32, shape=tuple(maps.shape))
    stored[:] = maps.numpy()
    kwargs = dict(rf_size=geometry.size, input_size=(36, 36), ga=GAConfig(population=12, generations=4, seed=1))
    whole = score_part(maps, geometry, gt_boxes, gt_view, view_chunk=23, **kwargs)
    cy, cx = unit_centers(geometry, 9, 9, device="cpu")
    reference_w, reference_fitted = fit_part_regressors(maps, cy, cx, gt_boxes, gt_view, view_chunk=23)
    for view_chunk in (1, 5, 22):
        w, fitted = fit_part_regressors(stored, cy, cx, gt_boxes, gt_view, view_chunk=view_chunk)
        assert torch.equal(fitted, reference_fitted) and torch.allclose(w, reference_w, rtol=1e-9, atol=1e-9)
        chunked = score_part(stored, geometry, gt_boxes, gt_view, view_chunk=view_chunk, **kwargs)
        assert np.array_equal(chunked.det_view, whole.det_view) and np.array_equal(chunked.det_filter, whole.det_filter)
        assert np.array_equal(chunked.det_gt, whole.det_gt) and np.array_equal(chunked.det_score, whole.det_score)
        assert np.allclose(chunked.det_box, whole.det_box, atol=1e-4)
        assert np.array_equal(chunked.single_ap, whole.single_ap) and chunked.ga_ap == whole.ga_ap
    assert len(whole.det_filter) > 100 and whole.det_gt.max() >= 0  # a case with something to find
