"""An extraction's heap does not grow with the images once glibc's mmap threshold is fixed (analysis.engine.allocator).

Each size runs in a fresh process (a heap's history is per process). Without the fix the anonymous memory of this
pass grew from about 0.36 GB at 1,000 images to 0.67–1.3 GB at 4,000, varying from run to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]

PASS = """
import sys, threading, time, torch
from analysis.engine.allocator import fix_mmap_threshold
from analysis.engine.extraction import extract_statistics
assert fix_mmap_threshold()
torch.set_num_threads(1)
n, batch = int(sys.argv[1]), 32
shapes = {"layer3": (256, 14, 14), "layer4": (512, 7, 7)}
generator = torch.Generator().manual_seed(0)
base = {k: torch.relu(torch.randn(batch, *s, generator=generator)).half().float() for k, s in shapes.items()}
peak = [0]
def sample():
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
step = [0]
def forward(images):
    step[0] += 1
    return {name: maps.roll(step[0], 0) * (1 + 0.001 * step[0]) for name, maps in base.items()}
def batches():
    for start in range(0, n, batch):
        yield torch.zeros(batch, 3, 2, 2), torch.arange(start, start + batch), torch.arange(start, start + batch) % 7
stats = extract_statistics(forward, batches(), list(shapes), total_images=n, num_classes=7, device="cpu")
for name in shapes:
    stats[name].quantile.result()
time.sleep(0.05)
print(peak[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon and mallopt are Linux/glibc")
def test_an_extraction_pass_keeps_flat_anonymous_memory_from_1000_to_4000_images():
    peaks = {}
    for n in (992, 3968):
        out = subprocess.run(
            [sys.executable, "-c", PASS, str(n)],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            env={"PYTHONPATH": str(PROJECT_DIR), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr[-3000:]
        peaks[n] = int(out.stdout.strip().splitlines()[-1])
    # What grows by design: ~4 MB of quantile buffer and 6 MB of per-image maxima at 3,968 images.
    assert peaks[3968] < peaks[992] * 1.15 + 16 * 2**20, {n: f"{p / 2**20:.0f} MB" for n, p in peaks.items()}


def _rss_file_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssFile and madvise are Linux")
def test_a_cache_written_and_read_once_leaves_the_resident_set_and_keeps_its_data(tmp_path):
    """The activation cache writer and the dissection's batch reader hand each row's pages back: a 100 MB cache
    passes through without the resident set growing by it, and what was written is what is read."""
    import numpy as np
    import torch

    from analysis.engine.dissection_data import iter_map_batches
    from analysis.engine.extraction import ActivationCacheWriter

    shape = (1000, 256, 14, 14)  # 100 MB of float16
    cache = np.memmap(tmp_path / "maps.f16", dtype=np.float16, mode="w+", shape=shape)
    writer = ActivationCacheWriter(cache)
    before = _rss_file_mb()
    for first in range(0, shape[0], 50):
        batch = torch.full((50, *shape[1:]), float(first % 13 + 1))
        writer.write(batch, torch.arange(first, first + 50))
    written = _rss_file_mb() - before
    writer.flush()
    del writer, cache
    cache = np.memmap(tmp_path / "maps.f16", dtype=np.float16, mode="r", shape=shape)
    before = _rss_file_mb()
    for first, block in iter_map_batches(cache, 0, shape[0], 50, device="cpu"):
        assert bool((block == float(first % 13 + 1)).all()), first
    read = _rss_file_mb() - before
    assert written < 20 and read < 20, (written, read)  # of 100 MB passed through each way
