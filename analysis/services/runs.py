"""The job system (DESIGN.md §4): create runs, enqueue them after commit, claim, report, finish.

Every job is a :class:`~analysis.models.Run` row created before its task is queued. The task receives
the run id only, claims the run with a conditional UPDATE (queued → running), calls the kind's
executor with a progress reporter, and always leaves a final state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from analysis.engine.allocator import fix_mmap_threshold
from analysis.jobs import JobKind, RunInputError, job_kind
from analysis.models import ACTIVE_RUN_STATUSES, Dataset, Layer, LayerExtraction, Network, Run, RunStatus

logger = logging.getLogger(__name__)


class RunCancelled(Exception):
    """Raised inside a running job when someone cancelled it; the run is already marked cancelled."""


def run_network_and_dataset(params: dict[str, Any]) -> tuple[Network, Dataset]:
    """The network and the dataset a run's parameters name (``network``, ``dataset``)."""
    network = Network.objects.filter(name=params["network"]).first()
    if network is None:
        raise RunInputError(f"No network named {params['network']!r}.", field="network")
    dataset = Dataset.objects.filter(name=params["dataset"]).first()
    if dataset is None:
        raise RunInputError(f"No dataset named {params['dataset']!r}.", field="dataset")
    return network, dataset


def run_layers(network: Network, names: list[str]) -> dict[str, Layer]:
    """The network's layers of these names, by name; an error naming the missing ones and the layers there are."""
    found = {layer.name: layer for layer in network.layers.filter(name__in=names)}
    missing = [name for name in names if name not in found]
    if missing:
        available = ", ".join(network.layers.values_list("name", flat=True)[:30])
        raise RunInputError(f"{network.name} has no layer {', '.join(missing)}; its layers: {available}", field="layer")
    return found


def run_check_references(*, params: dict[str, Any]) -> None:
    """Raise :class:`RunInputError` naming the parameter unless what the parameters name exists: ``network``,
    ``dataset``, the network's ``layer``/``layers``, and the ``extraction_run`` of ``layer``. For interfaces that
    should refuse such a run at once (the API) instead of letting it fail on a worker."""
    network = None
    if "network" in params:
        network = Network.objects.filter(name=params["network"]).first()
        if network is None:
            raise RunInputError(f"No network named {params['network']!r}.", field="network")
    if "dataset" in params and not Dataset.objects.filter(name=params["dataset"]).exists():
        raise RunInputError(f"No dataset named {params['dataset']!r}.", field="dataset")
    layers = params.get("layers") or ([params["layer"]] if "layer" in params else [])
    if network is not None and layers:
        run_layers(network, layers)
    if (
        "extraction_run" in params
        and not LayerExtraction.objects.filter(
            run_id=params["extraction_run"], layer__name=params.get("layer")
        ).exists()
    ):
        raise RunInputError(
            f"Run {params['extraction_run']} extracted no layer {params.get('layer')!r}.", field="extraction_run"
        )


def params_hash(params: dict[str, Any]) -> str:
    """A stable hash of JSON parameters (key order does not matter)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_device(requested: str | None = None) -> str:
    """The torch device a worker uses: ``UNITSCOPE_DEVICE`` (auto/cpu/cuda[:N]); auto prefers CUDA."""
    import torch

    requested = requested or settings.UNITSCOPE_DEVICE
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RunInputError(f"UNITSCOPE_DEVICE={requested} but this worker sees no CUDA device")
    return requested


def run_start(
    *, kind: str, params: dict[str, Any], created_by=None, inline: bool = False, reuse: bool = True
) -> tuple[Run, bool]:
    """Create a run of ``kind`` with ``params`` validated by the kind's schema (:class:`~analysis.params.ParamsError`,
    a :class:`RunInputError`, names every parameter at fault) and enqueue it once the transaction commits.

    With ``reuse``, an identical run that succeeded (for kinds that allow reuse) or is still queued or
    running is returned instead of a new one; the bool says whether a new run was created. With
    ``inline`` the run executes here, synchronously (for ``build_demo``, scripts and tests).
    """
    kind_spec = job_kind(kind)
    params = kind_spec.params.validate(params)
    digest = params_hash(params)
    if reuse:
        existing = Run.objects.of_kind(kind).filter(params_hash=digest)
        reusable_statuses = list(ACTIVE_RUN_STATUSES) + ([RunStatus.SUCCEEDED] if kind_spec.reuse_finished else [])
        found = existing.filter(status__in=reusable_statuses).order_by("-created_at").first()
        if found is not None and not (inline and found.is_active):
            return found, False
    run = Run.objects.create(
        kind=kind,
        params=params,
        params_hash=digest,
        queue=kind_spec.queue,
        created_by=created_by,
        phase="Waiting for a worker",
    )
    if inline:
        run_execute(run_id=run.pk)
        run.refresh_from_db()
    else:
        transaction.on_commit(lambda: run_enqueue(run=run, kind_spec=kind_spec))
    return run, True


def run_enqueue(*, run: Run, kind_spec: JobKind) -> None:
    """Send the run's message to its queue. Sending it twice is harmless: only one task can claim the run."""
    current_app.send_task(kind_spec.task_name, args=[run.pk], queue=kind_spec.queue)


