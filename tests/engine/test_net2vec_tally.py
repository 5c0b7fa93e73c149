"""Net2Vec's dataset passes as accumulators: shards merge exactly (integer sums and per-image rows, so bit for bit,
in any order), state dicts round-trip, and every count equals a per-image, per-pixel loop."""

from __future__ import annotations

import io

import pytest
import torch

from analysis.engine.net2vec import (
    TRAIN,
    VAL,
    Net2VecTally,
    ProbeTally,
    UnitMaskBatch,
    best_single_filters,
    classification_concepts,
    sample_pixels,
)
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()

N_IMAGES, UNITS, LABELS, PIXELS = 14, 5, 7, 30


def on(batches, valid, device):
    """The batches' tensors and the valid labels on ``device`` (rows stay on the CPU)."""
    moved = [
        UnitMaskBatch(
            rows=b.rows,
            features=b.features.to(device),
            pixel=b.pixel.to(device),
            pooled=b.pooled.to(device),
            image_labels=b.image_labels,
        )
        for b in batches
    ]
    return moved, valid.to(device)


def make_batches(seed: int = 0, batch_size: int = 4) -> tuple[list[UnitMaskBatch], torch.Tensor, torch.Tensor]:
    """Batches of a synthetic dataset (label layers differ between batches), each image's split, valid labels."""
    g = torch.Generator().manual_seed(seed)
    split = torch.tensor([TRAIN, VAL, TRAIN, -1, VAL, TRAIN, VAL, TRAIN, TRAIN, VAL, VAL, TRAIN, VAL, TRAIN])
    valid = torch.ones(LABELS, dtype=torch.bool)
    valid[0] = False
    valid[6] = False  # a label outside the study
    batches = []
    for start in range(0, N_IMAGES, batch_size):
        rows = torch.arange(start, min(N_IMAGES, start + batch_size))
        b, depth = len(rows), 1 + (start // batch_size) % 2
        pixel = torch.randint(0, LABELS, (b, depth, PIXELS), generator=g)
        pixel[pixel == 3] = 0  # label 3 is rare: only where planted below
        if start == 4:
            pixel[0, 0, :4] = 3
        image_labels = torch.tensor([[0, 5], [b - 1, 6]])
        batches.append(
            UnitMaskBatch(
                rows=rows,
                features=torch.rand(b, UNITS, PIXELS, generator=g) < 0.3,
                pixel=pixel,
                pooled=torch.rand(b, UNITS, generator=g),
                image_labels=image_labels,
            )
        )
    return batches, split, valid


def tally_of(batches, split, valid, *, pixels_per_image=8) -> Net2VecTally:
    tally = Net2VecTally(N_IMAGES, valid, UNITS, pixels_per_image=pixels_per_image, seed=3)
    for batch in batches:
        tally.add(batch, split[batch.rows])
    return tally


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key].cpu(), b[key].cpu()), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_two_shards_merged_equal_one_pass_exactly(order, device):
    batches, split, valid = make_batches()
    batches, valid = on(batches, valid, device)
    whole = tally_of(batches, split, valid)
    first, second = tally_of(batches[:2], split, valid), tally_of(batches[2:], split, valid)
    if order == "forward":
        first.merge(second)
        merged = first
    else:
        second.merge(first)
        merged = second
    assert_same_state(merged.state_dict(), whole.state_dict())
    for number in range(1, LABELS):
        for got, want in zip(
            merged.training_pixels(number, max_pixels=20), whole.training_pixels(number, max_pixels=20)
        ):
            assert torch.equal(got, want)
    with pytest.raises(ValueError, match="share images"):
        merged.merge(tally_of(batches[:1], split, valid))


def test_state_dict_round_trips_through_torch_save_and_the_restored_tally_keeps_counting():
    batches, split, valid = make_batches(seed=1)
    shard = tally_of(batches[:2], split, valid)
    buffer = io.BytesIO()
    torch.save(shard.state_dict(), buffer)
    buffer.seek(0)
    restored = Net2VecTally.from_state_dict(torch.load(buffer, weights_only=True))
    assert_same_state(restored.state_dict(), shard.state_dict())
    for batch in batches[2:]:
        restored.add(batch, split[batch.rows])
    whole = tally_of(batches, split, valid)
    assert_same_state(restored.state_dict(), whole.state_dict())
    with pytest.raises(ValueError, match="added twice"):
        restored.add(batches[0], split[batches[0].rows])


