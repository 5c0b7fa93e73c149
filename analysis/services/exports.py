"""``export_run``: a run's results as plain files researchers re-analyse outside UnitScope.

Each job kind names its exporter in the job registry (:mod:`analysis.jobs`), beside its executor; this module
runs it and zips the files. Formats are stable; every export holds a ``run.json`` (:func:`write_run_json`).
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings

from analysis.models import Run, RunStatus

from .runs import RunInputError


def run_export(*, run: Run, out_dir: Path) -> list[Path]:
    """Write the export of ``run`` into ``out_dir`` (created if needed); returns the files written."""
    if run.status != RunStatus.SUCCEEDED:
        raise RunInputError(f"Run {run.pk} has not succeeded ({run.status}); there is nothing to export.")
    exporter = run.job_kind.exporter if run.job_kind else None
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
        archive = tempfile.TemporaryFile(dir=scratch)  # noqa: SIM115 — the caller's to close
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
            for path in files:
                bundle.write(path, arcname=f"run-{run.pk}/{path.relative_to(directory)}")
    archive.seek(0)
    return archive


def write_run_json(out_dir: Path, run: Run, fields: dict[str, Any]) -> Path:
    path = out_dir / "run.json"
    path.write_text(
        json.dumps(
            {
                "run": run.pk,
                "kind": run.kind,
                "params": run.params,
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                **fields,
            },
            indent=2,
        )
    )
    return path