def run_ids_waiting_in_broker(queue: str) -> set[int] | None:
    """Ids of the runs whose message waits in ``queue`` (for a worker to take), or None when the broker cannot
    be read without consuming (only the embedded filesystem broker and Redis can)."""
    from unitscope.broker import decode_task_message, waiting_messages

    payloads = waiting_messages(current_app, queue)
    if payloads is None:
        return None
    ids = set()
    for payload in payloads:
        decoded = decode_task_message(payload) if isinstance(payload, dict) else None
        if decoded and decoded[0].startswith("analysis.") and decoded[1] and isinstance(decoded[1][0], int):
            ids.add(decoded[1][0])
    return ids


ORPHAN_REQUEUED_PHASE = "Sent to the workers again (its first message was lost)"
# The phase of a run that failed through no fault of its own (its worker died, its message was lost twice):
# starting it again may well succeed (make demo does, once).
WORKER_LOST_PHASE = "Stopped: its worker was lost"


def run_recover_orphans(*, now=None) -> dict[str, int]:
    """Send again, once, the queued runs whose broker message is gone; fail those whose message is lost again.

    A message disappears when a worker took it and was killed before claiming the run, when a broker lost it
    (restarted without persistence), or when the embedded broker set a corrupt file aside. Such a run would
    wait for ever. A run counts as orphaned when it has been queued (or sent again) for at least
    ``UNITSCOPE_ORPHAN_AFTER_SECONDS`` and the broker has no message for it; brokers that cannot be read
    without consuming (neither the embedded one nor Redis) are left alone.

    Sending a message twice never runs a job twice: a task first claims its run with a conditional UPDATE
    (queued → running, :func:`run_claim`), and the duplicate's claim updates 0 rows and does nothing. So a
    message taken by a live worker in the instant before it claims, and sent again here, is harmless. The
    attempt is recorded on the run (``requeue_count``, ``requeued_at``; a conditional UPDATE, so two checkers
    cannot both send); a second loss fails the run with a readable reason. Returns counts of both.
    """
    now = now or timezone.now()
    older = now - timedelta(seconds=settings.UNITSCOPE_ORPHAN_AFTER_SECONDS)
    candidates = list(
        Run.objects.filter(status=RunStatus.QUEUED)
        .filter(Q(requeued_at__isnull=True, created_at__lte=older) | Q(requeued_at__lte=older))
        .order_by("created_at")
    )
    counts = {"requeued": 0, "failed": 0}
    waiting_by_queue: dict[str, set[int] | None] = {}
    for run in candidates:
        if run.queue not in waiting_by_queue:
            waiting_by_queue[run.queue] = run_ids_waiting_in_broker(run.queue)
        waiting = waiting_by_queue[run.queue]
        if waiting is None or run.pk in waiting:
            continue
        same = Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED, requeue_count=run.requeue_count)
        if run.requeue_count == 0:
            if same.update(requeue_count=1, requeued_at=now, phase=ORPHAN_REQUEUED_PHASE):
                try:
                    run_enqueue(run=run, kind_spec=job_kind(run.kind))
                except KeyError:
                    Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
                        status=RunStatus.FAILED,
                        finished_at=now,
                        phase="Stopped",
                        error=f"This version of UnitScope has no job kind {run.kind!r}; the run cannot start.",
                    )
                    counts["failed"] += 1
                    continue
                logger.warning("run %s was queued but its message was gone: sent again", run.pk)
                counts["requeued"] += 1
        elif same.update(
            status=RunStatus.FAILED,
            finished_at=now,
            phase=WORKER_LOST_PHASE,
            error="The run's message to the workers was lost twice (a worker stopped after taking it, "
            "or the broker lost it), so it never started. Start it again; if this repeats, "
            "look at the worker's log.",
        ):
            logger.warning("run %s lost its message again: failed", run.pk)
            counts["failed"] += 1
    return counts


def runs_reconcile() -> None:
    """The job system's checks, run by workers (at start-up and with every heartbeat) and by the pages and API
    that show runs: fail runs of dead workers (:func:`run_fail_stale`), recover lost messages
    (:func:`run_recover_orphans`)."""
    run_fail_stale()
    run_recover_orphans()


WORKER_NAME = re.compile(r"^(?P<host>.+) pid (?P<pid>\d+)$")


