"""The artifact store: datasets, activation caches, tallies, weights and exports, local or in an object store.

Every artifact has a *key*: its path relative to the data dir, POSIX style (``datasets/probe-world/index.csv``,
``activations/<cache key>/maps.f16``, ``dissections/12/shard-0003.npz``). Each machine works on its own copy
under its ``UNITSCOPE_DATA_DIR`` (the *scratch*); the store is where the copies come from and go to:

* ``UNITSCOPE_STORAGE_URL`` unset (the newcomer's default): the data dir *is* the store. :func:`fetch` and
  :func:`publish` do nothing; nothing to start.
* ``UNITSCOPE_STORAGE_URL=s3://bucket/prefix`` (production): an S3-compatible object store through fsspec/s3fs
  (``UNITSCOPE_STORAGE_ENDPOINT_URL`` for MinIO, Ceph, moto...; credentials the usual boto way,
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or an instance role). A worker on another machine shares
  nothing with the web but the broker, the database and this store: it :func:`fetch`\\ es its inputs into its
  scratch, works on local files (memory-maps stay memory-maps), and :func:`publish`\\ es its outputs before it
  records them in the database, so a row never points at an artifact that is not in the store yet.

Artifacts are written once under names that change when their content would (run ids, parameter hashes,
content hashes): a file present in the scratch is the store's file, so :func:`fetch` downloads only what is
missing. Downloads land in a temporary name and are renamed into place, so a killed worker never leaves a
half-written file where another process would read it; one object is one PUT, which S3 makes visible whole.

Paths kept in the database are made portable with :func:`stored_path` (with an object store, a key when under the
data dir; on the local default the absolute path, as before) and read back with :func:`fetch` or :func:`local_path`
(a key joins this machine's data dir; an absolute path under it is a key too; any other absolute path is a folder
registered in place on a single machine and is used as it is).

Rendered grids are media, not artifacts: Django's default storage (``STORAGES["default"]``), django-storages'
S3 backend when ``UNITSCOPE_STORAGE_URL`` is set (``<prefix>/media/grids/<aa>/<sha256>.png``), served from the
store by signed (or, with ``UNITSCOPE_MEDIA_PUBLIC_URL``, public) URLs without a round trip through Django.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path, PurePosixPath

from django.conf import settings

__all__ = [
    "ArtifactStore",
    "artifact_exists",
    "artifact_key",
    "artifact_store",
    "fetch",
    "fetch_if_stored",
    "local_path",
    "publish",
    "publish_as",
    "stored_path",
]


FETCHED_MARKER = ".unitscope-fetched"
"""Left in a folder once :meth:`ArtifactStore.fetch` has downloaded all of it: later fetches list nothing."""


class ArtifactStore:
    """Keys ↔ files in ``scratch``, mirrored to the store at ``url`` (``""``: the scratch is the store)."""

    def __init__(self, scratch: str | os.PathLike[str], url: str = "", options: dict | None = None) -> None:
        self.scratch = Path(scratch).resolve()
        self.url = url.rstrip("/")
        self.options = dict(options or {})
        self._fs = None
        self._root = ""

    @property
    def remote(self) -> bool:
        return bool(self.url)

    @property
    def fs(self):
        """The fsspec filesystem of the store (created on first use)."""
        if self._fs is None:
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.options)
        return self._fs

    def remote_path(self, key: str) -> str:
        self.fs  # noqa: B018 - sets _root
        return f"{self._root}/{_check_key(key)}"

    def key(self, path: str | os.PathLike[str]) -> str:
        """The key of ``path`` (a file or folder inside the scratch); ValueError outside it."""
        relative = Path(path).resolve().relative_to(self.scratch)
        return _check_key(relative.as_posix())

    def path(self, key: str) -> Path:
        """Where ``key`` lives in this machine's scratch (not fetched: see :meth:`fetch`)."""
        return self.scratch / _check_key(key)

    def exists(self, key: str) -> bool:
        if not self.remote:
            return self.path(key).exists()
        return self.fs.exists(self.remote_path(key))

    def fetch(self, key: str) -> Path:
        """The local path of ``key`` (a file, or a folder with everything under it), downloaded if missing.

        Raises FileNotFoundError when the store has no such artifact.
        """
        local = self.path(key)
        if not self.remote:
            if not local.exists():
                raise FileNotFoundError(f"artifact {key!r} is not in {self.scratch}")
            return local
        if (local / FETCHED_MARKER).exists():  # a folder fetched whole before (artifacts never change)
            return local
        remote = self.remote_path(key)
        if self.fs.isdir(remote):
            for name in self.fs.find(remote):
                relative = PurePosixPath(name).relative_to(remote).as_posix()
                self._get_file(name, local / relative)
            (local / FETCHED_MARKER).touch()
            return local
        if not local.exists():
            if not self.fs.exists(remote):
                raise FileNotFoundError(f"artifact {key!r} is not in the store {self.url}")
            self._get_file(remote, local)
        return local

    def _get_file(self, remote: str, local: Path) -> None:
        if local.exists():
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{uuid.uuid4().hex}.partial")
        try:
            self.fs.get_file(remote, str(partial))
            os.replace(partial, local)  # whole or absent, for every reader on this machine
        finally:
            partial.unlink(missing_ok=True)

    def publish(self, path: str | os.PathLike[str], key: str | None = None) -> str:
        """Upload the file or folder ``path`` to the store under ``key`` (default: its key inside the scratch);
        returns the key. Each file is one PUT; ``*.partial`` files are left out. Publish before recording the
        artifact in the database.
        """
        local = Path(path).resolve()
        key = _check_key(key) if key is not None else self.key(local)
        if self.remote:
            files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
            for file in files:
                if file.name.endswith(".partial") or file.name == FETCHED_MARKER:
                    continue
                relative = "" if file == local else "/" + file.relative_to(local).as_posix()
                self.fs.put_file(str(file), self.remote_path(key + relative))
        elif key != self.key(local):
            raise ValueError(f"{local} is not {key!r} of the data dir {self.scratch}")
        return key

    def remove(self, key: str) -> None:
        """Delete ``key`` (file or folder) from the scratch and the store; absent is fine."""
        local = self.path(key)
        if local.is_dir():
            shutil.rmtree(local)
        else:
            local.unlink(missing_ok=True)
        if self.remote:
            remote = self.remote_path(key)
            if self.fs.exists(remote):
                self.fs.rm(remote, recursive=True)


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or ".." in parts:
        raise ValueError(f"{key!r} is not an artifact key (a relative path inside the data dir)")
    return PurePosixPath(*parts).as_posix()