def test_counts_presence_and_training_pixels_equal_a_per_pixel_loop():
    batches, split, valid = make_batches(seed=2)
    tally = tally_of(batches, split, valid, pixels_per_image=8)
    inter = torch.zeros(2, LABELS, UNITS, dtype=torch.int64)
    union = torch.zeros_like(inter)
    images = torch.zeros(2, LABELS, dtype=torch.int64)
    covered = torch.zeros(2, LABELS, dtype=torch.int64)
    samples = {number: ([], []) for number in range(LABELS)}
    for batch in batches:
        for b, row in enumerate(batch.rows.tolist()):
            s = int(split[row])
            labels_here = {int(v) for v in batch.pixel[b].flatten().tolist()} - {0}
            whole = {int(v) for p, v in batch.image_labels.tolist() if p == b}
            for c in range(LABELS):
                assert bool(tally.presence[row, c]) == (c != 0 and (c in labels_here or c in whole))
                assert bool(tally.pixel_presence[row, c]) == (c in labels_here and bool(valid[c]))
            assert torch.equal(tally.pooled[row], batch.pooled[b])
            for c in sorted(labels_here):
                if not valid[c] or s not in (TRAIN, VAL):
                    continue
                truth = (batch.pixel[b] == c).any(0)
                images[s, c] += 1
                covered[s, c] += PIXELS
                for k in range(UNITS):
                    inter[s, c, k] += int((batch.features[b, k] & truth).sum())
                    union[s, c, k] += int((batch.features[b, k] | truth).sum())
            if s == TRAIN and any(valid[c] for c in labels_here):
                pick = sample_pixels(PIXELS, 8, seed=3, image=row)
                for c in labels_here:
                    if valid[c]:
                        samples[c][0].append(batch.features[b][:, pick].T)
                        samples[c][1].append((batch.pixel[b][:, pick] == c).any(0))
    assert torch.equal(tally.intersection, inter) and torch.equal(tally.union, union)
    assert torch.equal(tally.images, images) and torch.equal(tally.covered_pixels, covered)
    for c in range(1, LABELS):
        features, target = tally.training_pixels(c, max_pixels=10_000)
        if samples[c][0]:
            assert torch.equal(features, torch.cat(samples[c][0])) and torch.equal(target, torch.cat(samples[c][1]))
        else:
            assert len(target) == 0
    train_iou, _ = tally.single_filter_iou()
    k = int(torch.argmax(train_iou[2]))
    assert train_iou[2, k] == pytest.approx(float(inter[TRAIN, 2, k]) / float(union[TRAIN, 2, k]))
    excluded = torch.zeros(UNITS, dtype=torch.bool)
    excluded[k] = True
    assert (
        best_single_filters(train_iou, [2])[0] == k and best_single_filters(train_iou, [2], excluded=excluded)[0] != k
    )


def test_training_pixels_are_cut_to_a_seeded_subset():
    batches, split, valid = make_batches(seed=4)
    tally = tally_of(batches, split, valid, pixels_per_image=30)
    features, target = tally.training_pixels(1, max_pixels=10_000)
    cut_features, cut_target = tally.training_pixels(1, max_pixels=17)
    keep = sample_pixels(len(target), 17, seed=3, image=1)
    assert torch.equal(cut_features, features[keep]) and torch.equal(cut_target, target[keep])


@pytest.mark.parametrize("device", DEVICES)
def test_probe_tally_merges_exactly_and_equals_per_image_set_iou(device):
    batches, _split, valid = make_batches(seed=5)
    weights = torch.randn(3, UNITS, generator=torch.Generator().manual_seed(0))
    bias = torch.tensor([-0.5, 0.0, 0.5])
    concepts = torch.tensor([1, 2, 4])
    whole = ProbeTally(weights.to(device), bias, concepts)
    shards = [ProbeTally(weights.to(device), bias, concepts) for _ in range(2)]
    for position, batch in enumerate(on(batches, valid, device)[0]):
        whole.add(batch)
        shards[position % 2].add(batch)
    shards[1].merge(shards[0])
    restored = ProbeTally.from_state_dict(shards[1].state_dict())
    assert_same_state(restored.state_dict(), whole.state_dict())
    inter = torch.zeros(3, 3, dtype=torch.int64)
    union = torch.zeros_like(inter)
    for batch in batches:
        for b in range(len(batch.rows)):
            masks = (weights @ batch.features[b].to(torch.float32) + bias[:, None]) >= 0  # [M, P]
            for ci, c in enumerate(concepts.tolist()):
                truth = (batch.pixel[b] == c).any(0)
                if truth.any():
                    inter[ci] += (masks & truth).sum(1)
                    union[ci] += (masks | truth).sum(1)
    assert torch.equal(whole.intersection.cpu(), inter) and torch.equal(whole.union.cpu(), union)
    assert torch.equal(whole.result(), inter.to(torch.float64) / union.to(torch.float64))


