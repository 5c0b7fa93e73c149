"""The embedded broker: kombu's filesystem transport, made safe against partial writes and corrupt files.

kombu's own filesystem transport (5.7) creates a message file under its final name and then writes into
it, and a consumer moves and reads whatever files match, without a lock: a consumer that lists the folder
between the two reads an empty or half-written file and dies with ``JSONDecodeError`` (kombu issue 1551;
the exchange files of its broadcast tables have the same race). Its consumed files also go through the
system temp folder, which may be another file system (a copy, not a rename).

This transport keeps the on-disk format (one ``<ms>_<uuid>.<queue>.msg`` JSON file per message, so
queue folders written by kombu's transport are still read) and changes three things:

* a message or exchange table is written to a hidden temporary name, flushed to disk, and renamed into
  place with :func:`os.replace`, so a reader sees a whole file or none;
* a consumer takes a message by renaming it into the processed folder (same file system: atomic, and
  two consumers cannot both take it), and a file that does not parse is moved to ``corrupt/`` beside the
  queue folder with a log line, never raised into the worker;
* an exchange table that does not parse is logged and read as empty, and a process always routes by the
  bindings it declared itself as well (kept in memory), so its messages are never dropped for want of a file.

Settings use it for ``CELERY_BROKER_URL=filesystem://`` (``CELERY_BROKER_TRANSPORT``), and switch the
worker's remote control (broadcast over those exchange files) off: cancelling a run needs no broadcast,
the run row's status is what a job checks (:mod:`analysis.services.runs`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

CORRUPT_FOLDER = "corrupt"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a part of it: temp file, fsync, rename."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def message_file_name(queue: str) -> str:
    """The name kombu's filesystem transport gives a message: sorts by time, ends with ``.<queue>.msg``."""
    return f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"


def message_queue(file_name: str) -> str | None:
    """The queue a message file belongs to (None for other files: temporary, hidden, foreign)."""
    stem, dot, rest = file_name.partition(".")
    if not stem or not dot or not rest.endswith(".msg"):
        return None
    return rest[: -len(".msg")]