def worker_name() -> str:
    """Who executes a run: ``"<host> pid <pid>"`` (the process that claimed it)."""
    return f"{socket.gethostname()[:180]} pid {os.getpid()}"


def worker_gone(worker: str) -> bool:
    """True when ``worker`` (:func:`worker_name`) is a process of this host that no longer runs (killed, crashed;
    a zombie counts as gone). Workers of other hosts, and old host-only names, are never judged here."""
    match = WORKER_NAME.match(worker or "")
    if match is None or match["host"] != socket.gethostname()[:180]:
        return False
    pid = int(match["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def run_claim(*, run_id: int) -> bool:
    """Move a queued run to running. False when another worker has it, or it was cancelled."""
    now = timezone.now()
    claimed = Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING,
        started_at=now,
        heartbeat_at=now,
        worker=worker_name(),
        phase="Starting",
    )
    return claimed == 1


class RunProgress:
    """Progress callback handed to the engine: ``progress(done, total)``; ``progress.phase(name, total)``.

    Writes are throttled to one per ``min_interval`` seconds (always the last step). Each write is a
    conditional UPDATE on a running run, so it also notices a cancellation and raises
    :class:`RunCancelled` in the job.
    """

    def __init__(self, run_id: int, *, min_interval: float = 0.5):
        self.run_id = run_id
        self.min_interval = min_interval
        self._last_write = 0.0

    def __call__(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        last_step = total is not None and done >= total
        if not last_step and now - self._last_write < self.min_interval:
            return
        fields: dict[str, Any] = {"progress_done": done, "heartbeat_at": timezone.now()}
        if total is not None:
            fields["progress_total"] = total
        self._write(fields)
        self._last_write = now

    def phase(self, name: str, total: int = 0) -> None:
        self._write({"phase": name[:200], "progress_done": 0, "progress_total": total, "heartbeat_at": timezone.now()})
        self._last_write = time.monotonic()

    def _write(self, fields: dict[str, Any]) -> None:
        updated = Run.objects.filter(pk=self.run_id, status=RunStatus.RUNNING).update(**fields)
        if updated == 0:
            raise RunCancelled(f"run {self.run_id} is no longer running")


def _finish(run_id: int, status: RunStatus, **fields: Any) -> None:
    Run.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(status=status, finished_at=timezone.now(), **fields)


def run_execute(*, run_id: int, execute: Callable[..., dict[str, Any]] | None = None) -> None:
    """Claim run ``run_id`` and execute it, always leaving a final state. Safe to call twice."""
    if not run_claim(run_id=run_id):
        logger.info("run %s was not claimed (taken by another worker, cancelled or finished)", run_id)
        return
    run = Run.objects.get(pk=run_id)
    kind_spec = job_kind(run.kind)
    execute = execute or kind_spec.execute
    progress = RunProgress(run_id)
    try:
        device = resolve_device() if kind_spec.queue == "gpu" else "cpu"
        if kind_spec.queue == "gpu":
            fix_mmap_threshold()  # else a long pass's heap grows with the dataset (see analysis.engine.allocator)
        Run.objects.filter(pk=run_id).update(device=device)
        result = execute(run=run, progress=progress, device=device)
    except RunCancelled:
        Run.objects.filter(pk=run_id, status=RunStatus.CANCELLED, finished_at__isnull=True).update(
            finished_at=timezone.now()
        )
        logger.info("run %s stopped after cancellation", run_id)
    except SoftTimeLimitExceeded:
        _finish(
            run_id,
            RunStatus.FAILED,
            phase="Stopped",
            error=f"The run exceeded its time limit of {kind_spec.soft_time_limit} s and was stopped.",
        )
    except RunInputError as error:
        _finish(run_id, RunStatus.FAILED, phase="Stopped", error=str(error))
    except Exception as error:  # any other failure must still leave a readable final state
        logger.exception("run %s failed", run_id)
        _finish(
            run_id,
            RunStatus.FAILED,
            phase="Stopped",
            error=f"{type(error).__name__}: {error}"[:2000],
            error_detail=traceback.format_exc(),
        )
    else:
        _finish(run_id, RunStatus.SUCCEEDED, phase="Done", result=result or {}, progress_done=F("progress_total"))


def run_cancel(*, run: Run) -> bool:
    """Cancel a queued or running run. A running job stops at its next progress report."""
    updated = Run.objects.filter(pk=run.pk, status__in=ACTIVE_RUN_STATUSES).update(
        status=RunStatus.CANCELLED, phase="Cancelled"
    )
    Run.objects.filter(pk=run.pk, status=RunStatus.CANCELLED, started_at__isnull=True).update(
        finished_at=timezone.now()
    )
    return updated == 1


def run_fail_stale(*, now: datetime | None = None) -> int:
    """Mark failed the running runs whose worker process is gone (same host: checked at once) or stopped
    reporting for longer than the kind's time limit (any host).

    A worker that is killed cannot write a final state; this makes the loss visible instead of leaving a
    run "running" for ever. Whatever the run had written stays unfinished (a dissection stays incomplete),
    and a redelivered task cannot claim the run again. Returns the number of runs marked. ``now`` (default: the
    clock) is the moment the heartbeats are judged against.
    """
    now = timezone.now() if now is None else now
    marked = 0
    for run in Run.objects.filter(status=RunStatus.RUNNING).only("pk", "kind", "heartbeat_at", "worker"):
        if worker_gone(run.worker):
            marked += Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING, worker=run.worker).update(
                status=RunStatus.FAILED,
                finished_at=now,
                phase=WORKER_LOST_PHASE,
                error=f"The worker process executing this run ({run.worker}) stopped before it finished (killed "
                "or crashed); the run's results, if any, were not saved. Start it again.",
            )
            continue
        try:
            limit = job_kind(run.kind).time_limit
        except KeyError:
            continue
        if run.heartbeat_at is not None and now - run.heartbeat_at > timedelta(seconds=limit + 60):
            marked += Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
                status=RunStatus.FAILED,
                finished_at=now,
                phase=WORKER_LOST_PHASE,
                error=f"The worker stopped reporting progress for more than {limit + 60} s "
                "(it was probably killed); the run's results, if any, were not saved.",
            )
    return marked


