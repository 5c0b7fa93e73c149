"""Shared fixtures and hooks: the ``needs_cuda`` skip, users per role, a real Celery worker process, Playwright on
Debian's Chromium.

Markers (declared in pytest.ini): ``needs_cuda`` (parametrise devices with ``tests.devices.cpu_and_cuda()``),
``browser`` (a test drives Chromium), ``worker`` (a test starts a Celery worker process).
``tests/test_markers.py`` checks that every such test carries its marker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in the test thread; the ORM calls the tests make around it
# are still synchronous and safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

PROJECT_DIR = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "a-test-password-9"


def pytest_collection_modifyitems(config, items):
    """The one ``needs_cuda`` hook: such items are skipped, with the reason, where torch sees no CUDA device."""
    cuda_items = [item for item in items if item.get_closest_marker("needs_cuda")]
    if not cuda_items:
        return
    import torch  # only when a CUDA item was collected: web-only runs stay free of torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs_cuda: torch.cuda.is_available() is False on this machine")
    for item in cuda_items:
        item.add_marker(skip)


@pytest.fixture
def make_user(db):
    from accounts.roles import Role
    from accounts.services import user_create

    def make(username: str, role: str | Role) -> object:
        return user_create(username=username, password=PASSWORD, role=Role(role))

    return make


@pytest.fixture
def researcher(make_user):
    return make_user("rita", "researcher")


@pytest.fixture
def expert(make_user):
    return make_user("ed", "expert")


@pytest.fixture
def crowd_worker(make_user):
    return make_user("cora", "crowd")


@pytest.fixture
def researcher_client(client, researcher):
    client.force_login(researcher)
    return client


def _database_url_for_subprocess() -> str:
    """A DATABASE_URL that points a child process at the test database pytest-django created."""
    from django.db import connection

    settings = connection.settings_dict
    if settings["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{settings['NAME']}"
    user = settings.get("USER") or ""
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    credentials = f"{user}{password}@" if user else ""
    host = settings.get("HOST") or "localhost"
    port = f":{settings['PORT']}" if settings.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{settings['NAME']}"


def broker_purge(queues=("default", "gpu")) -> None:
    """Empty the broker's queues, and on Redis the messages a killed worker had taken: Redis keeps those in its
    unacknowledged hash (queue_purge leaves it alone), gives them back later and counts them as waiting."""
    from unitscope.celery import app

    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_purge(queue)
        if hasattr(channel, "unacked_key"):
            channel.client.delete(channel.unacked_key, channel.unacked_index_key)


@pytest.fixture
def clean_broker():
    """No message before or after: the messages sent in a test name runs of its own database only."""
    broker_purge()
    yield
    broker_purge()


def celery_worker_command(node: str) -> list[str]:
    """The command line of one test worker process on both queues, one task at a time, named ``node``."""
    from analysis.selectors import worker_argv

    return worker_argv("default,gpu", node=node, quiet_cluster=True)


@pytest.fixture
def celery_worker_process(transactional_db):
    """A real ``celery worker`` process (not eager, not a thread) on the configured broker and the test DB."""
    from unitscope.celery import app

    if not app.conf.broker_url.startswith("filesystem"):
        app.control.purge()  # messages of earlier sessions name runs this database does not have
    env = dict(
        os.environ, DATABASE_URL=_database_url_for_subprocess(), DJANGO_SETTINGS_MODULE="unitscope.settings.test"
    )
    log_path = Path(os.environ["UNITSCOPE_DATA_DIR"]) / f"worker-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            celery_worker_command(f"test-{os.getpid()}@%h"),
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "ready." not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the Celery worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Drive Debian's Chromium package; Playwright never downloads a browser here."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def probe_world_files(tmp_path_factory):
    """``probe_world_files(n_images=36, size=64, seed=5) -> Path``: a generated probe world's folder (Broden format),
    generated once per parameter set for the whole session in its own temporary folder and only read afterwards.

    Files only: register one into a test's database with ``make_probe_world`` (or ``tests.worlds``' factories
    from a module-scoped fixture). Each test's ``UNITSCOPE_DATA_DIR`` stays its own (``isolated_data_dir``).
    """
    from analysis.engine.probe_world import generate_probe_world
    from tests.worlds import TINY_WORLD

    root, generated = tmp_path_factory.mktemp("probe-worlds"), {}

    def files(
        *, n_images: int = TINY_WORLD["n_images"], size: int = TINY_WORLD["size"], seed: int = TINY_WORLD["seed"]
    ) -> Path:
        key = (n_images, size, seed)
        if key not in generated:
            folder = root / f"world-{n_images}-{size}px-seed{seed}"
            generate_probe_world(folder, n_images=n_images, seed=seed, size=size)
            generated[key] = folder
        return generated[key]

    return files


@pytest.fixture
def make_probe_world(db, probe_world_files):
    """``make_probe_world(name="tiny", n_images=36, size=64, seed=5) -> Dataset``: the session's generated world
    with those parameters, registered in this test's database under ``name``."""
    from tests.worlds import TINY_WORLD, probe_world_register

    def make(name: str = "tiny", **params: int):
        params = {**TINY_WORLD, **params}
        return probe_world_register(name=name, root=probe_world_files(**params), **params)

    return make


