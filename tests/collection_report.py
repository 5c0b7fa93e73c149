"""A pytest plugin for ``tests/test_markers.py``: after collection, write each item's id, markers, fixtures and
device parameters as JSON to ``$UNITSCOPE_COLLECTION_REPORT`` (used with ``--collect-only -p
tests.collection_report``)."""

from __future__ import annotations

import inspect
import json
import os
import re

#: Calls in a test's body that start processes of the kind the ``worker`` marker names (a Celery worker; the
#: gunicorn site of ``benchmarks.loadkit.Server``).
WORKER_CALLS = re.compile(r"\b(start_worker|Server)\(")


def _device_like(value) -> bool:
    text = str(getattr(value, "type", value))
    return text == "cuda" or text.startswith("cuda:")


def pytest_collection_finish(session):
    path = os.environ.get("UNITSCOPE_COLLECTION_REPORT")
    if not path:
        return
    rows = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        try:
            source = inspect.getsource(item.function)
        except (AttributeError, OSError, TypeError):
            source = ""
        rows.append(
            {
                "nodeid": item.nodeid,
                "markers": sorted({marker.name for marker in item.iter_markers()}),
                "fixtures": sorted(getattr(item, "fixturenames", ())),
                "id_tokens": callspec.id.split("-") if callspec else [],
                "cuda_param": bool(callspec) and any(_device_like(value) for value in callspec.params.values()),
                "starts_processes": bool(WORKER_CALLS.search(source)),
            }
        )
    with open(path, "w") as handle:
        json.dump(rows, handle)
