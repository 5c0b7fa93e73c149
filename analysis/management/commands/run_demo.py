"""`make demo`: migrate, create the researcher, start a real Celery worker and the web server, print the
URL as soon as the site answers, then queue the demo build steps for the worker to run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from analysis.models import RunStatus
from analysis.services.demo import DemoSize, demo_build, demo_credentials_ensure, demo_hooks_run


class Command(BaseCommand):
    help = "Run the demo site with a worker on the embedded defaults (SQLite, filesystem broker)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=int(os.environ.get("UNITSCOPE_DEMO_PORT", "8000")))
        default = DemoSize()
        parser.add_argument("--images", type=int, default=default.images, help="probe world images")
        parser.add_argument("--image-size", type=int, default=default.image_size, help="probe world image side (px)")
        parser.add_argument("--epochs", type=int, default=default.epochs, help="training epochs of the demo network")

    def handle(self, *args, host: str, port: int, images: int, image_size: int, epochs: int, **options):
        call_command("migrate", interactive=False, verbosity=0)
        credentials = demo_credentials_ensure()
        logs = settings.UNITSCOPE_DATA_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        base_dir = Path(settings.BASE_DIR)
        children: list[subprocess.Popen] = []

        def start(name: str, command: list[str]) -> subprocess.Popen:
            log = open(logs / f"{name}.log", "a")
            process = subprocess.Popen(command, cwd=base_dir, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            children.append(process)
            return process

        def stop_children(*_):
            for process in children:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in children:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            worker = start("worker", [sys.executable, "-m", "celery", "-A", "unitscope", "worker",
                                      "-Q", "default,gpu", "-c", "1", "--loglevel", "INFO", "-n", "demo@%h"])
            server = start("web", [sys.executable, "manage.py", "runserver", f"{host}:{port}", "--noreload"])
            url = f"http://{host}:{port}/"
            self._wait_until_up(url, server, logs / "web.log")
            self.stdout.write(self.style.SUCCESS(f"\nUnitScope is up at {url}"))
            for username, password in credentials.items():
                self.stdout.write(f"Log in as {username} / {password}")
            self.stdout.write(f"Logs: {logs}. Press Ctrl-C to stop.\n")
            self.stdout.write("Building the demo: each step is a run you can watch on the Runs page.")

            def report(event, step, run, created):
                if event == "queued":
                    self.stdout.write(f"· {step.label}: {url}research/runs/{run.pk}/")
                elif event == "end":
                    self.stdout.write(f"  {run.status}" + ("" if created else " (already done)")
                                      + (f": {run.error}" if run.error else ""))

            size = DemoSize(images=images, image_size=image_size, epochs=epochs)
            runs = demo_build(inline=False, size=size, on_step=report)
            if runs and runs[-1].status == RunStatus.SUCCEEDED:
                self.stdout.write("· Studies for experts and crowds …")
                for username, password in demo_hooks_run(size, site_url=url).items():
                    self.stdout.write(f"Log in as {username} / {password}")
                self.stdout.write(self.style.SUCCESS("The demo is built."))
            else:
                self.stdout.write(self.style.ERROR("A demo step failed; the site stays up so you can see why."))
            while worker.poll() is None and server.poll() is None:
                time.sleep(1)
            raise CommandError("the worker or the web server stopped; see the logs in " + str(logs))
        except KeyboardInterrupt:
            self.stdout.write("\nStopping.")
        finally:
            stop_children()

    def _wait_until_up(self, url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise CommandError(f"the web server exited; last lines of {log}:\n"
                                   + "\n".join(log.read_text().splitlines()[-15:]))
            try:
                with urllib.request.urlopen(url + "login/", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise CommandError(f"the web server did not answer at {url} within {timeout:.0f} s")