@pytest.fixture
def tiny_layer(make_probe_world):
    """The 36-image probe world (64 px) as ``tiny``, the seeded demo network as ``seeded`` and its conv5 extracted
    (no grids). Returns the extraction run."""
    from tests.worlds import extraction_run, seeded_network

    make_probe_world("tiny")
    seeded_network(name="seeded", input_size=(64, 64))
    return extraction_run(network="seeded", dataset="tiny", layers=["conv5"], batch_size=12)


@pytest.fixture
def tiny_layer_with_grids(tiny_layer):
    """``tiny_layer`` with conv5's grids rendered (the costly part: about 8 s of CPU). Returns the extraction run.
    Used by page, crowd and browser tests of the unit browser."""
    from analysis.services.grids import grids_run_start

    assert grids_run_start(extraction_run=tiny_layer.pk, layer="conv5", inline=True).status == "succeeded"
    return tiny_layer


@pytest.fixture(autouse=True)
def isolated_data_dir(request, tmp_path):
    """Each test writes datasets, activation caches and grids under its own folder: files outlive the
    database rollback, and a cache left by one test must not be reused by the next.

    Worker processes started by tests keep the session's data dir (their broker folders live there),
    so worker tests do not depend on files written here. Engine tests run without Django too
    (``-p no:django``): then there is nothing to isolate.
    """
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    settings.UNITSCOPE_DATA_DIR = tmp_path / "data"
    settings.MEDIA_ROOT = tmp_path / "data" / "media"
    settings.UNITSCOPE_DATA_DIR.mkdir()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3-compatible server (``moto_server`` of ``moto[server]``) on 127.0.0.1 and a free port, for
    the session; returns its endpoint URL. Fake credentials are put in the environment (child processes inherit
    them): boto insists on some, moto accepts any."""
    import urllib.request

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto_server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def s3_bucket(s3_server):
    """``(endpoint, bucket)``: a new empty bucket on the session's moto server."""
    import uuid

    import boto3

    bucket = f"unitscope-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return s3_server, bucket


@pytest.fixture
def object_store(settings, s3_bucket):
    """This test's artifacts and grids in a fresh bucket of the moto server (``UNITSCOPE_STORAGE_URL``), as in
    production; returns the storage URL."""
    from unitscope.settings.base import object_store_media

    endpoint, bucket = s3_bucket
    url = f"s3://{bucket}/site"
    settings.UNITSCOPE_STORAGE_URL = url
    settings.UNITSCOPE_STORAGE_ENDPOINT_URL = endpoint
    settings.UNITSCOPE_STORAGE_REGION = "us-east-1"
    media = object_store_media(url)
    media["OPTIONS"].update(endpoint_url=endpoint, region_name="us-east-1")
    settings.STORAGES = {**settings.STORAGES, "default": media}
    return url
