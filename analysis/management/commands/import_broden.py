from analysis.management.run_command import RunCommand
from analysis.services.datasets import broden_import_run_start


class Command(RunCommand):
    help = "Import a Broden-format directory as a dataset (a run: prints its id; --wait or --inline)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("path")
        parser.add_argument("--name", required=True)

    def start_run(self, *, inline, path, name, **options):
        return broden_import_run_start(path=path, name=name, inline=inline)