def test_classification_concepts_need_positives_and_negatives_in_both_splits():
    presence = torch.zeros(8, 4, dtype=torch.bool)
    split = torch.tensor([TRAIN, TRAIN, TRAIN, TRAIN, VAL, VAL, VAL, VAL])
    presence[[0, 1, 4, 5], 1] = True  # 2 positives and 2 negatives per split
    presence[[0, 1, 2, 3, 4, 5], 2] = True  # no train negatives
    presence[[0, 1, 2, 4, 5, 6], 3] = True  # 3 positives and 1 negative per split
    valid = torch.tensor([False, True, True, True])
    chosen, positives, negatives = classification_concepts(presence, split, valid, min_images=1, count=10)
    assert chosen == [1, 3] and positives[:, 3].tolist() == [3, 3] and negatives[:, 3].tolist() == [1, 1]
    assert classification_concepts(presence, split, valid, min_images=2, count=10)[0] == [1]
    assert classification_concepts(presence, split, valid, min_images=1, count=1)[0] == [3]
    assert classification_concepts(presence, split, valid, min_images=1, count=0)[0] == [1, 3]  # 0: all


# -- #16.3: the paper's mask rule, per-image IoU, non-extremal exemplars ------------------------------------------


def numpy_bilinear(grid, out_h, out_w):
    """Bilinear resize with half-pixel centres (align_corners=False), by its formula, one output pixel at a time."""
    import numpy as np

    h, w = grid.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y = max((i + 0.5) * h / out_h - 0.5, 0.0)
            x = max((j + 0.5) * w / out_w - 0.5, 0.0)
            y0, x0 = min(int(np.floor(y)), h - 1), min(int(np.floor(x)), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                (1 - dy) * (1 - dx) * grid[y0, x0]
                + (1 - dy) * dx * grid[y0, x1]
                + dy * (1 - dx) * grid[y1, x0]
                + dy * dx * grid[y1, x1]
            )
    return out


def test_net2vec_rule_thresholds_strictly_on_the_map_then_upsamples_plainly():
    """M_k = S(A_k > T_k): a value equal to T_k is off (strict), thresholding comes before the bilinear upsampling
    (a lone cell just above T_k, surrounded by zeros, survives as a ½-level blob; upsampling first then
    thresholding at T_k would keep the smeared neighbourhood instead), and the single-filter mask is ≥ ½."""
    import numpy as np

    from analysis.engine.net2vec import ND18_RULE, unit_indicators, unit_masks
    from analysis.engine.upsample import upsample_plain

    raw = torch.zeros(1, 2, 4, 4)
    raw[0, 0, 1, 1] = 3.0  # above T_0 = 2
    raw[0, 0, 2, 2] = 2.0  # equal to T_0: off under ">"
    raw[0, 1] = torch.arange(16, dtype=torch.float32).view(4, 4) / 4  # a ramp: the two rules disagree on it
    thresholds = torch.tensor([2.0, 2.6])
    got = unit_indicators(raw, thresholds, (12, 12), upsample=upsample_plain)
    for k in range(2):
        expected = numpy_bilinear((raw[0, k].numpy() > thresholds[k].item()).astype(float), 12, 12)
        np.testing.assert_allclose(got[0, k].numpy(), expected, atol=1e-6)
    assert got[0, 0, 7:9, 7:9].max() == 0  # the cell at T_0 is off: strict
    masks = unit_masks(got)
    assert torch.equal(masks, got >= 0.5) and not masks[0, 0, 8].any()
    assert masks[0, 0, 4, 3:6].all() and masks[0, 0, 3:6, 4].all()
    nd18 = unit_indicators(raw, thresholds, (12, 12), upsample=upsample_plain, mask_rule=ND18_RULE, strict=False)
    assert nd18.dtype == torch.bool and torch.equal(nd18, upsample_plain(raw, (12, 12)) >= thresholds.view(1, 2, 1, 1))
    assert not torch.equal(nd18[0, 1], masks[0, 1])  # the rules are not the same rule


