"""ND'18 §2.2 dissection tally: vectorised engine vs the per-image, per-unit reference, and
hand-computed cases."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.engine.dissection import (
    BatchLabels,
    DissectionResult,
    DissectionTally,
    dissect,
    iou_from_counts,
    shuffled_pairing,
    unit_masks,
)
from benchmarks.dissection_reference import reference_iou, reference_tally
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()
COUNTS = ("intersection", "activation_cat", "truth", "activation", "category_images", "label_images")


def random_probe(seed: int, n_images: int = 7, n_units: int = 6, size: tuple[int, int] = (5, 6)):
    """Random data covering the awkward cases: 3 label layers with repeats across layers, whole-image
    labels (duplicated, also present as pixel labels, one out of study), an image with no label of
    category 1, an out-of-study label, a never-active unit, a dead (all-zero) unit, and ties at the
    thresholds (activations on a coarse grid)."""
    rng = np.random.default_rng(seed)
    h, w = size
    n_labels, n_cat = 12, 4
    label_category = np.array([-1, 0, 0, 0, 1, 1, 1, 2, 2, -1, 3, 3])
    pixel = rng.integers(0, n_labels, (n_images, 3, h, w))
    pixel[rng.random(pixel.shape) < 0.4] = 0
    pixel[:, 2] = np.where(rng.random((n_images, h, w)) < 0.5, pixel[:, 0], pixel[:, 2])
    img0 = pixel[0]
    img0[np.isin(img0, [4, 5, 6])] = 0  # image 0 has no label of category 1
    whole = [(int(i), int(rng.choice([10, 11, 9, 2]))) for i in rng.integers(0, n_images, 6)]
    j = min(1, n_images - 1)
    whole += [whole[0], (j, int(pixel[j, 0, 0, 0]) or 3)]
    acts = np.round(rng.normal(size=(n_images, n_units, h, w)), 1).astype(np.float32)
    acts[:, 4] = 0.0  # dead unit
    thr = np.quantile(acts.transpose(1, 0, 2, 3).reshape(n_units, -1), 0.8, axis=1)
    thr = thr.astype(np.float32)
    thr[3] = np.inf  # never active
    return acts, thr, pixel, whole, label_category, n_cat


def to_torch(acts, thr, pixel, whole, label_category, device="cpu"):
    labels = BatchLabels(
        torch.as_tensor(pixel, device=device),
        torch.as_tensor(np.array(whole, dtype=np.int64).reshape(-1, 2), device=device),
    )
    return (
        torch.as_tensor(acts, device=device),
        torch.as_tensor(thr, device=device),
        labels,
        torch.as_tensor(label_category, device=device),
    )


def assert_counts_equal(tally: DissectionTally, ref: dict[str, np.ndarray]) -> None:
    for name in COUNTS:
        np.testing.assert_array_equal(getattr(tally, name).cpu().numpy(), ref[name], err_msg=name)


# ----------------------------------------------------------------------------------------------
# engine == reference, exactly
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("chunk_elements", [1, 70, 1 << 22])
@pytest.mark.parametrize("method", ["sparse", "dense", "auto"])
def test_matches_reference(seed, strict, chunk_elements, method, device):
    acts, thr, pixel, whole, cats, n_cat = random_probe(seed)
    a, t, labels, lc = to_torch(acts, thr, pixel, whole, cats, device)
    tally = DissectionTally(t, lc, n_cat, strict_threshold=strict, chunk_elements=chunk_elements, method=method)
    tally.add(a, labels)
    ref = reference_tally(acts, thr, pixel, whole, cats, n_cat, strict=strict)
    assert_counts_equal(tally, ref)
    np.testing.assert_array_equal(tally.iou().cpu().numpy(), reference_iou(ref, cats))
    assert tally.images == acts.shape[0] and tally.pixels == acts.shape[0] * 30
    assert (tally.iou() <= 1).all() and (tally.iou() >= 0).all()


def test_reference_sees_the_awkward_cases():
    acts, thr, pixel, whole, cats, n_cat = random_probe(0)
    ref = reference_tally(acts, thr, pixel, whole, cats, n_cat)
    assert ref["activation"][3] == 0  # never active
    assert ref["activation"][4] == acts[:, 4].size  # dead unit with T = 0 and >=: on everywhere
    assert ref["category_images"][1] < acts.shape[0]  # image 0 lacks category 1
    assert ref["truth"][9] == 0 and ref["intersection"][:, 9].sum() == 0  # out-of-study label


def test_batches_of_different_sizes_and_mask_sizes_add_up():
    parts = [random_probe(s, n_images=n, size=sz) for s, n, sz in [(4, 3, (5, 6)), (5, 1, (4, 4))]]
    thr = parts[0][1]
    tally = DissectionTally(torch.as_tensor(thr), torch.as_tensor(parts[0][4]), 4)
    total = None
    for acts, _, pixel, whole, cats, n_cat in parts:
        whole = [(i, lab) for i, lab in whole if i < acts.shape[0]]
        a, _, labels, _ = to_torch(acts, thr, pixel, whole, cats)
        tally.add(a, labels)
        ref = reference_tally(acts, thr, pixel, whole, cats, n_cat)
        total = ref if total is None else {k: total[k] + ref[k] for k in ref}
    assert_counts_equal(tally, total)


def test_float16_maps_compare_against_unrounded_thresholds():
    acts = torch.tensor([0.1, 0.2], dtype=torch.float16).view(1, 1, 1, 2)
    thr = torch.tensor([0.1000001], dtype=torch.float32)  # rounds to float16 0.1 if cast
    assert unit_masks(acts, thr).tolist() == [[[[False, True]]]]


# ----------------------------------------------------------------------------------------------
# hand-computed cases
# ----------------------------------------------------------------------------------------------


def crafted():
    """Two 2x2 images; categories 0 object, 1 scene; labels 1 car (object), 2 street (scene).

    image 0: car at the top row, no scene;  unit 0 active in the left column.
    image 1: no object at all, whole-image label street; unit 0 active in the top row.
    unit 1 is never active.
    """
    pixel = torch.zeros(2, 1, 2, 2, dtype=torch.int64)
    pixel[0, 0, 0, :] = 1
    acts = torch.zeros(2, 2, 2, 2)
    acts[0, 0, :, 0] = 5.0
    acts[1, 0, 0, :] = 5.0
    labels = BatchLabels(pixel, torch.tensor([[1, 2]]))
    return acts, torch.tensor([5.0, 9.0]), labels, torch.tensor([-1, 0, 1])


def test_hand_computed_iou_excludes_images_without_the_category():
    acts, thr, labels, cats = crafted()
    tally = DissectionTally(thr, cats)
    tally.add(acts, labels)
    iou = tally.iou()
    # car: only image 0 has an object label. M = {(0,0),(1,0)}, L = {(0,0),(0,1)}: I = 1, U = 3.
    # (Counting image 1's activation too would give 1/5; NetDissect-Lite's overlap rule 1/2.)
    assert iou[0, 1].item() == pytest.approx(1 / 3)
    # street: whole-image label of image 1 covers its 4 pixels; M = top row: I = 2, U = 4.
    assert iou[0, 2].item() == pytest.approx(1 / 2)
    assert tally.activation_cat.tolist() == [[2, 2], [0, 0]]
    assert tally.truth.tolist() == [0, 2, 4]
    assert tally.intersection.tolist() == [[0, 1, 2], [0, 0, 0]]
    res = tally.result()
    assert res.label.tolist() == [2, -1]
    assert res.detector.tolist() == [True, False]
    assert res.label_iou[1].item() == 0.0
    s = res.summary()
    assert (s.n_detectors, s.n_unique_detectors) == (1, 1)
    assert s.detectors_per_category == (0, 1) and s.unique_per_category == (0, 1)


def test_whole_image_label_and_same_pixel_label_count_once():
    acts, thr, labels, cats = crafted()
    # image 1 additionally carries "street" on two pixels, in two layers: still the whole image
    pixel = torch.cat([labels.pixel, torch.zeros_like(labels.pixel)], dim=1)
    pixel[1, :, 1, :] = 2
    tally = DissectionTally(thr, cats)
    tally.add(acts, BatchLabels(pixel, torch.tensor([[1, 2], [1, 2]])))
    assert tally.truth.tolist() == [0, 2, 4]
    assert tally.iou()[0, 2].item() == pytest.approx(1 / 2)


def test_label_in_another_layer_gives_its_primary_category_to_the_image():
    # label 1 (primary category 0) arrives in a second layer (e.g. a part column) of image 1
    acts, thr, labels, cats = crafted()
    pixel = torch.cat([labels.pixel, torch.zeros_like(labels.pixel)], dim=1)
    pixel[1, 1, 1, 1] = 1
    tally = DissectionTally(thr, cats)
    tally.add(acts, BatchLabels(pixel, labels.image))
    assert tally.category_images.tolist() == [2, 1]
    # car: I = 1 (image 0), U = |M| over both images (4) + truth 3 - 1 = 6
    assert tally.iou()[0, 1].item() == pytest.approx(1 / 6)


def test_ties_go_to_the_lower_label_id_and_top_concepts_are_stable():
    pixel = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    pixel[0, 0, 0, 0] = 5
    pixel[0, 1, 0, 0] = 3  # same pixel set, same category
    acts = torch.zeros(1, 1, 2, 2)
    acts[0, 0, 0, 0] = 1.0
    cats = torch.tensor([-1, 0, 0, 0, 0, 0])
    tally = DissectionTally(torch.tensor([1.0]), cats)
    tally.add(acts, BatchLabels(pixel, torch.zeros(0, 2, dtype=torch.int64)))
    res = tally.result()
    assert res.label.tolist() == [3] and res.label_iou.item() == 1.0
    vals, ids = res.top_concepts(2)
    assert ids.tolist() == [[3, 5]] and vals.tolist() == [[1.0, 1.0]]
    best, lab = res.category_top()
    assert lab.tolist() == [[3]] and best.tolist() == [[1.0]]


def test_no_unit_passes_does_not_crash():
    acts, thr, pixel, whole, cats, n_cat = random_probe(1)
    a, _, labels, lc = to_torch(acts, thr, pixel, whole, cats)
    tally = DissectionTally(torch.full((acts.shape[1],), float("inf")), lc, n_cat)
    tally.add(a, labels)
    res = tally.result()
    assert res.label.tolist() == [-1] * acts.shape[1]
    s = res.summary()
    assert (s.n_detectors, s.n_unique_detectors) == (0, 0)
    assert s.detectors_per_category == (0,) * n_cat
    strict = DissectionTally(torch.as_tensor(thr), lc, n_cat)
    strict.add(a, labels)
    assert strict.result(iou_threshold=1.0).summary().n_detectors == 0


def test_summary_counts_unique_detectors_per_category():
    iou = torch.zeros(4, 5, dtype=torch.float64)
    res = DissectionResult(
        iou=iou,
        label=torch.tensor([1, 1, 3, 4]),
        label_iou=torch.tensor([0.2, 0.1, 0.05, 0.01], dtype=torch.float64),
        detector=torch.tensor([True, True, True, False]),
        label_category=torch.tensor([-1, 0, 0, 1, 1]),
        n_categories=2,
        iou_threshold=0.04,
    )
    s = res.summary()
    assert (s.n_units, s.n_detectors, s.n_unique_detectors) == (4, 3, 2)
    assert s.detectors_per_category == (2, 1) and s.unique_per_category == (1, 1)


def test_strict_threshold_switches_dead_units_off():
    acts = torch.zeros(1, 1, 2, 2)
    labels = BatchLabels(torch.ones(1, 1, 2, 2, dtype=torch.int64), torch.zeros(0, 2).long())
    for strict, expected in [(False, 1.0), (True, 0.0)]:
        tally = DissectionTally(torch.zeros(1), torch.tensor([-1, 0]), strict_threshold=strict)
        tally.add(acts, labels)
        assert tally.iou()[0, 1].item() == expected


def test_invalid_inputs_are_rejected():
    acts, thr, labels, cats = crafted()
    tally = DissectionTally(thr, cats)
    with pytest.raises(ValueError):
        tally.add(acts, BatchLabels(labels.pixel + 7, labels.image))
    with pytest.raises(ValueError):
        tally.add(acts[:1], labels)
    with pytest.raises(ValueError):
        tally.add(acts, BatchLabels(labels.pixel, torch.tensor([[2, 2]])))
    with pytest.raises(ValueError):
        DissectionTally(thr, torch.tensor([0, 0, 1]))  # label 0 must be outside every category


def test_iou_from_counts_zero_union():
    iou = iou_from_counts(
        torch.zeros(1, 2, dtype=torch.int64),
        torch.zeros(1, 1, dtype=torch.int64),
        torch.zeros(2, dtype=torch.int64),
        torch.tensor([-1, 0]),
    )
    assert iou.tolist() == [[0.0, 0.0]]


# ----------------------------------------------------------------------------------------------
# shards, state, driver
# ----------------------------------------------------------------------------------------------


def _split(labels: BatchLabels, lo: int, hi: int) -> BatchLabels:
    return labels.select(torch.arange(lo, hi))


def test_shard_merge_equals_single_pass_and_state_round_trips():
    acts, thr, pixel, whole, cats, n_cat = random_probe(2, n_images=9)
    a, t, labels, lc = to_torch(acts, thr, pixel, whole, cats)
    single = DissectionTally(t, lc, n_cat)
    single.add(a, labels)
    shards = []
    for lo, hi in [(0, 4), (4, 5), (5, 9)]:
        shard = DissectionTally(t, lc, n_cat)
        shard.add(a[lo:hi], _split(labels, lo, hi))
        buf = io.BytesIO()
        torch.save(shard.state_dict(), buf)
        buf.seek(0)
        shards.append(DissectionTally.from_state_dict(torch.load(buf, weights_only=True)))
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    for name in COUNTS:
        assert torch.equal(getattr(merged, name), getattr(single, name)), name
    assert (merged.images, merged.pixels) == (single.images, single.pixels)
    with pytest.raises(ValueError):
        merged.merge(DissectionTally(t + 1, lc, n_cat))


def test_select_reorders_pixel_and_whole_image_labels():
    acts, thr, pixel, whole, cats, _n_cat = random_probe(3)
    _, _, labels, _ = to_torch(acts, thr, pixel, whole, cats)
    order = torch.tensor([3, 0, 0, 6])
    sel = labels.select(order)
    assert torch.equal(sel.pixel, labels.pixel[order])
    got = sorted(map(tuple, sel.image.tolist()))
    want = sorted((j, lab) for j, i in enumerate(order.tolist()) for (k, lab) in whole if k == i)
    assert got == want


def test_dissect_driver_upsamples_and_transforms():
    acts, thr, pixel, whole, cats, n_cat = random_probe(0)
    _, t, labels, lc = to_torch(acts, thr, pixel, whole, cats)
    raw = torch.as_tensor(acts)[:, :, ::2, ::2].contiguous()  # [B, U, 3, 3]

    def up(m, size):
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)

    seen = []
    tally = dissect(
        [(raw[:4], _split(labels, 0, 4)), (raw[4:], _split(labels, 4, 7))],
        thresholds=t,
        label_category=lc,
        n_categories=n_cat,
        upsample=up,
        transform=lambda m: 2 * m,
        progress=seen.append,
    )
    manual = DissectionTally(t, lc, n_cat)
    manual.add(up(2 * raw, (5, 6)), labels)
    assert seen == [4, 7]
    for name in COUNTS:
        assert torch.equal(getattr(tally, name), getattr(manual, name)), name


# ----------------------------------------------------------------------------------------------
# shuffled-mask null baseline
# ----------------------------------------------------------------------------------------------


def test_shuffled_pairing_is_a_seeded_derangement():
    p = shuffled_pairing(50, seed=7)
    assert sorted(p.tolist()) == list(range(50))
    assert (p != torch.arange(50)).all()
    assert torch.equal(p, shuffled_pairing(50, seed=7))
    assert not torch.equal(p, shuffled_pairing(50, seed=8))
    assert shuffled_pairing(1, seed=0).tolist() == [0] and shuffled_pairing(0, seed=0).numel() == 0


def planted(n_images=40, size=16, n_units=6, seed=0):
    """Object squares at random places (labels 1-4); unit k < 2 fires on label k+1, the rest is
    noise. Thresholds: the per-unit 0.995 quantile, as in ND'18."""
    g = torch.Generator().manual_seed(seed)
    pixel = torch.zeros(n_images, 1, size, size, dtype=torch.int64)
    acts = 0.1 * torch.rand(n_images, n_units, size, size, generator=g)
    for i in range(n_images):  # building test data, not the code under test
        lab = 1 + int(torch.randint(0, 4, (1,), generator=g))
        y, x = torch.randint(0, size - 5, (2,), generator=g).tolist()
        pixel[i, 0, y : y + 5, x : x + 5] = lab
        if lab <= 2:
            acts[i, lab - 1, y : y + 5, x : x + 5] += 1.0
    flat = acts.transpose(0, 1).reshape(n_units, -1).numpy()
    thr = torch.from_numpy(np.quantile(flat, 0.995, axis=1)).float()
    return acts, thr, BatchLabels(pixel, torch.zeros(0, 2, dtype=torch.int64)), torch.tensor([-1, 0, 0, 0, 0])


def test_shuffled_baseline_removes_a_planted_detector():
    acts, thr, labels, cats = planted()
    real = DissectionTally(thr, cats)
    real.add(acts, labels)
    res = real.result()
    assert res.label[:2].tolist() == [1, 2] and res.detector[:2].all()
    assert not res.detector[2:].any()
    for seed in range(3):
        null = DissectionTally(thr, cats)
        null.add(acts, labels.select(shuffled_pairing(acts.shape[0], seed=seed)))
        assert null.result().summary().n_detectors == 0
        assert null.iou().max().item() < 0.04
