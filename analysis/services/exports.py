"""``export_run``: a run's results as plain files researchers re-analyse outside UnitScope.

Formats are stable. Extraction runs: ``<layer>.npy`` (float32, images × units × h × w: exactly the maps
the statistics were computed from), ``images.csv`` (``index,image`` as in the dataset's index.csv) and
``run.json``. Later run kinds add their files here.
"""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from django.conf import settings

from analysis.models import LayerExtraction, Run, RunStatus
from unitscope.spreadsheets import csv_writer

from .dissection import dissection_export, rotation_export
from .explanatory_graph import graph_export
from .parts import ablation_export, part_detection_export
from .extraction import open_activation_cache
from .runs import RunInputError

EXPORT_CHUNK_IMAGES = 256


def run_export(*, run: Run, out_dir: Path) -> list[Path]:
    """Write the export of ``run`` into ``out_dir`` (created if needed); returns the files written."""
    if run.status != RunStatus.SUCCEEDED:
        raise RunInputError(f"Run {run.pk} has not succeeded ({run.status}); there is nothing to export.")
    exporter = EXPORTERS.get(run.kind)
    if exporter is None:
        raise RunInputError(f"Runs of kind {run.kind!r} have no export.")
    out_dir.mkdir(parents=True, exist_ok=True)
    return exporter(run, out_dir)


def run_export_archive(*, run: Run) -> BinaryIO:
    """The export of ``run`` (:func:`run_export`) zipped under ``run-<id>/``, in an anonymous temporary file
    (gone once closed) positioned at its start: what the run page and the API download."""
    scratch = settings.UNITSCOPE_DATA_DIR / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as directory:
        files = run_export(run=run, out_dir=Path(directory))
        archive = tempfile.TemporaryFile(dir=scratch)
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
            for path in files:
                bundle.write(path, arcname=f"run-{run.pk}/{path.relative_to(directory)}")
    archive.seek(0)
    return archive


def _export_extraction(run: Run, out_dir: Path) -> list[Path]:
    extractions = list(LayerExtraction.objects.filter(run=run).select_related("layer__network", "dataset")
                       .order_by("layer__order"))
    if not extractions:
        raise RunInputError(f"Run {run.pk} holds no extracted layer.")
    written = []
    for extraction in extractions:
        maps = open_activation_cache(extraction)
        path = out_dir / f"{extraction.layer.name}.npy"
        target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=maps.shape)
        for start in range(0, maps.shape[0], EXPORT_CHUNK_IMAGES):  # bounded memory
            target[start:start + EXPORT_CHUNK_IMAGES] = maps[start:start + EXPORT_CHUNK_IMAGES]
        target.flush()
        del target
        written.append(path)
    dataset, network = extractions[0].dataset, extractions[0].layer.network
    images_path = out_dir / "images.csv"
    with open(images_path, "w", newline="") as handle:
        writer = csv_writer(handle)
        writer.writerow(["index", "image"])
        writer.writerows(dataset.images.order_by("index").values_list("index", "path"))
    written.append(images_path)
    written.append(_write_run_json(out_dir, run, {
        "network": network.name, "weights_sha256": network.weights_sha256, "dataset": dataset.name,
        "dataset_dir": dataset.root_dir, "layers": [extraction.layer.name for extraction in extractions],
        "shapes": {extraction.layer.name: [extraction.n_images, extraction.layer.units, extraction.map_height,
                                           extraction.map_width] for extraction in extractions},
        "preprocessing": {"input_size": [network.input_height, network.input_width], "mean": network.mean,
                          "std": network.std, "resize": "bilinear with antialiasing when sizes differ",
                          "activations": "post-layer outputs rounded to float16, exported as float32"},
        "quantile": extractions[0].quantile, "k_overall": extractions[0].k_overall,
        "k_per_class": extractions[0].k_per_class}))
    return written


def _write_run_json(out_dir: Path, run: Run, fields: dict[str, Any]) -> Path:
    path = out_dir / "run.json"
    path.write_text(json.dumps({"run": run.pk, "kind": run.kind, "params": run.params,
                                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                                **fields}, indent=2))
    return path


EXPORTERS = {"extract": _export_extraction, "dissect": dissection_export, "dissect_rotation": rotation_export}
EXPORTERS.update({"score_parts": part_detection_export, "ablate": ablation_export})
EXPORTERS["explanatory_graph"] = graph_export
