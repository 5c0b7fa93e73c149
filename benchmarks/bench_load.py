"""Load: N experts (next task → view → submit) and N crowd workers (next HIT → view → submit) at once against
gunicorn + PostgreSQL, on the loopback only, measured in one run (issue 10 item 3).

The benchmark starts its own throwaway PostgreSQL cluster (``benchmarks.loadkit``: a temporary directory, a free
port; never the machine's shared server), migrates a new database, builds an expert study and a crowd validation
study, and serves the project with gunicorn on 127.0.0.1, configured as in production by ``gunicorn.conf.py``
(sync workers, CPUs + 1, warmed before forking). Then every simulated person runs in its own thread of this
process (a lean ``http.client`` session: the clients share the server's CPUs):

* an expert logs in and repeats: ``GET next`` (the atomic claim; answered by a redirect to the task) →
  ``GET`` the task page → ``GET`` its grid image → ``POST`` the answer;
* a crowd worker enters by the study's own link, starts, and repeats: ``GET next`` (claim) → ``GET`` the HIT →
  ``GET`` its grid → ``POST`` the answer.

Phases: (0) one expert alone (the service time of a request); (1) the N experts, every round's next-task requests
released at the same instant by a barrier (N simultaneous claims: what the target is about, as in the Label Studio
measurement of REFERENCE.md); (2) the N crowd workers likewise; (3) experts and crowd together, back to back with
no pause (a stress figure).

Bounded: each person does at most ``--per-person`` rounds, and the whole run stops after ``--max-seconds``.

Printed: latency p50/p95/max per step for experts and crowd separately (next-task p95 target ≤ 100 ms at 30
concurrent), requests per second, and the bookkeeping check: every submit answered 2xx/3xx is exactly one row
(judgments: first judgments per rater and task; crowd: submitted assignments), with no duplicate and nothing
lost; and that grids are served as files (the bytes' SHA-256 is the grid's content-hash name).

``python -m benchmarks bench_load`` (defaults: 30 + 30 people, 6 rounds each) or ``python -m benchmarks.bench_load
--people 10 --per-person 3``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadkit import (
    GRID_SRC,
    HIDDEN_SHOWN,
    Server,
    Session,
    ThrowawayPostgres,
    django_env,
    location,
    process_tree_cpu_seconds,
    setup_world,
)

TARGET_P95_MS = 100.0


class Recorder:
    """Latencies per (group, step) and the outcome of every submit, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.next_by_round: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.statuses: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.submitted: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.grids: list[tuple[str, bytes]] = []
        self.errors: list[str] = []

    def timed(self, group: str, step: str, call, round_: int | None = None):
        start = time.perf_counter()
        status, headers, body = call()
        elapsed = (time.perf_counter() - start) * 1000
        with self.lock:
            self.latency[(group, step)].append(elapsed)
            if round_ is not None:
                self.next_by_round[group][round_].append(elapsed)
            self.statuses[(group, step)][status] += 1
        return status, headers, body


def _wait(barrier: threading.Barrier | None) -> None:
    if barrier is not None:
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass


def expert_client(
    base: str,
    username: str,
    study: int,
    rounds: int,
    deadline: float,
    record: Recorder,
    group: str = "expert",
    barrier: threading.Barrier | None = None,
    session: Session | None = None,
) -> Session:
    session = session or Session(base)
    try:
        if not session.csrf_token():
            session.login(username)
        for round_ in range(rounds):
            if time.monotonic() > deadline:
                return session
            _wait(barrier)
            status, headers, _ = record.timed(
                group, "next", lambda: session.get(f"/expert/studies/{study}/next/"), round_
            )
            if status != 302:
                return session  # 200: the "all done" page
            task_url = location(headers)
            status, _, page = record.timed(group, "view", lambda: session.get(task_url))
            shown = HIDDEN_SHOWN.search(page)
            grid = GRID_SRC.search(page)
            if grid:
                _, _, image = record.timed(group, "grid", lambda: session.get(grid.group(1).decode()))
                with record.lock:
                    record.grids.append((grid.group(1).decode(), image))
            data = {"answer": "no", "shown": shown.group(1).decode() if shown else ""}
            status, _, _ = record.timed(group, "submit", lambda: session.post(task_url, data))
            if status in (200, 302):
                with record.lock:
                    record.submitted["expert"].append((username, task_url))
    except Exception as error:
        with record.lock:
            record.errors.append(f"expert {username}: {type(error).__name__}: {error}")
    return session


