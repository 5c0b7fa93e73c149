"""The markers a selection relies on are where they must be: a GPU run (``-m needs_cuda``) selects every CUDA
case and ``-m "not needs_cuda"`` none; ``make test-fast`` (``-m "not browser and not worker"``) drives no browser
and starts no worker process. The whole suite is collected once in a child pytest (nothing runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR

BROWSER_FIXTURES = {"page", "browser", "context", "live_server"}
WORKER_FIXTURES = {"celery_worker_process"}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    report = tmp_path_factory.mktemp("collection") / "items.json"
    env = dict(os.environ, UNITSCOPE_COLLECTION_REPORT=str(report))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.collection_report",
            "tests",
        ],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    items = json.loads(report.read_text())
    assert len(items) > 500, len(items)  # the whole suite, not a fragment of it
    return items


def test_every_cuda_case_and_only_those_carry_needs_cuda(collected):
    cuda = [item for item in collected if "cuda" in item["id_tokens"] or item["cuda_param"]]
    marked = [item for item in collected if "needs_cuda" in item["markers"]]
    assert cuda, "no CUDA case collected: tests.devices.cpu_and_cuda() lost its cuda parameter"
    unmarked = [item["nodeid"] for item in cuda if "needs_cuda" not in item["markers"]]
    assert not unmarked, (
        f"{len(unmarked)} CUDA items lack needs_cuda (use tests.devices.cpu_and_cuda()): {unmarked[:10]}"
    )
    stray = [item["nodeid"] for item in marked if item not in cuda]
    assert not stray, f"needs_cuda on items that do not run on CUDA: {stray[:10]}"


def test_browser_and_worker_tests_are_marked(collected):
    missing = []
    for item in collected:
        fixtures, markers = set(item["fixtures"]), set(item["markers"])
        if fixtures & BROWSER_FIXTURES and "browser" not in markers:
            missing.append(("browser", item["nodeid"]))
        if (fixtures & WORKER_FIXTURES or item["starts_processes"]) and "worker" not in markers:
            missing.append(("worker", item["nodeid"]))
    assert not missing, missing
