"""`make demo`: migrate, create the researcher, start a real Celery worker and the web server, print the
URL as soon as the site answers, then queue the demo build steps for the worker to run.

Both children are supervised (:mod:`unitscope.supervisor`): one that exits is reported with the last lines
of its log and restarted (at most 5 times in 10 minutes); Ctrl-C or SIGTERM stops their process groups."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from analysis.models import RunStatus
from analysis.selectors import worker_argv, worker_start_command
from analysis.services.demo import DemoSize, demo_build, demo_credentials_ensure, demo_hooks_run
from unitscope.supervisor import Supervisor


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
        supervisor = Supervisor(cwd=Path(settings.BASE_DIR), logs=logs, say=self.stdout.write)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop as on Ctrl-C: the finally below
        try:
            supervisor.start(
                "worker",
                worker_argv("default,gpu", node="demo@%h"),
                advice="The site stays up: queued runs wait, and the Runs page says that no worker is "
                f"running. Fix the cause (see {logs / 'worker.log'}), then press Ctrl-C and run "
                "`make demo` again, or start a worker yourself with `" + worker_start_command("default,gpu") + "`.",
            )
            supervisor.start(
                "web",
                [sys.executable, "manage.py", "runserver", f"{host}:{port}", "--noreload"],
                advice=f"See {logs / 'web.log'}.",
            )
            url = f"http://{host}:{port}/"
            self._wait_until_up(url, supervisor, logs / "web.log")
            supervisor.watch()
            self.stdout.write(self.style.SUCCESS(f"\nUnitScope is up at {url}"))
            for username, password in credentials.items():
                self.stdout.write(f"Log in as {username} / {password}")
            self.stdout.write(f"Logs: {logs}. Press Ctrl-C to stop.\n")
            self.stdout.write("Building the demo: each step is a run you can watch on the Runs page.")

            def report(event, step, run, created):
                if event == "queued":
                    self.stdout.write(f"· {step.label}: {url}research/runs/{run.pk}/")
                elif event == "retry":
                    self.stdout.write(f"  {run.status}: {run.error}\n  Starting this step again.")
                elif event == "end":
                    self.stdout.write(
                        f"  {run.status}"
                        + ("" if created else " (already done)")
                        + (f": {run.error}" if run.error else "")
                    )

            size = DemoSize(images=images, image_size=image_size, epochs=epochs)
            runs = demo_build(inline=False, size=size, on_step=report, worker_loss_retries=2)
            if runs and runs[-1].status == RunStatus.SUCCEEDED:
                self.stdout.write("· Studies for experts and crowds …")
                for username, password in demo_hooks_run(size, site_url=url).items():
                    self.stdout.write(f"Log in as {username} / {password}")
                self.stdout.write(self.style.SUCCESS("The demo is built."))
            else:
                self.stdout.write(self.style.ERROR("A demo step failed; the site stays up so you can see why."))
            while not supervisor.children["web"].given_up:
                time.sleep(1)
            raise CommandError("the web server keeps stopping; see the logs in " + str(logs))
        except KeyboardInterrupt:
            self.stdout.write("\nStopping the worker and the web server (a step that is running is given 15 s).")
        finally:
            supervisor.stop_all()

    def _wait_until_up(self, url: str, supervisor: Supervisor, log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not supervisor.alive("web"):
                raise CommandError(
                    f"the web server exited; last lines of {log}:\n" + "\n".join(log.read_text().splitlines()[-15:])
                )
            try:
                with urllib.request.urlopen(url + "login/", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise CommandError(f"the web server did not answer at {url} within {timeout:.0f} s")
