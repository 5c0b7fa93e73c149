"""The embedded broker (unitscope.broker): kombu's filesystem transport made safe against partial writes.

No Django and no worker here: kombu connections on temporary folders, as the web process and the worker use them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from unitscope.broker import Transport, decode_task_message, message_queue, queued_messages_filesystem

PARTIAL = b'{"body": "eyJhcmdzIjogWzFdfQ==", "content-enc'  # a message cut off while it was written


def connect(root: Path, transport: str | type = Transport) -> Connection:
    folders = {name: root / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return Connection(
        "filesystem://",
        transport=transport,
        transport_options={
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            "polling_interval": 0.05,
        },
    )


def write_partial_message(root: Path, queue: str) -> Path:
    # Named as kombu names messages, and sorting first: the consumer reads it before any whole message.
    path = root / "queue" / f"0_{uuid.uuid4()}.{queue}.msg"
    path.write_bytes(PARTIAL)
    return path


def test_kombus_own_filesystem_transport_dies_on_a_half_written_message(tmp_path):
    """The crash a newcomer met (kombu issue 1551): the worker's consumer raises on a partial file."""
    with connect(tmp_path, transport="filesystem") as connection:
        queue = connection.SimpleQueue("work")
        queue.put({"n": 1})
        write_partial_message(tmp_path, "work")
        with pytest.raises(json.JSONDecodeError):
            queue.get(timeout=2)
        queue.close()


def test_a_half_written_message_is_set_aside_with_a_log_line_and_the_next_is_delivered(tmp_path, caplog):
    with connect(tmp_path) as connection:
        queue = connection.SimpleQueue("work")
        queue.put({"n": 1})
        partial = write_partial_message(tmp_path, "work")
        with caplog.at_level(logging.ERROR, logger="unitscope.broker"):
            message = queue.get(timeout=2)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()
    assert not partial.exists()
    assert (tmp_path / "corrupt" / partial.name).read_bytes() == PARTIAL
    assert any(
        partial.name in record.getMessage() and "JSONDecodeError" in record.getMessage() for record in caplog.records
    )
    assert os.listdir(tmp_path / "queue") == []  # nothing left, nothing stuck


def test_a_message_appears_in_the_queue_only_once_it_is_whole(tmp_path, monkeypatch):
    completed = []  # messages whose put returned
    observations = []  # (messages visible, messages completed) whenever bytes are on disk but not yet renamed
    real_fsync = os.fsync

    def observing_fsync(fd):
        visible = [name for name in os.listdir(tmp_path / "queue") if message_queue(name)]
        observations.append((len(visible), len(completed)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", observing_fsync)
    with connect(tmp_path) as connection:
        queue = connection.SimpleQueue("work")
        for number in range(3):
            queue.put({"n": number})
            completed.append(number)
        queue.close()
    assert len(observations) >= 3
    assert all(visible == done for visible, done in observations)  # the message being written is never visible
    names = sorted(name for name in os.listdir(tmp_path / "queue") if message_queue(name))
    assert len(names) == 3
    assert not [name for name in os.listdir(tmp_path / "queue") if name.endswith(".tmp")]


def _produce(root: str, producer: int, count: int) -> None:
    with connect(Path(root)) as connection:
        queue = connection.SimpleQueue("work")
        for number in range(count):
            queue.put({"producer": producer, "n": number})
        queue.close()


def _consume(root: str, results, stop) -> None:
    with connect(Path(root)) as connection:
        queue = connection.SimpleQueue("work")
        while not stop.is_set():
            try:
                message = queue.get(timeout=0.2)
            except queue.Empty:
                continue
            results.put((message.payload["producer"], message.payload["n"]))
            message.ack()
        queue.close()


def test_concurrent_producers_and_consumers_lose_nothing_and_deliver_once(tmp_path):
    """Two processes write while two read: every message arrives exactly once (kombu's own transport loses the
    consumers to JSONDecodeError here within a second)."""
    context = multiprocessing.get_context("spawn")
    results, stop = context.Queue(), context.Event()
    consumers = [context.Process(target=_consume, args=(str(tmp_path), results, stop)) for _ in range(2)]
    producers = [context.Process(target=_produce, args=(str(tmp_path), k, 150)) for k in range(2)]
    for process in consumers + producers:
        process.start()
    received = []
    try:
        while len(received) < 300:
            received.append(results.get(timeout=60))
    finally:
        stop.set()
        for process in consumers + producers:
            process.join(timeout=30)
    assert all(process.exitcode == 0 for process in consumers + producers)
    assert sorted(received) == sorted((k, n) for k in range(2) for n in range(150))
    assert not os.listdir(tmp_path / "queue")


def test_an_unreadable_exchange_table_is_read_as_empty_and_rewritten_whole(tmp_path, caplog):
    with connect(tmp_path) as connection:
        channel = connection.default_channel
        table = tmp_path / "control" / "events.exchange"
        table.write_bytes(b'[["", "", "q1"')
        with caplog.at_level(logging.ERROR, logger="unitscope.broker"):
            assert channel.get_table("events") == []
        assert any("events.exchange" in record.getMessage() for record in caplog.records)
        channel._queue_bind("events", "", "", "q2")
        channel._queue_bind("events", "", "", "q3")
        channel._queue_bind("events", "", "", "q2")
        assert [row.queue for row in channel.get_table("events")] == ["q3", "q2"]
        channel._delete("q3", "events", "", "")
        assert [row.queue for row in channel.get_table("events")] == ["q2"]
        assert json.loads(table.read_bytes()) == [["", "", "q2"]]


def test_queued_celery_messages_are_listed_and_decoded(tmp_path):
    from celery import Celery

    app = Celery("listing", broker="filesystem://", set_as_current=False)
    app.conf.broker_transport = "unitscope.broker:Transport"
    connection = connect(tmp_path)
    app.conf.broker_transport_options = connection.transport_options
    app.send_task("analysis.selfcheck", args=[41], queue="gpu")
    app.send_task("analysis.extract", args=[42], queue="default")
    (tmp_path / "queue" / f"0_{uuid.uuid4()}.gpu.msg").write_bytes(PARTIAL)  # skipped, not raised
    decoded = [decode_task_message(payload) for payload in queued_messages_filesystem(tmp_path / "queue", "gpu")]
    assert decoded == [("analysis.selfcheck", [41])]
    assert decode_task_message({"body": "not base64 json"}) is None
