from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.extraction import EXTRACTION_PARAMS, extraction_run_start


class Command(RunCommand):
    help = "Extract activations of --layer (repeatable) of a network over a dataset (a run; prints its id)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_argument(parser, EXTRACTION_PARAMS, "network")
        add_argument(parser, EXTRACTION_PARAMS, "dataset")
        parser.add_argument(
            "--layer", action="append", required=True, dest="layers", help="dotted layer name; repeat for more"
        )
        add_argument(parser, EXTRACTION_PARAMS, "quantile")
        add_argument(parser, EXTRACTION_PARAMS, "batch_size")
        add_argument(parser, EXTRACTION_PARAMS, "shards")

    def start_run(self, *, inline, **options):
        return extraction_run_start(inline=inline, **self.params_of(EXTRACTION_PARAMS, options))