def storage_options() -> dict:
    """fsspec options of the configured store (S3: endpoint and region from the settings)."""
    options: dict = {}
    if settings.UNITSCOPE_STORAGE_URL.startswith("s3://"):
        # other machines write to the store all the time: never answer from a listing cached in this process
        options["use_listings_cache"] = False
        if settings.UNITSCOPE_STORAGE_ENDPOINT_URL:
            options["endpoint_url"] = settings.UNITSCOPE_STORAGE_ENDPOINT_URL
        if settings.UNITSCOPE_STORAGE_REGION:
            options["client_kwargs"] = {"region_name": settings.UNITSCOPE_STORAGE_REGION}
    return options


@lru_cache(maxsize=4)
def _store(scratch: str, url: str, options_json: str) -> ArtifactStore:
    return ArtifactStore(scratch, url, json.loads(options_json))


def artifact_store() -> ArtifactStore:
    """The store the settings configure, with this machine's data dir as scratch (one per configuration, so the
    fsspec filesystem and its connections are reused)."""
    return _store(
        str(settings.UNITSCOPE_DATA_DIR), settings.UNITSCOPE_STORAGE_URL, json.dumps(storage_options(), sort_keys=True)
    )


def artifact_key(path: str | os.PathLike[str]) -> str:
    return artifact_store().key(path)


def fetch_if_stored(stored: str) -> str:
    """``stored`` as a path on this machine: fetched when an object store is configured, else unchanged (so a
    missing local file is reported by whoever opens it, as before)."""
    return str(fetch(stored)) if stored and artifact_store().remote else stored


def fetch(key_or_path: str | os.PathLike[str]) -> Path:
    """:meth:`ArtifactStore.fetch` of a key, or of a path stored by :func:`stored_path`."""
    return _fetch_stored(str(key_or_path))


def publish(path: str | os.PathLike[str], key: str | None = None) -> str:
    return artifact_store().publish(path, key)


def publish_as(path: str | os.PathLike[str], key: str) -> str:
    """What the database keeps for a file or folder that workers will read, from anywhere (a dataset, a weights
    file): with an object store, it is uploaded under ``key`` and the key is kept; on the local default it is used
    where it is (:func:`stored_path`)."""
    store = artifact_store()
    if store.remote:
        return store.publish(path, key)
    return stored_path(path)


def stored_path(path: str | os.PathLike[str]) -> str:
    """What the database keeps for ``path``: with an object store, its key when inside the data dir (any machine
    finds it); on the local default, and for folders outside the data dir, the absolute path (as before keys: a row
    stays readable whichever data dir a later process uses, e.g. a test's own)."""
    store = artifact_store()
    if store.remote:
        try:
            return store.key(path)
        except ValueError:
            pass
    return str(Path(path).resolve())


def artifact_exists(stored: str | os.PathLike[str]) -> bool:
    """Whether a value written by :func:`stored_path` names an artifact this machine can have (here or in the
    store)."""
    stored = str(stored)
    if os.path.isabs(stored):
        try:
            stored = artifact_key(stored)
        except ValueError:
            return Path(stored).exists()
    return artifact_store().path(stored).exists() or artifact_store().exists(stored)


def local_path(stored: str | os.PathLike[str]) -> Path:
    """This machine's path of a value written by :func:`stored_path` (a key is not fetched: see :func:`fetch`)."""
    stored = str(stored)
    return Path(stored) if os.path.isabs(stored) else artifact_store().path(stored)


def _fetch_stored(stored: str) -> Path:
    if os.path.isabs(stored):
        try:
            stored = artifact_key(stored)
        except ValueError:
            return Path(stored)  # registered in place, outside the data dir: this machine's own folder
    return artifact_store().fetch(stored)
