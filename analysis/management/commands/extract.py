from analysis.management.run_command import RunCommand
from analysis.services.extraction import EXTRACTION_DEFAULTS, extraction_run_start


class Command(RunCommand):
    help = "Extract activations of --layer (repeatable) of a network over a dataset (a run; prints its id)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--network", required=True)
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--layer", action="append", required=True, help="dotted layer name; repeat for more")
        parser.add_argument("--quantile", type=float, default=EXTRACTION_DEFAULTS["quantile"])
        parser.add_argument("--batch-size", type=int, default=EXTRACTION_DEFAULTS["batch_size"])

    def start_run(self, *, inline, network, dataset, layer, quantile, batch_size, **options):
        return extraction_run_start(network=network, dataset=dataset, layers=layer, quantile=quantile,
                                    batch_size=batch_size, inline=inline)