class Channel(filesystem.Channel):
    """A filesystem channel whose writes are atomic and whose reads survive a corrupt file."""

    @property
    def corrupt_folder(self) -> Path:
        return Path(self.data_folder_in).parent / CORRUPT_FOLDER

    def _processing_folder(self) -> Path:
        # Always on the queue's file system, so that taking a message is one atomic rename.
        return Path(self.processed_folder)

    def _put(self, queue, payload, **kwargs):
        path = Path(self.data_folder_out) / message_file_name(queue)
        try:
            write_atomically(path, str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {str(path)!r} to directory") from exc

    def _get(self, queue):
        folder = Path(self.data_folder_in)
        processing = self._processing_folder()
        for name in sorted(os.listdir(folder)):
            if message_queue(name) != queue:
                continue
            taken = processing / name
            try:
                os.replace(folder / name, taken)
            except FileNotFoundError:
                continue  # another consumer took it first
            except OSError:
                processing.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(folder / name, taken)
                except OSError:
                    continue
            try:
                raw = taken.read_bytes()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {str(taken)!r} from queue.") from exc
            try:
                payload = loads(bytes_to_str(raw))
                if not isinstance(payload, dict):
                    raise ValueError(f"a message is a JSON object, not {type(payload).__name__}")
            except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._set_aside(taken, error)
                continue
            if not self.store_processed:
                taken.unlink(missing_ok=True)
            return payload
        raise Empty()

    def _set_aside(self, path: Path, error: Exception) -> None:
        target = self.corrupt_folder / path.name
        try:
            self.corrupt_folder.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        except OSError:
            path.unlink(missing_ok=True)
            target = None
        logger.error(
            "Broker message %s could not be read (%s: %s); %s. Its run, if any, is requeued or failed "
            "by the orphan check.",
            path.name,
            type(error).__name__,
            error,
            f"moved to {target}" if target else "deleted",
        )

    def get_table(self, exchange):
        """The exchange's bindings: those of every process (its file) and this process's own (kept in memory, so
        that a table file removed or unreadable never makes this process drop the messages it routes)."""
        rows = self._file_table(exchange)
        for row in self.state.exchanges.get(exchange, {}).get("table", []):
            row = filesystem.exchange_queue_t(*row)
            if row not in rows:
                rows.append(row)
        return rows

    def _file_table(self, exchange):
        path = self._exchange_file(exchange)
        try:
            table = loads(bytes_to_str(path.read_bytes()))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {path}") from exc
        except ValueError as error:
            logger.error("Broker exchange table %s could not be read (%s); treated as empty.", path, error)
            return []
        return [filesystem.exchange_queue_t(*row) for row in table]

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        row = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda rows: rows if row in rows else [row, *rows])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        row = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda rows: [kept for kept in rows if kept != row])

    def _update_table(self, exchange, change) -> None:
        """Read-modify-write of an exchange table under an exclusive lock file, written atomically."""
        path = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(path.with_name(f".{path.name}.lock"), "wb") as lock:
                filesystem.lock(lock, filesystem.LOCK_EX)
                try:
                    before = self._file_table(exchange)
                    after = change(before)
                    if after != before or not path.exists():
                        write_atomically(path, str_to_bytes(dumps([list(row) for row in after])))
                finally:
                    filesystem.unlock(lock)
        except OSError as exc:
            raise ChannelError(f"Cannot open {path}") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel` (atomic writes, corrupt files set aside)."""

    Channel = Channel
    global_state = virtual.BrokerState()


def decode_task_message(payload: dict) -> tuple[str, list] | None:
    """``(task name, positional args)`` of a Celery message as kombu stores it (protocol 1 or 2), or None."""
    try:
        headers = payload.get("headers") or {}
        body = payload["body"]
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        if isinstance(decoded, list):  # protocol 2: [args, kwargs, embed]
            return headers.get("task", ""), list(decoded[0])
        return decoded.get("task", ""), list(decoded.get("args", []))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def queued_messages_filesystem(folder: Path, queue: str) -> list[dict]:
    """The message payloads of ``queue`` waiting in a filesystem queue folder (files that do not parse are
    skipped)."""
    payloads = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    for name in names:
        if message_queue(name) != queue:
            continue
        try:
            payloads.append(json.loads((folder / name).read_bytes()))
        except (OSError, ValueError):
            continue  # consumed meanwhile, or corrupt (the consumer sets it aside)
    return payloads


def waiting_messages(app, queue: str) -> list[dict] | None:
    """The message payloads of ``queue`` that a worker can still receive, or None when this broker cannot be read
    without consuming. Filesystem: the queue folder. Redis: the queue's lists (every priority) and the
    delivered-but-unacknowledged messages (Redis gives those back after its visibility timeout).
    """
    transport = app.conf.broker_transport or app.conf.broker_url.partition("://")[0]
    options = app.conf.broker_transport_options or {}
    if transport in ("filesystem", "unitscope.broker:Transport") and options.get("data_folder_in"):
        return queued_messages_filesystem(Path(options["data_folder_in"]), queue)
    if transport in ("redis", "rediss"):
        return _waiting_messages_redis(app, queue)
    return None


def _waiting_messages_redis(app, queue: str) -> list[dict] | None:
    try:
        with app.connection_for_read() as conn:
            channel = conn.default_channel
            client = channel.client
            raw = []
            for priority in channel.priority_steps:
                raw.extend(client.lrange(channel._q_for_pri(queue, priority), 0, -1))
            payloads = [json.loads(item) for item in raw]
            for item in client.hvals(channel.unacked_key):  # [payload, exchange, routing key], any queue
                delivered = json.loads(item)
                payloads.append(delivered[0] if isinstance(delivered, list) else delivered)
            return payloads
    except Exception:
        logger.warning("could not read the Redis queue %s", queue, exc_info=True)
        return None
