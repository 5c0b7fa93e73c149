"""Workers that share nothing with the web but the broker, the database and the object store (issue 19.4).

moto's S3-compatible server stands in for the object store. Two real Celery workers each start with their own empty
scratch ``UNITSCOPE_DATA_DIR`` and, where the test runs as root and may unshare its mount namespace, with the web's
data dir and the dataset's original folder hidden under empty tmpfs mounts: whatever they read, they fetch from the
store. An extraction and a dissection split into shards run across them; the merged counts, the cached maps, the
thresholds and the exemplars equal a single-process run on the local default bit for bit. Then one worker is killed
while it tallies a shard: the dissection ends failed with a message naming the lost shard, and no merged tally is
ever written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from analysis.models import ExemplarSet, LayerDissection, LayerExtraction, Run, RunStatus, UnitActivationSummary
from analysis.services.dissection import dissection_run_start, dissection_tally_load
from analysis.services.extraction import extraction_run_start, open_activation_cache
from analysis.services.runs import run_fail_stale
from analysis.storage import artifact_store
from tests.conftest import PROJECT_DIR, _database_url_for_subprocess, broker_purge, celery_worker_command

pytestmark = pytest.mark.worker

WORKER_ENV = {"UNITSCOPE_WORKER_HEARTBEAT_SECONDS": "1", "UNITSCOPE_ORPHAN_AFTER_SECONDS": "2"}
LAYER = "conv5"


def _can_hide_folders() -> str | None:
    """None when a worker can get its own mount namespace (root, ``unshare -m``, tmpfs); else why not."""
    if os.geteuid() != 0:
        return "not root: unshare -m needs CAP_SYS_ADMIN"
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt && umount /mnt"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"unshare -m is refused here: {probe.stderr.strip()[:200]}"


class ScratchWorker:
    """A ``celery worker`` with its own empty data dir (and, when possible, its own mount namespace in which
    ``hidden`` folders are empty tmpfs mounts). Its own process group, so a kill takes its pool child too."""

    def __init__(self, name: str, scratch: Path, env: dict[str, str], hidden: list[Path], log_path: Path):
        self.scratch, self.log_path = scratch, log_path
        scratch.mkdir(parents=True)
        command = celery_worker_command(f"{name}-{uuid.uuid4().hex[:6]}@%h")
        if hidden:
            mounts = " && ".join(f"mount -t tmpfs none '{folder}'" for folder in hidden)
            command = [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'{mounts} && exec "$@"',
                "sh",
                *command,
            ]
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_DIR,
                env={**env, "UNITSCOPE_DATA_DIR": str(scratch)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while "ready." not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the Celery worker did not start:\n{self.log[-3000:]}")
            time.sleep(0.1)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def owns(self, run: Run) -> bool:
        """Whether ``run`` is executed by a process of this worker (its pool child: same process group)."""
        try:
            return os.getpgid(int(run.worker.rsplit(" pid ", 1)[1])) == self.process.pid
        except (IndexError, ValueError, ProcessLookupError):
            return False

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the leader stops its pool (see test_worker_faults.Worker)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait_final(runs: list[Run], timeout: float = 300) -> list[Run]:
    """Wait until every run has a final state, failing runs of dead workers as the web's pages do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_fail_stale()
        for run in runs:
            run.refresh_from_db()
        if not any(run.is_active for run in runs):
            return runs
        time.sleep(0.2)
    pytest.fail("still active: " + ", ".join(f"{run.pk} {run.status} {run.phase!r}" for run in runs if run.is_active))


def _dissection_of(run: Run) -> LayerDissection:
    return LayerDissection.objects.select_related("extraction").get(run=run)


