"""The embedded broker under concurrency: two processes write messages while two read, on kombu's filesystem
transport, on UnitScope's (unitscope/broker.py), and on kombu's SQLAlchemy transport over SQLite when SQLAlchemy is
installed (it is not a requirement). Prints, per transport, messages delivered / lost / doubled, readers that died
and the time, with the load average beside them.

`python -m benchmarks.bench_broker [trials]`
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

PRODUCERS, CONSUMERS, PER_PRODUCER = 2, 2, 450


def _connection(kind: str, root: str):
    from kombu import Connection

    if kind == "sqlalchemy":
        return Connection(f"sqla+sqlite:///{root}/broker.sqlite3")
    folders = {name: os.path.join(root, name) for name in ("queue", "processed", "control")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    transport = "unitscope.broker:Transport" if kind == "unitscope" else "filesystem"
    return Connection(
        "filesystem://",
        transport=transport,
        transport_options={
            "data_folder_in": folders["queue"],
            "data_folder_out": folders["queue"],
            "processed_folder": folders["processed"],
            "control_folder": folders["control"],
            "polling_interval": 0.05,
        },
    )


def _produce(kind: str, root: str, producer: int, errors) -> None:
    try:
        with _connection(kind, root) as connection:
            queue = connection.SimpleQueue("work")
            for number in range(PER_PRODUCER):
                queue.put({"producer": producer, "n": number})
            queue.close()
    except Exception as error:
        errors.put(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")


def _consume(kind: str, root: str, received, errors, stop) -> None:
    try:
        with _connection(kind, root) as connection:
            queue = connection.SimpleQueue("work")
            while not stop.is_set():
                try:
                    message = queue.get(timeout=0.3)
                except queue.Empty:
                    continue
                received.put((message.payload["producer"], message.payload["n"]))
                message.ack()
    except Exception as error:
        errors.put(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")


def trial(kind: str) -> None:
    context = multiprocessing.get_context("spawn")
    root = tempfile.mkdtemp(prefix=f"bench-broker-{kind}-")
    with _connection(kind, root) as connection:
        connection.SimpleQueue("work").close()
    received, errors, stop = context.Queue(), context.Queue(), context.Event()
    consumers = [context.Process(target=_consume, args=(kind, root, received, errors, stop)) for _ in range(CONSUMERS)]
    producers = [context.Process(target=_produce, args=(kind, root, k, errors)) for k in range(PRODUCERS)]
    started = time.monotonic()
    for process in consumers + producers:
        process.start()
    got = []
    total = PRODUCERS * PER_PRODUCER
    while len(got) < total and any(process.is_alive() for process in consumers):
        try:
            got.append(received.get(timeout=1))
        except Exception:
            if time.monotonic() - started > 300:
                break
    elapsed = time.monotonic() - started
    stop.set()
    for process in consumers + producers:
        process.join(timeout=30)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    distinct = set(got)
    print(
        f"{kind:>10}: {len(distinct)}/{total} delivered, {total - len(distinct)} lost, "
        f"{len(got) - len(distinct)} doubled, {len(failures)} processes died, {elapsed:.1f} s, "
        f"load {os.getloadavg()[0]:.1f}" + (f"  [{failures[0]}]" if failures else "")
    )


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    trials = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1
    kinds = ["filesystem", "unitscope"]
    try:
        import sqlalchemy  # noqa: F401

        kinds.append("sqlalchemy")
    except ImportError:
        print("(SQLAlchemy is not installed: kombu's SQLAlchemy transport is left out)")
    for _ in range(trials):
        for kind in kinds:
            trial(kind)


if __name__ == "__main__":
    main()
