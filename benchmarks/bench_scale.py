"""Scale: seconds per image and peak memory of extraction and dissection as the dataset grows (issue 19.2).

ResNet-18 (torchvision architecture, seeded random weights: timing does not depend on the weights), layers
``layer3`` and ``layer4``, over generated Broden-format worlds of ``--sizes`` images at 224 px (default 1k, 2k,
4k, 8k; the probe world generator writes the largest once, the smaller ones share its files with a shortened
``index.csv``; generation is not timed). Each size runs in a fresh subprocess, so its peak memory is its own.

Per size, measured in that process:

* plain forward: the network up to ``layer4`` with both layers captured, batch by batch (image decoding
  excluded, timed apart);
* extraction: what the extraction run does per batch (forward with capture, float16 rounding, top-k overall
  and per class, exact quantile, per-image scores, the float16 cache write to disk), decoding excluded;
* dissection: both layers' dissection runs from the float16 cache on disk (masks decoded, anchored
  upsampling, threshold, tally; the thresholds come from the extraction's exact quantile);
* as every ``gpu`` run does, glibc's mmap threshold is fixed (:mod:`analysis.engine.allocator`; without it the
  heap grows with the images through fragmentation — ``BENCH_GLIBC_DYNAMIC_MMAP=1`` measures that);
* peak RSS (``ru_maxrss``: with the pages of the memory-mapped activation cache mapped at the time — the cache
  writer and the batch readers hand each batch's pages back, :func:`analysis.engine.allocator.release_mapped_rows`)
  and peak anonymous RSS (``RssAnon`` sampled every 20 ms: the process's own heap, what cannot be dropped).

Printed: seconds per image, the ratios to the plain forward pass (targets: extraction ≤ 1.3, dissection
≤ 1.0), the spread of seconds per image and of peak memory across sizes (target: within ±15 % of their
mean), and a projection to full Broden (63,305 images) at the largest size's rate. Torch threads are pinned
(``BENCH_THREADS`` or 1) and the load average is printed beside the figures; no timed assertion.

Run: ``python -m benchmarks.bench_scale --sizes 1000,2000,4000,8000`` (or ``BENCH_SCALE_SIZES=...`` through
``python -m benchmarks bench_scale``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FULL_BRODEN = 63_305
SIZE, BATCH, N_CLASSES = 224, 32, 7
LAYERS = ("layer3", "layer4")
# torchvision's ResNet-18 (7×7/2 pad-3 stem, 3×3/2 pad-1 max pool, 3×3 pad-1 convs, 1×1/2 shortcuts): unit (0, 0)
# of every stage is centred on input pixel 0, i.e. continuous coordinate 0.5; strides 16 (layer3), 32 (layer4).
RF = {"layer3": (16.0, 0.5), "layer4": (32.0, 0.5)}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ImageNet defaults
DEFAULT_SIZES = "1000,2000,4000,8000"


def main(sizes: str | None = None) -> None:
    sizes = sizes or os.environ.get("BENCH_SCALE_SIZES", DEFAULT_SIZES)
    counts = sorted({int(s) for s in sizes.split(",") if s.strip()})
    threads = int(os.environ.get("BENCH_THREADS", 1))
    from analysis.engine.probe_world import generate_probe_world

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        largest = tmp / f"world-{counts[-1]}"
        started = time.perf_counter()
        generate_probe_world(largest, n_images=counts[-1], seed=0, size=SIZE)
        print(
            f"generated {counts[-1]} probe-world images at {SIZE} px in {time.perf_counter() - started:.0f} s "
            "(not measured)"
        )
        results = []
        for n in counts:
            root = largest if n == counts[-1] else _prefix_world(largest, tmp / f"world-{n}", n)
            load_before = os.getloadavg()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_scale",
                    "--child",
                    str(root),
                    str(n),
                    str(threads),
                    str(tmp / f"cache-{n}"),
                ],
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            )
            if out.returncode:
                raise SystemExit(f"size {n} failed:\n{out.stderr[-4000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["load"] = (load_before, os.getloadavg())
            results.append(result)
            shutil.rmtree(tmp / f"cache-{n}", ignore_errors=True)
            _print_row(result)
        _summary(results, threads)


def _prefix_world(source: Path, target: Path, n: int) -> Path:
    """A Broden world of ``source``'s first ``n`` rows: shared images and csvs, a shortened ``index.csv``."""
    target.mkdir()
    for item in source.iterdir():
        if item.name not in ("index.csv", "index.csv.offsets.npz"):
            (target / item.name).symlink_to(item)
    with open(source / "index.csv", encoding="utf-8") as src, open(target / "index.csv", "w", encoding="utf-8") as dst:
        for k, line in enumerate(src):
            if k > n:
                break
            dst.write(line)
    return target