def crowd_client(
    base: str,
    token: str,
    number: int,
    rounds: int,
    deadline: float,
    record: Recorder,
    group: str = "crowd",
    barrier: threading.Barrier | None = None,
    session: Session | None = None,
) -> Session:
    session = session or Session(base)
    try:
        if not getattr(session, "next_url", ""):
            session.get(f"/crowd/s/{token}/")
            status, headers, _ = session.post(f"/crowd/s/{token}/", {})
            session.next_url = location(headers)
            if status != 302 or "/crowd/w/" not in session.next_url:
                raise RuntimeError(f"could not start ({status})")
        next_url = session.next_url
        for round_ in range(rounds):
            if time.monotonic() > deadline:
                return session
            _wait(barrier)
            status, headers, _ = record.timed(group, "next", lambda: session.get(next_url), round_)
            if status != 302 or "/a/" not in location(headers):
                return session  # the end of the session (or nothing left)
            task_url = location(headers)
            status, _, page = record.timed(group, "view", lambda: session.get(task_url))
            grid = GRID_SRC.search(page)
            if grid:
                _, _, image = record.timed(group, "grid", lambda: session.get(grid.group(1).decode()))
                with record.lock:
                    record.grids.append((grid.group(1).decode(), image))
            status, _, _ = record.timed(group, "submit", lambda: session.post(task_url, {"answer": "yes"}))
            if status in (200, 302):
                with record.lock:
                    record.submitted["crowd"].append((str(number), task_url))
    except Exception as error:
        with record.lock:
            record.errors.append(f"crowd {number}: {type(error).__name__}: {error}")
    return session


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def run(
    *,
    people: int = 30,
    per_person: int = 6,
    max_seconds: float = 120.0,
    workers: int | None = None,
    threads: int | None = None,
) -> dict:
    """Build everything, drive ``people`` experts and ``people`` crowd workers at once, check, report."""
    results: dict = {}
    with ThrowawayPostgres() as pg, tempfile.TemporaryDirectory(prefix="unitscope-load-") as data_dir:
        # Rate limits stay on; every simulated worker enters from the same loopback address, so the per-address
        # entry limit is raised (the per-worker limit is the production default).
        env = django_env(
            pg.create_database("unitscope_load"),
            Path(data_dir),
            CONN_MAX_AGE="60",
            UNITSCOPE_RATE_LIMIT_ENABLED="1",
            UNITSCOPE_RATE_LIMIT_CROWD_ENTRY="6000/m",
        )
        started = time.perf_counter()
        world = setup_world(
            env, experts=people, crowd=people, tasks_per_expert=2 * per_person + 1, hits_per_worker=2 * per_person
        )
        results["setup_seconds"] = time.perf_counter() - started
        with Server(env, workers=workers, threads=threads) as server:
            record = Recorder()
            deadline = time.monotonic() + max_seconds
            experts: dict[str, Session] = {}
            crowd: dict[int, Session] = {}

            def phase(kinds: tuple[str, ...], group: str, *, burst: bool) -> None:
                size = people * len(kinds)
                barrier = threading.Barrier(size) if burst else None
                threads_ = []
                for kind in kinds:
                    for number, name in enumerate(world["experts"]):
                        if kind == "expert":

                            def target(name=name):
                                return experts.__setitem__(
                                    name,
                                    expert_client(
                                        server.base,
                                        name,
                                        world["study"],
                                        per_person,
                                        deadline,
                                        record,
                                        group,
                                        barrier,
                                        experts.get(name),
                                    ),
                                )
                        else:

                            def target(number=number):
                                return crowd.__setitem__(
                                    number,
                                    crowd_client(
                                        server.base,
                                        world["crowd_token"],
                                        number,
                                        per_person,
                                        deadline,
                                        record,
                                        group,
                                        barrier,
                                        crowd.get(number),
                                    ),
                                )

                        threads_.append(threading.Thread(target=target))
                for thread in threads_:
                    thread.start()
                for thread in threads_:
                    thread.join(timeout=max_seconds + 60)

            started = time.perf_counter()
            cpu_before = process_tree_cpu_seconds(server.process.pid) + process_tree_cpu_seconds(pg.pid)
            database_cpu_before = process_tree_cpu_seconds(pg.pid)
            client_cpu_before = time.process_time()
            # 0. One expert alone: the service time of each request, with nobody else asking.
            experts[world["experts"][0]] = expert_client(
                server.base, world["experts"][0], world["study"], per_person, deadline, record, "alone"
            )
            # 1. N experts, each round's next-task requests released at the same instant (N simultaneous claims);
            # 2. the same for N crowd workers; 3. experts and crowd together, back to back, no pause.
            phase(("expert",), "expert", burst=True)
            phase(("crowd",), "crowd", burst=True)
            phase(("expert", "crowd"), "mixed", burst=False)
            results["seconds"] = time.perf_counter() - started
            results["database_cpu_seconds"] = process_tree_cpu_seconds(pg.pid) - database_cpu_before
            results["client_cpu_seconds"] = time.process_time() - client_cpu_before
            results["server_cpu_seconds"] = (
                process_tree_cpu_seconds(server.process.pid) + process_tree_cpu_seconds(pg.pid) - cpu_before
            )
        judgment_rows = pg.query(
            "unitscope_load",
            "SELECT count(*), count(DISTINCT (task_id, rater_id)) FROM "
            "annotation_judgment WHERE revision_of_id IS NULL",
        )[0]
        crowd_rows = pg.query(
            "unitscope_load",
            "SELECT count(*), count(DISTINCT (hit_id, worker_id)) FROM "
            "annotation_crowdassignment WHERE state = 'submitted'",
        )[0]
        grid_hashes = dict(pg.query("unitscope_load", "SELECT path, sha256 FROM analysis_renderedgrid"))
    results.update(
        record=record, world=world, judgment_rows=judgment_rows, crowd_rows=crowd_rows, grid_hashes=grid_hashes
    )
    return results


