"""Shared behaviour of the management commands that start runs: print the run id, optionally wait."""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from analysis.models import Run, RunStatus
from analysis.params import ParamSchema
from analysis.services.runs import RunInputError


class RunCommand(BaseCommand):
    """Subclasses implement :meth:`start_run` and return the Run they started."""

    def add_arguments(self, parser):
        parser.add_argument("--wait", action="store_true", help="wait for the run to finish, showing progress")
        parser.add_argument(
            "--inline", action="store_true", help="execute here, synchronously, instead of queueing for a worker"
        )
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")

    def start_run(self, *, inline: bool, **options) -> Run:
        raise CommandError(f"{type(self).__module__} does not define start_run")

    @staticmethod
    def params_of(schema: ParamSchema, options: dict[str, Any]) -> dict[str, Any]:
        """The options that are parameters of ``schema`` (the rest are the command's own, such as ``--wait``)."""
        return {name: value for name, value in options.items() if name in schema.fields}

    def handle(self, *args, wait: bool, inline: bool, timeout: float | None, **options):
        try:
            run = self.start_run(inline=inline, **options)
        except RunInputError as error:  # names the parameters at fault
            raise CommandError(str(error)) from error
        self.stdout.write(str(run.pk))
        self.stdout.flush()
        if wait or inline:
            run = self.wait_for(run, timeout=timeout)
            self.stderr.write(f"run {run.pk} {run.status}" + (f": {run.error}" if run.error else ""))
            if run.status != RunStatus.SUCCEEDED:
                raise CommandError(f"run {run.pk} ended {run.status}")

    def wait_for(self, run: Run, *, timeout: float | None) -> Run:
        started = time.monotonic()
        shown = ""
        while True:
            run.refresh_from_db()
            line = f"run {run.pk}: {run.status} · {run.phase} · {run.progress_done}/{run.progress_total}"
            if line != shown and sys.stderr.isatty():
                self.stderr.write(line)
                shown = line
            if not run.is_active:
                return run
            if timeout is not None and time.monotonic() - started > timeout:
                raise CommandError(f"run {run.pk} still {run.status} after {timeout:.0f} s")
            time.sleep(0.5)
