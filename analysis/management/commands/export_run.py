from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from analysis.models import Run
from analysis.services.exports import run_export
from analysis.services.runs import RunInputError


class Command(BaseCommand):
    help = "Export a finished run's results as plain files (npy/csv/json) into --out DIR."

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int)
        parser.add_argument("--out", required=True)

    def handle(self, *args, run_id: int, out: str, **options):
        run = Run.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"no run {run_id}")
        try:
            files = run_export(run=run, out_dir=Path(out))
        except RunInputError as error:
            raise CommandError(str(error)) from error
        for path in files:
            self.stdout.write(str(path))