def report(results: dict, *, people: int) -> bool:
    record: Recorder = results["record"]
    ok = True
    print(f"{people} experts + {people} crowd workers at once; gunicorn + PostgreSQL (throwaway cluster), loopback")
    print(f"world built in {results['setup_seconds']:.1f} s; load ran {results['seconds']:.1f} s")
    requests = sum(len(values) for values in record.latency.values())
    print(f"{requests} requests, {requests / results['seconds']:.0f} requests/s")
    print(f"{'group':8} {'step':7} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  statuses")
    for (group, step), values in sorted(record.latency.items()):
        statuses = " ".join(f"{status}×{count}" for status, count in sorted(record.statuses[(group, step)].items()))
        print(
            f"{group:8} {step:7} {len(values):5d} {statistics.median(values):8.1f} {percentile(values, 0.95):8.1f} "
            f"{max(values):8.1f}  {statuses}"
        )
    for group, what in (
        ("expert", f"{people} experts claiming at the same instant"),
        ("crowd", f"{people} crowd workers claiming at the same instant"),
    ):
        values = record.latency.get((group, "next"), [])
        if values:
            p95 = percentile(values, 0.95)
            met = p95 <= TARGET_P95_MS
            ok &= met
            print(
                f"next-task p95, {what}: {p95:.1f} ms (target ≤ {TARGET_P95_MS:.0f} ms: "
                f"{'met' if met else 'MISSED'}); round by round: "
                + ", ".join(
                    f"{percentile(times, 0.95):.0f}" for _, times in sorted(record.next_by_round[group].items())
                )
                + " ms"
            )
    alone = record.latency.get(("alone", "next"), [])
    if alone:
        print(
            f"next-task, one expert alone: p50 {statistics.median(alone):.1f} ms (the service time; the rest is "
            "queueing for the CPUs)"
        )
    mixed = record.latency.get(("mixed", "next"), [])
    if mixed:
        print(
            f"next-task p95, {people} experts + {people} crowd workers back to back (no pause): "
            f"{percentile(mixed, 0.95):.1f} ms (stress, no target)"
        )
    import os

    print(
        f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
        "(other processes share these CPUs)"
    )
    cpu_ms = 1000 * results["server_cpu_seconds"] / requests
    print(
        f"server CPU per request (gunicorn + PostgreSQL processes, user + system): {cpu_ms:.1f} ms; with the "
        f"{os.cpu_count()} CPUs to itself the server would drain {people} simultaneous requests in about "
        f"{people * cpu_ms / os.cpu_count():.0f} ms (an estimate from the measured CPU time, not a latency)"
    )
    print(f"of which PostgreSQL: {1000 * results['database_cpu_seconds'] / requests:.1f} ms")
    print(
        f"client CPU per request (this process: the simulated people): "
        f"{1000 * results['client_cpu_seconds'] / requests:.1f} ms"
    )
    expert_ok = len(record.submitted["expert"]) == results["judgment_rows"][0] == results["judgment_rows"][1]
    crowd_ok = len(record.submitted["crowd"]) == results["crowd_rows"][0] == results["crowd_rows"][1]
    print(
        f"expert submits answered 2xx/3xx: {len(record.submitted['expert'])}; judgment rows: "
        f"{results['judgment_rows'][0]} ({results['judgment_rows'][1]} distinct rater×task) → "
        f"{'no judgment lost or duplicated' if expert_ok else 'MISMATCH'}"
    )
    print(
        f"crowd submits answered 2xx/3xx: {len(record.submitted['crowd'])}; submitted assignments: "
        f"{results['crowd_rows'][0]} ({results['crowd_rows'][1]} distinct HIT×worker) → "
        f"{'no answer lost or duplicated' if crowd_ok else 'MISMATCH'}"
    )
    hashes = {f"/media/{path}": sha for path, sha in results["grid_hashes"].items()}
    grids_ok = bool(record.grids) and all(
        hashlib.sha256(body).hexdigest() == hashes.get(url) for url, body in record.grids
    )
    print(
        f"grids fetched: {len(record.grids)}; every one is the stored file (SHA-256 = its content-hash name): "
        f"{'yes' if grids_ok else 'NO'}"
    )
    if record.errors:
        print(f"{len(record.errors)} client errors, e.g. {record.errors[:3]}")
    return ok and expert_ok and crowd_ok and grids_ok and not record.errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=30, help="experts, and as many crowd workers")
    parser.add_argument("--per-person", type=int, default=6, help="rounds each person does at most")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, help="gunicorn worker processes (default: gunicorn.conf.py's)")
    parser.add_argument("--threads", type=int, help="threads per gunicorn worker (default: gunicorn.conf.py's)")
    options = parser.parse_args(argv if argv is not None else [])
    results = run(
        people=options.people,
        per_person=options.per_person,
        max_seconds=options.max_seconds,
        workers=options.workers,
        threads=options.threads,
    )
    all_met = report(results, people=options.people)
    print("all targets met" if all_met else "some targets missed")


if __name__ == "__main__":
    main(sys.argv[1:])
