from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.grids import GRIDS_PARAMS, grids_run_start


class Command(RunCommand):
    help = "Render every exemplar grid of one layer of an extraction run (a run; prints its id)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_argument(parser, GRIDS_PARAMS, "extraction_run")
        add_argument(parser, GRIDS_PARAMS, "layer")

    def start_run(self, *, inline, extraction_run, layer, **options):
        return grids_run_start(extraction_run=extraction_run, layer=layer, inline=inline)
