from analysis.management.run_command import RunCommand
from analysis.services.grids import grids_run_start


class Command(RunCommand):
    help = "Render every exemplar grid of one layer of an extraction run (a run; prints its id)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--extraction-run", type=int, required=True)
        parser.add_argument("--layer", required=True)

    def start_run(self, *, inline, extraction_run, layer, **options):
        return grids_run_start(extraction_run=extraction_run, layer=layer, inline=inline)
