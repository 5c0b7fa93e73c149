from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.net2vec import NET2VEC_PARAMS, net2vec_run_start


class Command(RunCommand):
    help = (
        "Net2Vec (Fong & Vedaldi §3.1–3.2) on one layer: best single filter vs learned filter combinations and "
        "top-F subsets, as segmenters of the most frequent concepts and as image classifiers; a run, prints its "
        "id. Reuses the layer's extraction."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for name in ("network", "dataset", "layer"):
            add_argument(parser, NET2VEC_PARAMS, name)
        add_argument(
            parser,
            NET2VEC_PARAMS,
            "concepts",
            help="probe the K most frequent concepts with enough train and val images",
        )
        for name in ("epochs", "pixels_per_image", "lr", "top_f", "seed", "upsample"):
            add_argument(parser, NET2VEC_PARAMS, name)
        add_argument(
            parser,
            NET2VEC_PARAMS,
            "standardize",
            help="standardise the inputs; --no-standardize trains on the raw inputs (the paper's)",
        )
        add_argument(
            parser,
            NET2VEC_PARAMS,
            "classification",
            help="the image-level classification probes (§3.2); --no-classification skips them",
        )
        for name in ("classification_concepts", "classification_epochs", "classification_lr", "classification_top_f"):
            add_argument(parser, NET2VEC_PARAMS, name)

    def start_run(self, *, inline, **options):
        return net2vec_run_start(inline=inline, **self.params_of(NET2VEC_PARAMS, options))
