"""Tools for the load benchmark and the fault tests: a throwaway PostgreSQL cluster, a gunicorn server on the
loopback, a small cookie-and-CSRF-aware HTTP client, and the expert/crowd world they drive.

Everything stays on this machine: the cluster listens on 127.0.0.1 and a socket in its own temporary directory
(never the machine's shared PostgreSQL), the server binds 127.0.0.1, and every loop that sends requests is
bounded in count and time by its caller.

``python -m benchmarks.loadkit setup --experts N --crowd N --tasks-per-expert K --hits-per-worker K`` (with
``DATABASE_URL`` and ``DJANGO_SETTINGS_MODULE`` set) migrates that database and builds the world, printing JSON.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import http.cookies
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
PASSWORD = "load-test-password-9"


def process_tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and its living descendants (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.split("/")[2])
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(cpu.get(pid, 0.0) for pid in tree)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries (``/usr/lib/postgresql/<version>/bin``), or those on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) were not found")
    return Path(initdb).parent


class ThrowawayPostgres:
    """A private PostgreSQL cluster in a temporary directory on a free loopback port (run as ``postgres`` when we
    are root, since the server refuses root). ``stop``/``start``/``restart`` act on this cluster only."""

    def __init__(self):
        self.bin = postgres_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="unitscope-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = "
                f"'{self.root}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 64MB\n"
            )

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        if self.as_postgres:
            command = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"], check=False)

    def restart(self, *, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name])
        return self.url(name)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()

    def close(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def django_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a process of this project on ``database_url`` (test settings: no debug)."""
    env = {key: value for key, value in os.environ.items() if key not in ("DJANGO_ALLOW_ASYNC_UNSAFE",)}
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="unitscope.settings.test",
        UNITSCOPE_DATA_DIR=str(data_dir),
        PYTHONPATH=str(PROJECT_DIR),
        **extra,
    )
    return env


def setup_world(env: dict[str, str], **options: int) -> dict:
    """Migrate the database of ``env`` and build the world (see :func:`build_world`) in a child process."""
    arguments = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadkit", "setup", *arguments],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"world setup failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


class Server:
    """gunicorn serving ``unitscope.wsgi`` on 127.0.0.1 (a free port) with the given environment, configured by the
    project's ``gunicorn.conf.py`` (sync workers, CPUs + 1, warmed before forking) unless ``workers``/``threads``
    say otherwise."""

    def __init__(
        self, env: dict[str, str], *, workers: int | None = None, threads: int | None = None, log: Path | None = None
    ):
        self.env, self.workers, self.threads = env, workers, threads
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log or Path(tempfile.mkstemp(prefix="unitscope-gunicorn-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "unitscope.wsgi",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    *(["--workers", str(self.workers)] if self.workers else []),
                    *(["--threads", str(self.threads)] if self.threads else []),
                    "--graceful-timeout",
                    "5",
                    "--log-level",
                    "warning",
                ],
                cwd=PROJECT_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
            try:
                status, _, _ = Session(self.base).get("/login/")
                if status == 200:
                    self.warm_up()
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def warm_up(self, rounds: int = 6) -> None:
        """A few requests per worker process (connections, the session and auth machinery), so that a worker's first
        request is not what is timed. (Views and templates are warmed by gunicorn's master before it forks.)"""
        for _ in range(rounds * (self.workers or os.cpu_count() + 1)):
            for path in ("/login/", "/expert/", "/research/", "/crowd/s/none/", "/api/"):
                Session(self.base).get(path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            import signal

            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Session:
    """A browser-like client: keeps cookies, sends Django's CSRF token with form posts, never follows redirects
    (each response's status is what the caller sees). Every call returns ``(status, headers, body)``; a
    connection that fails raises OSError.

    Plain ``http.client``, one connection per request (gunicorn's sync workers close each one): the clients
    share the server's CPUs, so they are kept cheap (urllib's opener chain cost about 0.5 ms of CPU a request).
    """

    def __init__(self, base: str, *, timeout: float = 30.0):
        parts = urllib.parse.urlsplit(base)
        self.base, self.host, self.port, self.timeout = base, parts.hostname, parts.port, timeout
        self.cookies: dict[str, str] = {}

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict, bytes]:
        target = urllib.parse.urlsplit(self.url(path))
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(method, target.path + (f"?{target.query}" if target.query else ""), body, headers)
            response = connection.getresponse()
            data = response.read()
            for line in response.headers.get_all("Set-Cookie") or []:
                for name, morsel in http.cookies.SimpleCookie(line).items():
                    if morsel.value and morsel["max-age"] != "0":
                        self.cookies[name] = morsel.value
                    else:
                        self.cookies.pop(name, None)
            return response.status, dict(response.headers), data
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict, bytes]:
        return self._request("GET", path)

    def csrf_token(self) -> str:
        return self.cookies.get("csrftoken", "")

    def post(self, path: str, data: dict[str, str]) -> tuple[int, dict, bytes]:
        fields = {"csrfmiddlewaretoken": self.csrf_token(), **data}
        return self._request(
            "POST",
            path,
            urllib.parse.urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "Referer": self.url(path)},
        )

    def login(self, username: str, password: str = PASSWORD) -> None:
        status, _, _ = self.get("/login/")
        status, _headers, _ = self.post("/login/", {"username": username, "password": password})
        if status != 302:
            raise RuntimeError(f"login of {username} failed ({status})")


