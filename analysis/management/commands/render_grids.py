from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.grids import GRIDS_PARAMS, grids_run_start


class Command(RunCommand):
    help = (
        "Render the exemplar grids of one layer of an extraction run, of every unit or of --units only "
        "(a run; prints its id)."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_argument(parser, GRIDS_PARAMS, "extraction_run")
        add_argument(parser, GRIDS_PARAMS, "layer")
        parser.add_argument("--units", default=None, help="only these units, e.g. 0-9,17 (default: all)")

    def start_run(self, *, inline, extraction_run, layer, units, **options):
        return grids_run_start(extraction_run=extraction_run, layer=layer, units=units, inline=inline)
