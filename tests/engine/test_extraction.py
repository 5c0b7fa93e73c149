"""Streaming statistics against brute force on tiny datasets with planted ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.engine.extraction import (
    ActivationCacheWriter,
    ImageMaxScores,
    LayerStatistics,
    TopKPerUnit,
    UpperQuantile,
    batch_aligned_bounds,
    copy_cache_rows,
    decile_exemplars,
    extract_statistics,
    iter_activation_cache,
    map_max_and_peak,
    quantile_buffer_size,
)
from tests.devices import cpu_and_cuda

torch.set_num_threads(1)

DEVICES = cpu_and_cuda()


def tied_dataset(n=23, c=4, h=3, w=3, num_classes=3, seed=0):
    """Small integer-valued activations: many equal maxima, equal peaks, duplicated maps."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randint(0, 4, (n, c, h, w), generator=g).float()
    if n > 9:
        acts[5] = acts[2]  # a duplicated image
        acts[7, 1] = acts[3, 1]  # a duplicated map
        acts[9, 0] = 3.0  # a constant map: the peak must be (0, 0)
    ids = torch.randperm(1000, generator=g)[:n]  # non-contiguous image ids
    cls = torch.randint(-1, num_classes, (n,), generator=g)
    cls[0] = 0
    return acts, ids, cls


def brute_topk(acts, ids, k, subset=None):
    """Per unit: sort (score desc, map sum desc, id asc) with a Python sort; pad with (nan, -1, (-1, -1))."""
    n, c, h, w = acts.shape
    rows = range(n) if subset is None else [i for i in range(n) if subset[i]]
    scores = torch.full((c, k), math.nan)
    images = torch.full((c, k), -1, dtype=torch.long)
    peaks = torch.full((c, k, 2), -1, dtype=torch.long)
    for u in range(c):
        cands = []
        for i in rows:
            m = acts[i, u]
            best = m.max().item()
            y, x = next((y, x) for y in range(h) for x in range(w) if m[y, x].item() == best)
            cands.append((-best, -m.double().sum().item(), ids[i].item(), y, x))
        cands.sort()
        for r, (s, _sum, img, y, x) in enumerate(cands[:k]):
            scores[u, r], images[u, r], peaks[u, r] = -s, img, torch.tensor([y, x])
    return scores, images, peaks


def feed_topk(acc, acts, ids, cls, batch, device, order=None):
    order = torch.arange(len(ids)) if order is None else order
    for s in range(0, len(order), batch):
        sel = order[s : s + batch]
        acc.add(acts[sel].to(device), ids[sel].to(device), cls[sel].to(device))


def assert_same_topk(a, b):
    for x, y in zip(a, b):
        if x is None:
            assert y is None
            continue
        torch.testing.assert_close(x.cpu(), y.cpu(), equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_map_max_and_peak_first_maximum_in_row_major_order(device):
    acts = torch.zeros(1, 2, 3, 4, device=device)
    acts[0, 0, 1, 2] = 5
    acts[0, 0, 2, 0] = 5
    acts[0, 1] = -1  # constant map
    scores, peaks = map_max_and_peak(acts)
    assert scores.tolist() == [[5.0, -1.0]]
    assert peaks.tolist() == [[[1, 2], [0, 0]]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 4, 23])
def test_topk_overall_and_per_class_equal_brute_force_with_ties(device, batch):
    acts, ids, cls = tied_dataset()
    k, kc, n_cls = 6, 3, 3
    acc = TopKPerUnit(k, 4, n_cls, k_per_class=kc, device=device)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(1))  # arrival order is irrelevant
    feed_topk(acc, acts, ids, cls, batch, device, order)
    res = acc.result()
    assert_same_topk((res.scores, res.images, res.peaks), brute_topk(acts, ids, k))
    for c in range(n_cls):
        expected = brute_topk(acts, ids, kc, subset=(cls == c).tolist())
        got = (res.class_scores[:, c], res.class_images[:, c], res.class_peaks[:, c])
        assert_same_topk(got, expected)
    assert res.class_counts.tolist() == [int((cls == c).sum()) for c in range(n_cls)]
    assert acc.count == len(ids)