def test_float_indicators_count_their_half_level_masks_and_the_sample_keeps_the_values():
    batches, split, valid = make_batches(seed=6)
    g = torch.Generator().manual_seed(1)
    floats = [
        UnitMaskBatch(
            rows=b.rows,
            features=torch.rand(b.features.shape, generator=g),
            pixel=b.pixel,
            pooled=b.pooled,
            image_labels=b.image_labels,
        )
        for b in batches
    ]
    binary = [
        UnitMaskBatch(
            rows=b.rows, features=b.features >= 0.5, pixel=b.pixel, pooled=b.pooled, image_labels=b.image_labels
        )
        for b in floats
    ]
    float_tally, bool_tally = tally_of(floats, split, valid), tally_of(binary, split, valid)
    assert torch.equal(float_tally.intersection, bool_tally.intersection)
    assert torch.equal(float_tally.union, bool_tally.union)
    features, target = float_tally.training_pixels(1, max_pixels=10_000)
    as_masks, same_target = bool_tally.training_pixels(1, max_pixels=10_000)
    assert features.dtype == torch.float16 and torch.equal(target, same_target)
    assert torch.equal(features >= 0.5, as_masks) and ((features > 0) & (features < 1)).any()


def test_probe_tally_keeps_each_tracked_pairs_per_image_iou_and_merges_it_exactly():
    from analysis.engine.net2vec import single_filter_probe, stack_probes

    batches, _split, _valid = make_batches(seed=7)
    g = torch.Generator().manual_seed(2)
    batches = [
        UnitMaskBatch(
            rows=b.rows,
            features=torch.rand(b.features.shape, generator=g),
            pixel=b.pixel,
            pooled=b.pooled,
            image_labels=b.image_labels,
        )
        for b in batches
    ]
    weights, bias = stack_probes([single_filter_probe(2), single_filter_probe(4)], UNITS)
    weights = torch.cat([weights, torch.randn(1, UNITS, generator=g)])
    bias = torch.cat([bias, torch.zeros(1)])
    concepts = torch.tensor([1, 5])
    tracked = torch.tensor([[0, 0], [1, 2], [1, 1]])
    whole = ProbeTally(weights, bias, concepts, tracked)
    shards = [ProbeTally(weights, bias, concepts, tracked) for _ in range(2)]
    for position, batch in enumerate(batches):
        whole.add(batch)
        shards[1 - position % 2].add(batch)
    shards[0].merge(shards[1])
    assert_same_state(ProbeTally.from_state_dict(shards[0].state_dict()).state_dict(), whole.state_dict())
    for pair, (ci, m) in enumerate(tracked.tolist()):
        expected_rows, expected = [], []
        for batch in batches:
            for b in range(len(batch.rows)):
                truth = (batch.pixel[b] == concepts[ci]).any(0)
                if not truth.any():
                    continue
                x = batch.features[b]  # probes 0 and 1: units 2 and 4 alone (≥ ½); probe 2: a random w
                mask = {0: x[2] >= 0.5, 1: x[4] >= 0.5, 2: (weights[2] @ x + bias[2]) >= 0}[m]
                expected_rows.append(int(batch.rows[b]))
                expected.append(float((mask & truth).sum()) / float((mask | truth).sum()))
        rows, iou = whole.per_image(pair)
        assert rows.tolist() == expected_rows and iou.tolist() == pytest.approx(expected, abs=1e-12)


def test_nonextremal_exemplars_pick_the_middle_of_each_tenth_of_the_non_zero_ious_by_hand():
    from analysis.engine.net2vec import nonextremal_exemplars

    iou = torch.tensor([0.0] * 5 + [(i + 1) / 100 for i in range(20)])  # 5 zeros, then 0.01 … 0.20
    rows = torch.arange(100, 125).flip(0)  # rows unrelated to the order
    got = nonextremal_exemplars(rows, iou)
    # 20 non-zero values in 10 bins of 2: the middle rank of bin b is floor((b + ½)·2) = 2b + 1 → 0.02, 0.04, …
    assert got["ious"] == pytest.approx([(2 * b + 2) / 100 for b in range(10)])
    assert got["rows"] == [int(rows[5 + 2 * b + 1]) for b in range(10)]
    assert (got["images"], got["zero"]) == (25, 5)
    nonzero = [(i + 1) / 100 for i in range(20)]
    mean = sum(nonzero) / 20
    assert got["mean"] == pytest.approx(mean)
    assert got["std"] == pytest.approx((sum((v - mean) ** 2 for v in nonzero) / 20) ** 0.5)
    few = nonextremal_exemplars(torch.tensor([7, 8, 9]), torch.tensor([0.3, 0.0, 0.1]))
    assert few["rows"] == [9, 7] and few["ious"] == pytest.approx([0.1, 0.3]) and few["zero"] == 1
    assert nonextremal_exemplars(torch.tensor([1]), torch.tensor([0.0]))["mean"] is None