def _print_row(r: dict) -> None:
    n, fwd = r["n"], r["forward_s"]
    print(
        f"{n:>6} images: forward {1000 * fwd / n:6.1f} ms/img | extraction {1000 * r['extraction_s'] / n:6.1f} "
        f"ms/img ({r['extraction_s'] / fwd:.2f}× fwd) | dissection {1000 * r['dissection_s'] / n:6.1f} ms/img "
        f"({r['dissection_s'] / fwd:.2f}× fwd) | decode {1000 * r['decode_s'] / n:5.1f} ms/img | peak RSS "
        f"{r['peak_rss_mb']:7.0f} MB, anon {r['peak_anon_mb']:7.0f} MB | load {r['load'][0][0]:.1f}→"
        f"{r['load'][1][0]:.1f}",
        flush=True,
    )


def _spread(values: list[float]) -> float:
    """Largest deviation from the mean, as a fraction of the mean."""
    mean = sum(values) / len(values)
    return max(abs(v - mean) for v in values) / mean


def _summary(results: list[dict], threads: int) -> None:
    print(
        f"ResNet-18 (random init) {', '.join(LAYERS)}, batch {BATCH}, {threads} torch thread(s), "
        f"load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )
    for key, label in (("extraction_s", "extraction"), ("dissection_s", "dissection"), ("forward_s", "forward")):
        per_image = [r[key] / r["n"] for r in results]
        print(f"{label:>10} s/image spread across sizes: ±{100 * _spread(per_image):.0f} % (target ±15 %)")
    for key, label in (("peak_rss_mb", "peak RSS"), ("peak_anon_mb", "peak anonymous RSS")):
        print(f"{label:>18} spread across sizes: ±{100 * _spread([r[key] for r in results]):.0f} % (target ±15 %)")
    last = results[-1]
    for key, label in (("extraction_s", "extraction"), ("dissection_s", "dissection")):
        print(
            f"projection to full Broden ({FULL_BRODEN} images) at {last['n']} images' rate: {label} "
            f"{last[key] / last['n'] * FULL_BRODEN / 3600:.2f} h on this machine with {threads} thread(s); "
            f"ratio to forward {last[key] / last['forward_s']:.2f} (target ≤ "
            f"{'1.3' if key == 'extraction_s' else '1.0'})"
        )
    print(
        f"activation cache for full Broden: {last['cache_bytes'] / last['n'] * FULL_BRODEN / 2**30:.1f} GiB "
        "(float16, on disk / object store, never in memory)"
    )


# -- the measuring child ----------------------------------------------------------------------------------------


class _AnonPeak:
    """Samples ``RssAnon`` of this process every 20 ms in a daemon thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._sample())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
        return self.peak


def _child(root: str, n: int, threads: int, cache_dir: str) -> None:
    import numpy as np
    import torch
    from torchvision.models import resnet18

    from analysis.engine.allocator import fix_mmap_threshold
    from analysis.engine.broden import BrodenReader
    from analysis.engine.dissection import DissectionTally
    from analysis.engine.dissection_data import TallyView, label_category_table, tally_cached_maps
    from analysis.engine.dissection_sparse import AnchoredUpsample
    from analysis.engine.extraction import extract_statistics
    from analysis.engine.networks import capture_forward, normalize_images

    if os.environ.get("BENCH_GLIBC_DYNAMIC_MMAP") != "1":  # what every gpu run does (analysis.services.runs)
        fix_mmap_threshold()
    anon = _AnonPeak()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reader = BrodenReader(root)
    rows = reader.indexed_rows
    if len(rows) != n:
        raise SystemExit(f"{root} has {len(rows)} rows, expected {n}")
    model = resnet18(weights=None).eval()
    categories = list(reader.index_categories)
    label_category = label_category_table({k: reader.primary_category(k) for k in reader.labels}, categories)
    decode = {"s": 0.0}

    def batches():
        """Images decoded batch by batch (time kept apart), with a class id per image (the per-class top-k's
        cost does not depend on which class an image has)."""
        for start in range(0, n, BATCH):
            began = time.perf_counter()
            picked = [rows[k] for k in range(start, min(n, start + BATCH))]
            images = torch.from_numpy(np.stack([reader.load_image(row) for row in picked])).permute(0, 3, 1, 2)
            classes = torch.arange(start, start + len(picked)) % N_CLASSES
            decode["s"] += time.perf_counter() - began
            yield images, torch.arange(start, start + len(picked)), classes

    @torch.no_grad()
    def forward(images):
        out = capture_forward(model, normalize_images(images, MEAN, STD), LAYERS)
        return {name: value.half().float() for name, value in out.items()}

    with torch.no_grad():  # warm-up (allocator, kernels)
        capture_forward(model, normalize_images(next(batches())[0], MEAN, STD), LAYERS)
    decode["s"] = 0.0
    began = time.perf_counter()
    with torch.no_grad():
        for images, _, _ in batches():
            capture_forward(model, normalize_images(images, MEAN, STD), LAYERS)
    forward_s = time.perf_counter() - began - decode["s"]
    decode_s, decode["s"] = decode["s"], 0.0

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        shapes = {
            name: tuple(t.shape[1:])
            for name, t in capture_forward(model, torch.zeros(1, 3, SIZE, SIZE), LAYERS).items()
        }
    caches = {
        name: np.memmap(Path(cache_dir) / f"{name}.f16", dtype=np.float16, mode="w+", shape=(n, *shape))
        for name, shape in shapes.items()
    }
    began = time.perf_counter()
    stats = extract_statistics(
        forward, batches(), list(LAYERS), total_images=n, num_classes=N_CLASSES, device="cpu", cache=caches
    )
    for cache in caches.values():
        cache.flush()
    extraction_s = time.perf_counter() - began - decode["s"]
    thresholds = {name: stats[name].quantile.result() for name in LAYERS}
    del stats, caches

    began = time.perf_counter()
    detectors = {}
    for name in LAYERS:
        maps = np.memmap(Path(cache_dir) / f"{name}.f16", dtype=np.float16, mode="r", shape=(n, *shapes[name]))
        stride, offset = RF[name]
        tally = DissectionTally(thresholds[name], label_category, len(categories))
        tally_cached_maps(
            maps,
            [TallyView(tally)],
            reader=reader,
            rows=rows,
            batch_size=BATCH,
            upsample=AnchoredUpsample(rf_stride=(stride, stride), rf_offset=(offset, offset), input_size=(SIZE, SIZE)),
        )
        detectors[name] = tally.result().summary().n_detectors
        del maps
    dissection_s = time.perf_counter() - began
    peak_anon = anon.stop()
    print(
        json.dumps(
            {
                "n": n,
                "forward_s": forward_s,
                "extraction_s": extraction_s,
                "dissection_s": dissection_s,
                "decode_s": decode_s,
                "detectors": detectors,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_anon_mb": peak_anon / 2**20,
                "cache_bytes": sum(int(np.prod(s)) * 2 * n for s in shapes.values()),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=None, help=f"comma-separated image counts (default {DEFAULT_SIZES})")
    parser.add_argument("--child", nargs=4, metavar=("ROOT", "N", "THREADS", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]), args.child[3])
    else:
        main(args.sizes)