def location(headers: dict) -> str:
    return headers.get("Location") or headers.get("location") or ""


HIDDEN_SHOWN = re.compile(rb'name="shown" value="([^"]*)"')
GRID_SRC = re.compile(rb'<img[^>]+src="(/media/[^"]+\.png)"')


def build_world(*, experts: int, crowd: int, tasks_per_expert: int, hits_per_worker: int, assignments: int = 3) -> dict:
    """An expert study (N-raters plan, one rater per task: every expert claims their own tasks) with
    ``experts × tasks_per_expert`` tasks and a crowd validation study with enough HITs for every worker to answer
    ``hits_per_worker`` (``assignments`` workers per HIT). Needs Django set up; returns what the clients need."""
    from accounts.roles import Role
    from accounts.services import user_create
    from annotation.crowd import hits as crowd_hits
    from annotation.expert import services
    from annotation.models import CrowdTaskKind
    from tests.test_crowd_study import build_crowd_world
    from tests.test_expert_study import build_study_world

    classes = ("bird", "car", "tree")
    units = -(-experts * tasks_per_expert // len(classes))
    extraction = build_study_world(name="load", units=units, classes=classes, tile=16)
    users = [
        user_create(username=f"expert{number}", password=PASSWORD, role=Role.EXPERT) for number in range(1, experts + 1)
    ]
    study = services.study_create(
        name="load-experts", extraction=extraction, experts=users, plan="n_raters", raters_per_task=1
    )
    # Validation HITs: two per unit (its dissection label and a control).
    crowd_units = -(-crowd * hits_per_worker // (2 * assignments)) + 1
    crowd_study = crowd_hits.crowd_study_create(
        name="load-crowd",
        kind=CrowdTaskKind.VALIDATION,
        extractions=build_crowd_world(name="lc", units=crowd_units),
        assignments_per_hit=assignments,
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
        hits_per_session=hits_per_worker,
    )
    return {
        "study": study.pk,
        "tasks": study.tasks.count(),
        "experts": [user.username for user in users],
        "crowd_token": crowd_study.token,
        "crowd_study": crowd_study.pk,
        "hits": crowd_study.hits.count(),
    }


def _setup_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadkit setup")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--crowd", type=int, default=4)
    parser.add_argument("--tasks-per-expert", type=int, default=5)
    parser.add_argument("--hits-per-worker", type=int, default=5)
    options = parser.parse_args(argv)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    world = build_world(
        experts=options.experts,
        crowd=options.crowd,
        tasks_per_expert=options.tasks_per_expert,
        hits_per_worker=options.hits_per_worker,
    )
    from django.db import connection

    if connection.vendor == "postgresql":
        # Planner statistics for the tables just filled, as autovacuum's analyze gives a live database; without
        # them the claim queries are planned for empty tables (a nested loop over every task of the study).
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(json.dumps(world))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "setup":
        _setup_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m benchmarks.loadkit setup [options]")
