from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.explanatory_graph import GRAPH_DEFAULTS, GRAPH_PARAMS, graph_run_start


class Command(RunCommand):
    help = (
        "Learn explanatory graphs (Zhang et al. AAAI'18) over some conv layers of a network — one per object category, "
        "on its object crops, by default — and measure their location instability against raw filters: a run; prints "
        "its id. With --inputs whole_images, reuses the layers' extractions (or runs them first)."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_argument(parser, GRAPH_PARAMS, "network")
        add_argument(parser, GRAPH_PARAMS, "dataset")
        parser.add_argument(
            "--layer",
            action="append",
            required=True,
            dest="layers",
            help="a conv layer of the graph (repeat; learned top-down whatever the order)",
        )
        parser.add_argument(
            "--nodes",
            type=int,
            action="append",
            dest="nodes_per_filter",
            help="nodes per filter N, once per --layer in the same order (default 10, 20, 40 from "
            "the top, the paper's three-layer values)",
        )
        for name in ("inputs", "graphs", "category", "context"):
            add_argument(parser, GRAPH_PARAMS, name)
        for name in ("iterations", "neighbours", "tau", "beta", "seed", "max_learn_images"):
            add_argument(parser, GRAPH_PARAMS, name)
        parser.add_argument(
            "--landmark",
            action="append",
            dest="landmarks",
            help="a part class whose box centres are landmarks for location instability (repeat; "
            f"default {', '.join(GRAPH_DEFAULTS['landmarks'])})",
        )
        for name in ("eval_split", "top_patterns", "top_images", "instability", "batch_size"):
            add_argument(parser, GRAPH_PARAMS, name)

    def start_run(self, *, inline, **options):
        return graph_run_start(inline=inline, **self.params_of(GRAPH_PARAMS, options))
