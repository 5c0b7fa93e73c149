from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.dissection import DISSECTION_PARAMS, dissection_run_start


class Command(RunCommand):
    help = (
        "Network Dissection of one layer over a dataset (ND'18 §2.2): a run; prints its id. Reuses the layer's "
        "extraction (or runs it first)."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for name in (
            "network",
            "dataset",
            "layer",
            "shards",
            "upsample",
            "baseline",
            "shuffle_seed",
            "quantile",
            "iou_threshold",
            "strict_threshold",
            "count_saturated",
            "batch_size",
        ):
            add_argument(parser, DISSECTION_PARAMS, name)

    def start_run(self, *, inline, **options):
        return dissection_run_start(inline=inline, **self.params_of(DISSECTION_PARAMS, options))