@pytest.fixture
def worker_environment(transactional_db, object_store, settings, tmp_path):
    """The environment of a worker elsewhere: the broker, the database, the store; nothing of the web's files."""
    from unitscope.celery import app

    broker_purge()
    env = dict(
        os.environ,
        DATABASE_URL=_database_url_for_subprocess(),
        DJANGO_SETTINGS_MODULE="unitscope.settings.test",
        UNITSCOPE_STORAGE_URL=settings.UNITSCOPE_STORAGE_URL,
        UNITSCOPE_STORAGE_ENDPOINT_URL=settings.UNITSCOPE_STORAGE_ENDPOINT_URL,
        UNITSCOPE_STORAGE_REGION=settings.UNITSCOPE_STORAGE_REGION,
        **WORKER_ENV,
    )
    if app.conf.broker_url.startswith("filesystem"):  # the embedded broker's folders are this machine's broker
        env["UNITSCOPE_BROKER_DIR"] = str(Path(app.conf.broker_transport_options["data_folder_in"]).parent)
    yield env
    broker_purge()


def test_sharded_runs_across_two_scratch_workers_equal_one_process_and_a_killed_shard_fails_whole(
    make_probe_world, probe_world_files, settings, worker_environment, tmp_path
):
    from tests.worlds import seeded_network

    # The single-process reference, on the local default (no store), in the web's own data dir.
    store_url, store_settings = settings.UNITSCOPE_STORAGE_URL, settings.STORAGES
    settings.UNITSCOPE_STORAGE_URL = ""
    settings.STORAGES = {**store_settings, "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}
    # 120 images: shards of 20 take long enough that the second worker's broker poll finds shards left for it
    make_probe_world("reference-world", n_images=120)
    seeded_network(name="seeded", input_size=(64, 64))
    reference_extraction = extraction_run_start(
        network="seeded", dataset="reference-world", layers=[LAYER], batch_size=12, inline=True
    )
    assert reference_extraction.status == RunStatus.SUCCEEDED, reference_extraction.error
    reference = dissection_run_start(
        network="seeded", dataset="reference-world", layer=LAYER, upsample="plain", inline=True
    )
    assert reference.status == RunStatus.SUCCEEDED, reference.error

    # Production: the store. Registering publishes the dataset there (the workers never see its folder).
    settings.UNITSCOPE_STORAGE_URL, settings.STORAGES = store_url, store_settings
    dataset = make_probe_world("world", n_images=120)
    assert dataset.root_dir == "datasets/world" and artifact_store().exists("datasets/world/index.csv")
    hide_why = _can_hide_folders()
    hidden = [] if hide_why else [settings.UNITSCOPE_DATA_DIR, probe_world_files()]
    workers = [
        ScratchWorker(name, tmp_path / f"scratch-{name}", worker_environment, hidden, tmp_path / f"{name}.log")
        for name in ("gpu-a", "gpu-b")
    ]
    try:
        extraction = extraction_run_start(network="seeded", dataset="world", layers=[LAYER], batch_size=12, shards=5)
        _wait_final([extraction])
        assert extraction.status == RunStatus.SUCCEEDED, extraction.error + extraction.error_detail
        assert extraction.result["forward_pass"]  # computed on a worker, not reused from the reference's cache
        extraction_shards = Run.objects.filter(kind="extract_shard", params__extraction_run=extraction.pk)
        assert sorted((shard.params["start"], shard.status) for shard in extraction_shards) == [
            (start, RunStatus.SUCCEEDED) for start in range(0, 120, 24)
        ]
        assert not artifact_store().exists(f"extractions/{extraction.pk}/shards")  # merged, then removed
        dissection = dissection_run_start(network="seeded", dataset="world", layer=LAYER, upsample="plain", shards=6)
        _wait_final([dissection])
        assert dissection.status == RunStatus.SUCCEEDED, dissection.error + dissection.error_detail
        shards = list(Run.objects.filter(pk__in=dissection.result["shard_runs"]))
        assert len(shards) == 6 and all(shard.status == RunStatus.SUCCEEDED for shard in shards)
        owners = {index for shard in shards for index, worker in enumerate(workers) if worker.owns(shard)}
        assert owners == {0, 1}, "both workers should have tallied shards"

        # Bit for bit: the merged counts, the cached maps, the thresholds.
        merged, single = (
            dissection_tally_load(_dissection_of(dissection)),
            dissection_tally_load(_dissection_of(reference)),
        )
        assert set(merged) == set(single)
        for name in single:
            assert np.array_equal(merged[name], single[name]), name
        local = LayerExtraction.objects.get(run=reference_extraction)
        remote = LayerExtraction.objects.get(run=extraction)
        assert remote.cache_path.startswith("activations/") and remote.cache_path != local.cache_path
        assert np.array_equal(np.asarray(open_activation_cache(remote)), np.asarray(open_activation_cache(local)))

        def thresholds(extraction_row):
            return list(
                UnitActivationSummary.objects.filter(extraction=extraction_row)
                .order_by("unit__index")
                .values_list("threshold", "max_activation", "active_images")
            )

        assert thresholds(remote) == thresholds(local)

        def exemplars(extraction_row):
            return list(
                ExemplarSet.objects.filter(extraction=extraction_row)
                .order_by("unit__index", "kind", "object_class__name")
                .values_list("unit__index", "kind", "object_class__name", "image_indices", "scores", "peaks")
            )

        assert exemplars(remote) == exemplars(local)
        # The workers read their inputs from their own scratch copies, fetched from the store.
        for worker in workers:
            assert (worker.scratch / "datasets" / "world" / "index.csv").is_file(), worker.log[-2000:]
        assert any((worker.scratch / remote.cache_path / "maps.f16").is_file() for worker in workers)

        # A worker killed while it tallies a shard: the run fails naming the shard, nothing merged is written.
        killed = None
        for attempt in range(5):
            doomed = dissection_run_start(
                network="seeded",
                dataset="world",
                layer=LAYER,
                upsample="plain",
                shards=12,
                iou_threshold=0.04 + 0.001 * (attempt + 1),
            )
            deadline = time.monotonic() + 120
            while killed is None and time.monotonic() < deadline:
                running = [
                    shard
                    for shard in Run.objects.filter(
                        kind="dissect_shard", status=RunStatus.RUNNING, params__dissection__isnull=False
                    )
                    if shard.pk > doomed.pk
                ]
                holder = next((worker for shard in running for worker in workers if worker.owns(shard)), None)
                if holder is not None:
                    holder.signal(signal.SIGSTOP)  # frozen mid-shard; killed only if the shard is still running
                    if any(
                        Run.objects.get(pk=shard.pk).status == RunStatus.RUNNING and holder.owns(shard)
                        for shard in running
                    ):
                        holder.kill()
                        killed = holder
                    else:
                        holder.signal(signal.SIGCONT)
                if Run.objects.get(pk=doomed.pk).is_active is False:
                    break
                time.sleep(0.02)
            _wait_final([doomed])
            if killed is not None:
                break
        assert killed is not None, "every shard finished before a worker could be killed"
        assert doomed.status == RunStatus.FAILED, doomed.status
        assert "stopped before it finished" in doomed.error, doomed.error  # the run's own worker, or a shard's
        lost = LayerDissection.objects.get(run=doomed)
        if lost.complete:  # killed after its counts were published and merged: then the merge is whole
            assert artifact_store().exists(f"{lost.directory}/tally.npz") and lost.unit_results.count() == lost.n_units
        else:  # never half-written: no merged tally, no unit results
            assert not artifact_store().exists(f"{lost.directory}/tally.npz") and not lost.unit_results.exists()
        survivor = workers[1 - workers.index(killed)]
        assert survivor.process.poll() is None and "Unrecoverable error" not in survivor.log, survivor.log[-3000:]
    finally:
        for worker in workers:
            worker.stop()
    if hide_why:
        print(f"workers ran without their own mount namespace: {hide_why}")
