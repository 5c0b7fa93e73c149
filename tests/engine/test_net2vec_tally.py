"""Net2Vec's dataset passes as accumulators: shards merge exactly (integer sums and per-image rows, so bit for bit,
in any order), state dicts round-trip, and every count equals a per-image, per-pixel loop."""
from __future__ import annotations

import io

import pytest
import torch

from analysis.engine.net2vec import (TRAIN, VAL, Net2VecTally, ProbeTally, UnitMaskBatch, best_single_filters,
                                     classification_concepts, sample_pixels)
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()

N_IMAGES, UNITS, LABELS, PIXELS = 14, 5, 7, 30


def on(batches, valid, device):
    """The batches' tensors and the valid labels on ``device`` (rows stay on the CPU)."""
    moved = [UnitMaskBatch(rows=b.rows, features=b.features.to(device), pixel=b.pixel.to(device),
                           pooled=b.pooled.to(device), image_labels=b.image_labels) for b in batches]
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
        batches.append(UnitMaskBatch(rows=rows, features=torch.rand(b, UNITS, PIXELS, generator=g) < 0.3,
                                     pixel=pixel, pooled=torch.rand(b, UNITS, generator=g), image_labels=image_labels))
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
        for got, want in zip(merged.training_pixels(number, max_pixels=20),
                             whole.training_pixels(number, max_pixels=20)):
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
    assert best_single_filters(train_iou, [2])[0] == k and best_single_filters(train_iou, [2], excluded=excluded)[0] != k


def test_training_pixels_are_cut_to_a_seeded_subset():
    batches, split, valid = make_batches(seed=4)
    tally = tally_of(batches, split, valid, pixels_per_image=30)
    features, target = tally.training_pixels(1, max_pixels=10_000)
    cut_features, cut_target = tally.training_pixels(1, max_pixels=17)
    keep = sample_pixels(len(target), 17, seed=3, image=1)
    assert torch.equal(cut_features, features[keep]) and torch.equal(cut_target, target[keep])


@pytest.mark.parametrize("device", DEVICES)
def test_probe_tally_merges_exactly_and_equals_per_image_set_iou(device):
    batches, split, valid = make_batches(seed=5)
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