@pytest.mark.parametrize("device", DEVICES)
def test_saturation_ties_are_broken_by_the_map_sum(device):
    """A ReLU6-like unit: ten images all peak at exactly 6.0; the top-k must rank them by how much of
    the map sits at (or near) the ceiling, not give the dataset's first images."""
    n, k = 12, 4
    acts = torch.zeros(n, 2, 4, 4)
    coverage = torch.tensor([1, 3, 2, 9, 5, 16, 4, 7, 6, 8, 0, 0])  # pixels at 6.0 per image
    for i in range(n):
        acts[i, 0].view(-1)[: int(coverage[i])] = 6.0
        acts[i, 1] = float(i)  # unit 1: no ties
    acts[10, 0, 0, 0] = 5.0  # below the ceiling
    ids = torch.arange(n)
    acc = TopKPerUnit(k, 2, device=device)
    for start in range(0, n, 5):
        acc.add(acts[start : start + 5].to(device), ids[start : start + 5].to(device))
    res = acc.result()
    assert res.images[0].tolist() == [5, 3, 9, 7]  # 16, 9, 8, 7 pixels at the ceiling
    assert res.scores[0].tolist() == [6.0] * k
    assert res.images[1].tolist() == [11, 10, 9, 8]
    assert res.ceiling_ties().tolist() == [k, 1]
    restored = TopKPerUnit.from_state_dict(acc.state_dict(), device=device)
    assert_same_topk((restored.result().images, restored.result().sums), (res.images, res.sums))


@pytest.mark.parametrize("device", DEVICES)
def test_topk_pads_classes_with_fewer_than_k_images(device):
    acts, ids, _ = tied_dataset(n=5)
    cls = torch.tensor([0, 0, -1, 0, 2])  # class 1 is empty, class 2 has one image
    acc = TopKPerUnit(2, 4, 3, k_per_class=4, device=device)
    acc.add(acts.to(device), ids.to(device), cls.to(device))
    res = acc.result()
    assert (res.class_images[:, 1] == -1).all() and torch.isnan(res.class_scores[:, 1]).all()
    assert (res.class_peaks[:, 1] == -1).all()
    assert (res.class_images[:, 2, 0] == ids[4].to(device)).all()
    assert (res.class_images[:, 2, 1:] == -1).all()
    assert (res.class_images[:, 0, 3] == -1).all() and (res.class_images[:, 0, :3] >= 0).all()


def test_topk_requires_class_ids_when_classes_are_kept():
    acts, ids, _ = tied_dataset(n=3)
    acc = TopKPerUnit(2, 4, 3)
    with pytest.raises(ValueError, match="class_ids"):
        acc.add(acts, ids)
    with pytest.raises(ValueError, match="class_ids must lie"):
        acc.add(acts, ids, torch.tensor([0, 3, 1]))


@pytest.mark.parametrize("device", DEVICES)
def test_topk_shard_merge_equals_single_pass(device):
    acts, ids, cls = tied_dataset(n=30)
    single = TopKPerUnit(5, 4, 3, k_per_class=2, device=device)
    feed_topk(single, acts, ids, cls, 7, device)
    shards = []
    for lo, hi in [(0, 11), (11, 12), (12, 30)]:
        part = TopKPerUnit(5, 4, 3, k_per_class=2, device=device)
        feed_topk(part, acts[lo:hi], ids[lo:hi], cls[lo:hi], 4, device)
        shards.append(TopKPerUnit.from_state_dict(part.state_dict(), device=device))
    merged = shards[2]
    merged.merge(shards[0])
    merged.merge(shards[1])
    a, b = single.state_dict(), merged.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("q", [0.995, 0.9, 0.5, 0.0, 1.0, 0.37])