# -- shards: one run split over image ranges --------------------------------------------------------------

MAX_SHARDS = 256
SHARD_POLL_SECONDS = 1.0


def in_worker() -> bool:
    """True when this code runs inside a Celery task on a worker (then shards are queued for other workers)."""
    from celery import current_task

    return bool(current_task) and not getattr(current_task.request, "called_directly", True)


def shard_param_fields(parent: str) -> dict[str, Any]:
    """The parameters of a shard run: its parent (``parent``, a row id), its number and its image range."""
    from analysis import params as p

    return {
        parent: p.integers(1, 2**63 - 1),
        "shard": p.integers(0, MAX_SHARDS - 1),
        "start": p.integers(0, 2**63 - 1),
        "stop": p.integers(1, 2**63 - 1),
    }


def shard_range_rules(params: dict[str, Any]) -> None:
    from analysis import params as p

    if params["start"] >= params["stop"]:
        raise p.ParamsError({"stop": "must lie after start"})


def run_shards(*, run: Run, kind: str, shard_params: list[dict[str, Any]], progress: RunProgress) -> list[Run]:
    """Create one run of ``kind`` per image range (``shard_params``: each with ``start`` and ``stop``) and see them
    all finish; the shard runs, refreshed, in order.

    On a worker each shard is queued (other workers may take them) and this run then executes, one after the
    other, every shard nobody has claimed yet — from the last, since the queue hands the first ones out, so the
    shards spread over the workers instead of the parent racing them for the same ones; then it waits for the
    shards others hold. Elsewhere (inline) the shards execute here in order, stopping at the first that fails.
    Cancelling the parent cancels its shards.
    """
    total = sum(params["stop"] - params["start"] for params in shard_params)
    distributed = in_worker()
    shard_runs: list[Run] = []
    try:
        for params in shard_params:
            shard, _ = run_start(
                kind=kind, params=params, created_by=run.created_by, inline=not distributed, reuse=False
            )
            shard_runs.append(shard)
            if not distributed:
                progress(_shards_done(shard_runs), total)
                if shard.status != RunStatus.SUCCEEDED:
                    break
        if distributed:
            for shard in reversed(shard_runs):
                run_execute(run_id=shard.pk)  # a no-op when another worker claimed it first
                progress(_shards_done(shard_runs), total)
            while Run.objects.filter(pk__in=[shard.pk for shard in shard_runs]).active().exists():
                progress(_shards_done(shard_runs), total)
                time.sleep(SHARD_POLL_SECONDS)
    except RunCancelled:
        for shard in shard_runs:
            run_cancel(run=shard)
        raise
    for shard in shard_runs:
        shard.refresh_from_db()
    return shard_runs


def refuse_failed_shards(shard_runs: list[Run]) -> None:
    """Fail the parent, naming the first shard that did not succeed (its own message quoted)."""
    for index, shard in enumerate(shard_runs):
        if shard.status != RunStatus.SUCCEEDED:
            raise RunInputError(f"Shard {index} (run {shard.pk}) ended {shard.status}: {shard.error or 'no message'}")


def _shards_done(shard_runs: list[Run]) -> int:
    """Images done over the shards: a finished shard's whole range, a running one's progress."""
    rows = Run.objects.filter(pk__in=[shard.pk for shard in shard_runs]).values_list(
        "status", "progress_done", "params"
    )
    return sum(
        params["stop"] - params["start"] if status == RunStatus.SUCCEEDED else done for status, done, params in rows
    )
