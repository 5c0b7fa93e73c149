from analysis.management.run_command import RunCommand
from analysis.services.explanatory_graph import GRAPH_DEFAULTS, graph_run_start


class Command(RunCommand):
    help = ("Learn an explanatory graph (Zhang et al. AAAI'18) over some conv layers of a network and measure its "
            "location instability against raw filters: a run; prints its id. Reuses the layers' extractions (or runs "
            "them first).")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--network", required=True)
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--layer", action="append", required=True, dest="layers",
                            help="a conv layer of the graph (repeat; learned top-down whatever the order)")
        parser.add_argument("--nodes", type=int, action="append", dest="nodes_per_filter",
                            help="nodes per filter N, once per --layer in the same order (default 10, 20, 40 from "
                                 "the top, the paper's three-layer values)")
        parser.add_argument("--iterations", type=int, default=GRAPH_DEFAULTS["iterations"], help="EM iterations T")
        parser.add_argument("--neighbours", type=int, default=GRAPH_DEFAULTS["neighbours"],
                            help="upper-layer neighbours M per node")
        parser.add_argument("--tau", type=float, default=GRAPH_DEFAULTS["tau"], help="noise density τ")
        parser.add_argument("--beta", type=float, default=GRAPH_DEFAULTS["beta"], help="entities per unit response β")
        parser.add_argument("--seed", type=int, default=GRAPH_DEFAULTS["seed"])
        parser.add_argument("--max-learn-images", type=int, default=GRAPH_DEFAULTS["max_learn_images"],
                            help="learn on a seeded subset of the training images (0 = all)")
        parser.add_argument("--landmark", action="append", dest="landmarks",
                            help="a part class whose box centres are landmarks for location instability (repeat; "
                                 f"default {', '.join(GRAPH_DEFAULTS['landmarks'])})")
        parser.add_argument("--top-patterns", type=int, default=GRAPH_DEFAULTS["top_patterns"])
        parser.add_argument("--top-images", type=int, default=GRAPH_DEFAULTS["top_images"])
        parser.add_argument("--instability", choices=["aaai", "arxiv"], default=GRAPH_DEFAULTS["instability"],
                            help="mean of the per-landmark stds (AAAI'18) or the root of their mean variance (arXiv)")
        parser.add_argument("--batch-size", type=int, default=GRAPH_DEFAULTS["batch_size"])

    def start_run(self, *, inline, network, dataset, layers, nodes_per_filter, iterations, neighbours, tau, beta, seed,
                  max_learn_images, landmarks, top_patterns, top_images, instability, batch_size, **options):
        return graph_run_start(network=network, dataset=dataset, layers=layers, nodes_per_filter=nodes_per_filter,
                               iterations=iterations, neighbours=neighbours, tau=tau, beta=beta, seed=seed,
                               max_learn_images=max_learn_images, landmarks=landmarks, top_patterns=top_patterns,
                               top_images=top_images, instability=instability, batch_size=batch_size, inline=inline)