def test_upper_quantile_equals_numpy_quantile_exactly(device, q):
    acts, _, _ = tied_dataset(n=31, h=4, w=5)
    acts = acts + 0.25 * torch.randn(acts.shape, generator=torch.Generator().manual_seed(3)).round()
    n_values = acts.shape[0] * 4 * 5
    acc = UpperQuantile(4, q, total_count=n_values, device=device)
    for s in range(0, 31, 6):
        acc.add(acts[s : s + 6].to(device))
    got = acc.result().cpu().numpy()
    values = acts.transpose(0, 1).reshape(4, -1).numpy()
    expected = np.array([np.quantile(values[u], q) for u in range(4)], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    assert acc.capacity == quantile_buffer_size(n_values, q) <= n_values


@pytest.mark.parametrize("device", DEVICES)
def test_upper_quantile_keeps_a_small_buffer_and_interpolates(device):
    # 2000 distinct values per unit: at q = 0.995 the order statistics 1989 and 1990 are needed
    values = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).float()
    acts = torch.stack((values.view(200, 2, 5), -values.view(200, 2, 5)), dim=1)  # [200, 2, 2, 5]
    acc = UpperQuantile(2, total_count=2000, device=device)
    for s in range(0, 200, 16):
        acc.add(acts[s : s + 16].to(device))
    assert acc.capacity == 11  # 2000 - floor(1999 * 0.995)
    flat = acts.transpose(0, 1).reshape(2, -1).numpy()
    assert acc.result().cpu().tolist() == [np.quantile(flat[0], 0.995), np.quantile(flat[1], 0.995)]
    assert acc.result()[0].item() == pytest.approx(1989.005, abs=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_upper_quantile_batches_below_or_at_the_kept_floor(device):
    # after the first batch fills the buffer, later batches hold only values <= its smallest kept value
    first = torch.arange(100.0).reshape(4, 1, 5, 5)
    later = [torch.full((4, 1, 5, 5), 97.0), torch.zeros(4, 1, 5, 5), torch.full((4, 1, 5, 5), 98.0)]
    acc = UpperQuantile(1, 0.99, total_count=400, device=device)
    for batch in [first, *later]:
        acc.add(batch.to(device))
    values = torch.cat([first, *later]).flatten().numpy()
    assert acc.result().item() == np.float32(np.quantile(values, 0.99))


@pytest.mark.parametrize("device", DEVICES)
def test_upper_quantile_shard_merge_equals_single_pass(device):
    acts, _, _ = tied_dataset(n=40)
    total = 40 * 9
    single = UpperQuantile(4, 0.95, total_count=total, device=device)
    single.add(acts.to(device))
    parts = []
    for lo, hi in [(0, 13), (13, 14), (14, 40)]:
        part = UpperQuantile(4, 0.95, total_count=total, device=device)
        part.add(acts[lo:hi].to(device))
        parts.append(UpperQuantile.from_state_dict(part.state_dict(), device=device))
    parts[1].merge(parts[2])
    parts[1].merge(parts[0])
    assert torch.equal(parts[1].result(), single.result())
    values = acts.transpose(0, 1).reshape(4, -1).numpy()
    expected = [np.float32(np.quantile(values[u], 0.95)) for u in range(4)]
    assert parts[1].result().cpu().tolist() == expected
    # The saved state does not depend on the shards or their order (its kept values are sorted).
    assert torch.equal(parts[1].state_dict()["top"], single.state_dict()["top"])


def test_batch_aligned_bounds_cut_on_batch_boundaries_and_cover_every_image():
    assert batch_aligned_bounds(36, 8, 3) == [0, 8, 24, 36]  # 5 batches: 1, 2 and 2 of them
    assert batch_aligned_bounds(120, 12, 5) == [0, 24, 48, 72, 96, 120]
    assert batch_aligned_bounds(7, 8, 1) == [0, 7]
    with pytest.raises(ValueError, match="6 shards for 5 batches"):
        batch_aligned_bounds(36, 8, 6)


def test_copy_cache_rows_places_a_shard_at_its_rows_and_refuses_a_misfit(tmp_path):
    target = np.lib.format.open_memmap(tmp_path / "all.npy", mode="w+", dtype=np.float16, shape=(10, 3, 2, 2))
    shard = np.arange(4 * 12, dtype=np.float16).reshape(4, 3, 2, 2)
    copy_cache_rows(shard, target, row_offset=5, chunk_rows=3)  # chunks of 3 and 1
    assert np.array_equal(target[5:9], shard) and not target[:5].any() and not target[9:].any()
    with pytest.raises(ValueError, match="do not fit"):
        copy_cache_rows(shard, target, row_offset=7)
    with pytest.raises(ValueError, match="do not fit"):
        copy_cache_rows(shard[:, :2], target, row_offset=0)


def test_upper_quantile_refuses_partial_or_excess_data():
    acc = UpperQuantile(2, total_count=20)
    acc.add(torch.zeros(1, 2, 2, 5))
    with pytest.raises(RuntimeError, match="10 of 20"):
        acc.result()
    acc.add(torch.zeros(1, 2, 2, 5))
    with pytest.raises(ValueError, match="total_count"):
        acc.add(torch.zeros(1, 2, 1, 1))


def test_upper_quantile_nan_unit_gives_nan():
    acts = torch.arange(24.0).reshape(2, 3, 2, 2)
    acts[1, 2, 0, 0] = math.nan
    acc = UpperQuantile(3, 0.5, total_count=8)
    acc.add(acts)
    got = acc.result()
    assert math.isnan(got[2]) and not torch.isnan(got[:2]).any()


@pytest.mark.parametrize("device", DEVICES)
def test_image_max_scores_merge_and_order(device):
    acts, ids, _ = tied_dataset(n=12)
    a, b = ImageMaxScores(4, device=device), ImageMaxScores(4, device=device)
    a.add(acts[6:].to(device), ids[6:].to(device))
    b.add(acts[:6].to(device), ids[:6].to(device))
    a.merge(ImageMaxScores.from_state_dict(b.state_dict(), device=device))
    images, scores = a.result()
    order = torch.argsort(ids)
    assert images.cpu().tolist() == ids[order].tolist()
    assert torch.equal(scores.cpu(), acts[order].amax(dim=(2, 3)))
    a.merge(b)
    with pytest.raises(ValueError, match="more than once"):
        a.result()


def brute_deciles_median(scores, ids, num_bins, per_bin, min_score):
    out = []
    for u in range(scores.shape[1]):
        elig = sorted((scores[i, u].item(), ids[i].item()) for i in range(len(ids)) if scores[i, u] > min_score)
        n = len(elig)
        row = []
        for b in range(num_bins):
            lo, hi = b * n // num_bins, (b + 1) * n // num_bins
            cells = []
            for j in range(per_bin):
                s_lo, s_hi = lo + j * (hi - lo) // per_bin, lo + (j + 1) * (hi - lo) // per_bin
                cells.append(elig[s_lo + (s_hi - s_lo - 1) // 2][1] if s_hi > s_lo else -1)
            row.append(cells)
        out.append(row)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_decile_exemplars_median_mode_equals_brute_force(device):
    acts, ids, _ = tied_dataset(n=47)
    scores = acts.amax(dim=(2, 3)) - 1.0  # zeros and negatives: excluded (non-zero portion)
    for num_bins, per_bin in [(10, 1), (10, 2), (4, 3)]:
        got = decile_exemplars(scores.to(device), ids.to(device), num_bins=num_bins, per_bin=per_bin, mode="median")
        assert got.images.cpu().tolist() == brute_deciles_median(scores, ids, num_bins, per_bin, 0.0)
        assert got.eligible.cpu().tolist() == (scores > 0).sum(0).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_decile_exemplars_random_mode_draws_inside_each_decile_deterministically(device):
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(200, 3, generator=g)
    scores[:60, 1] = 0.0  # non-zero portion only
    ids = torch.randperm(10_000, generator=g)[:200]
    a = decile_exemplars(scores.to(device), ids.to(device), per_bin=2, seed=7)
    b = decile_exemplars(scores.to(device), ids.to(device), per_bin=2, seed=7)
    c = decile_exemplars(scores.to(device), ids.to(device), per_bin=2, seed=8)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    for u in range(3):
        elig = sorted((scores[i, u].item(), ids[i].item()) for i in range(200) if scores[i, u] > 0)
        rank = {img: r for r, (_, img) in enumerate(elig)}
        n = len(elig)
        for bin_ in range(10):
            picks = a.images[u, bin_].cpu().tolist()
            assert len(set(picks)) == 2
            for img in picks:
                assert bin_ * n // 10 <= rank[img] < (bin_ + 1) * n // 10
        assert torch.equal(
            a.scores[u].cpu(), scores[:, u][[list(ids).index(i) for i in a.images[u].flatten().tolist()]].view(10, 2)
        )


@pytest.mark.parametrize("device", DEVICES)
def test_decile_exemplars_rank_units_a_chunk_at_a_time_with_the_same_result(device):
    """The working memory is bounded by ``max_elements`` (images × units ranked at once); the picks are not."""
    g = torch.Generator().manual_seed(11)
    scores = torch.rand(300, 7, generator=g).to(torch.float16)
    scores[:90, 2] = 0.0
    scores[5, 4] = float("nan")
    ids = torch.randperm(5_000, generator=g)[:300]
    whole = decile_exemplars(scores.to(device), ids.to(device), per_bin=2, seed=3, max_elements=10**9)
    for max_elements in (1, 300, 650, 2_100):  # one unit, one unit, two units, all seven
        chunked = decile_exemplars(scores.to(device), ids.to(device), per_bin=2, seed=3, max_elements=max_elements)
        assert torch.equal(chunked.images, whole.images) and torch.equal(chunked.eligible, whole.eligible)
        assert torch.equal(chunked.scores.isnan(), whole.scores.isnan())
        assert torch.equal(chunked.scores.nan_to_num(), whole.scores.nan_to_num())


def test_decile_exemplars_pads_when_too_few_images():
    scores = torch.tensor([[0.0], [0.3], [0.1], [0.2]])
    got = decile_exemplars(scores, torch.tensor([4, 5, 6, 7]), num_bins=5, mode="median")
    # 3 eligible images in 5 bins: bins 0, 2, 4 hold one each (ranks 0, 1, 2)
    assert got.images.tolist() == [[[-1], [6], [-1], [7], [5]]]
    assert torch.isnan(got.scores[0, 0, 0]) and got.scores[0, 4, 0].item() == pytest.approx(0.3)


def test_activation_cache_round_trip(tmp_path):
    acts, _ids, _ = tied_dataset(n=10)
    acts = acts * 1.37 - 2.0
    mm = np.lib.format.open_memmap(tmp_path / "cache.npy", mode="w+", dtype=np.float16, shape=(10, 4, 3, 3))
    writer = ActivationCacheWriter(mm, row_offset=100)
    rows = torch.arange(100, 110)
    writer.write(acts[4:10], rows[4:10])  # contiguous slice
    assert not writer.complete
    writer.write(acts[[3, 0, 2, 1]], rows[[3, 0, 2, 1]])  # scattered rows
    writer.flush()
    assert writer.complete and writer.overflowed == 0
    reread = np.load(tmp_path / "cache.npy", mmap_mode="r")
    batches = list(iter_activation_cache(reread, 4, row_offset=100))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    got = torch.cat([b[0] for b in batches])
    assert got.dtype == torch.float32
    assert torch.equal(got, acts.half().float())
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(100, 110))


def test_activation_cache_counts_float16_overflow_and_checks_rows():
    mm = np.zeros((2, 1, 1, 2), dtype=np.float16)
    writer = ActivationCacheWriter(mm)
    writer.write(torch.tensor([[[[1e6, 1.0]]]]), torch.tensor([1]))
    assert writer.overflowed == 1 and np.isinf(mm[1, 0, 0, 0])
    with pytest.raises(IndexError):
        writer.write(torch.zeros(1, 1, 1, 2), torch.tensor([2]))


class FakeNet:
    """Two 'layers' from a fixed random conv; counts forwards."""

    def __init__(self, device):
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(6, 3, 3, 3, generator=g).to(device)
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        a = torch.relu(torch.nn.functional.conv2d(images, self.weight, stride=2)).round()  # ties
        return {"conv": a, "pool": a.amax(dim=(2, 3)), "unused": a}


@pytest.mark.parametrize("device", DEVICES)
def test_extract_statistics_is_one_pass_and_matches_accumulators(device, tmp_path):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(14, 3, 9, 9, generator=g) * 4
    ids = torch.arange(14)
    cls = torch.randint(0, 3, (14,), generator=g)
    batches = [(images[s : s + 4], ids[s : s + 4], cls[s : s + 4]) for s in range(0, 14, 4)]
    net = FakeNet(device)
    cache = {"conv": np.zeros((14, 6, 4, 4), dtype=np.float16)}
    seen = []
    stats = extract_statistics(
        net,
        batches,
        ["conv", "pool"],
        total_images=14,
        num_classes=3,
        device=device,
        k_overall=5,
        k_per_class=2,
        quantile=0.9,
        cache=cache,
        progress=seen.append,
    )
    assert net.calls == 4 and seen == [4, 8, 12, 14]
    all_acts = FakeNet(device)(images.to(device))
    assert stats["conv"].shape == (6, 4, 4) and stats["pool"].shape == (6, 1, 1)
    for name in ["conv", "pool"]:
        acts = all_acts[name]
        acts = acts[:, :, None, None] if acts.ndim == 2 else acts
        st = stats[name]
        res = st.topk.result()
        assert_same_topk((res.scores, res.images, res.peaks), brute_topk(acts.cpu(), ids, 5))
        values = acts.transpose(0, 1).reshape(6, -1).cpu().numpy()
        expected = np.array([np.quantile(values[u], 0.9) for u in range(6)], dtype=np.float32)
        np.testing.assert_array_equal(st.quantile.result().cpu().numpy(), expected)
        _, scores = st.image_scores.result()
        assert torch.equal(scores, acts.amax(dim=(2, 3)))
    assert torch.equal(torch.from_numpy(cache["conv"].astype(np.float32)), all_acts["conv"].cpu().half().float())


@pytest.mark.parametrize("device", DEVICES)
def test_extract_statistics_shards_merge_to_the_single_pass(device):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(10, 3, 9, 9, generator=g) * 4
    ids, cls = torch.arange(10), torch.randint(0, 2, (10,), generator=g)
    kw = dict(total_images=10, num_classes=2, device=device, k_overall=3, k_per_class=2, quantile=0.8)
    single = extract_statistics(FakeNet(device), [(images, ids, cls)], ["conv"], **kw)["conv"]
    shard_states = [
        extract_statistics(FakeNet(device), [(images[lo:hi], ids[lo:hi], cls[lo:hi])], ["conv"], **kw)[
            "conv"
        ].to_state()
        for lo, hi in [(6, 10), (0, 6)]
    ]
    merged = LayerStatistics.from_state(shard_states[0], device=device)
    merged.merge(LayerStatistics.from_state(shard_states[1], device=device))
    assert torch.equal(merged.quantile.result(), single.quantile.result())
    assert_same_topk(
        (lambda r: (r.scores, r.images, r.peaks, r.class_scores, r.class_images, r.class_peaks))(merged.topk.result()),
        (lambda r: (r.scores, r.images, r.peaks, r.class_scores, r.class_images, r.class_peaks))(single.topk.result()),
    )
    assert all(torch.equal(x, y) for x, y in zip(merged.image_scores.result(), single.image_scores.result()))
    with pytest.raises(RuntimeError):  # a lone shard never pretends to know the threshold
        LayerStatistics.from_state(shard_states[0]).quantile.result()
