from analysis.management.run_command import RunCommand
from analysis.services.net2vec import NET2VEC_DEFAULTS, net2vec_run_start


class Command(RunCommand):
    help = ("Net2Vec (Fong & Vedaldi §3.1–3.2) on one layer: best single filter vs learned filter combinations and "
            "top-F subsets, as segmenters of the most frequent concepts and as image classifiers; a run, prints its "
            "id. Reuses the layer's extraction.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--network", required=True)
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--layer", required=True, help="dotted layer name")
        parser.add_argument("--concepts", type=int, default=NET2VEC_DEFAULTS["concepts"],
                            help="probe the K most frequent concepts with enough train and val images")
        parser.add_argument("--epochs", type=int, default=NET2VEC_DEFAULTS["epochs"])
        parser.add_argument("--pixels-per-image", type=int, default=NET2VEC_DEFAULTS["pixels_per_image"])
        parser.add_argument("--lr", type=float, default=NET2VEC_DEFAULTS["lr"])
        parser.add_argument("--top-f", type=int, nargs="+", default=NET2VEC_DEFAULTS["top_f"])
        parser.add_argument("--seed", type=int, default=NET2VEC_DEFAULTS["seed"])
        parser.add_argument("--upsample", choices=["anchored", "plain"], default=NET2VEC_DEFAULTS["upsample"])
        parser.add_argument("--no-standardize", dest="standardize", action="store_false",
                            help="train on the raw inputs (the paper's), not standardised ones")
        parser.add_argument("--no-classification", dest="classification", action="store_false",
                            help="skip the image-level classification probes (§3.2)")
        parser.add_argument("--classification-concepts", type=int, default=NET2VEC_DEFAULTS["classification_concepts"])
        parser.add_argument("--classification-epochs", type=int, default=NET2VEC_DEFAULTS["classification_epochs"])
        parser.add_argument("--classification-lr", type=float, default=NET2VEC_DEFAULTS["classification_lr"])
        parser.add_argument("--classification-top-f", type=int, nargs="+",
                            default=NET2VEC_DEFAULTS["classification_top_f"])

    def start_run(self, *, inline, network, dataset, layer, concepts, epochs, pixels_per_image, lr, top_f, seed,
                  upsample, standardize, classification, classification_concepts, classification_epochs,
                  classification_lr, classification_top_f, **options):
        return net2vec_run_start(network=network, dataset=dataset, layer=layer, concepts=concepts, epochs=epochs,
                                 pixels_per_image=pixels_per_image, lr=lr, top_f=top_f, seed=seed, upsample=upsample,
                                 standardize=standardize, classification=classification,
                                 classification_concepts=classification_concepts,
                                 classification_epochs=classification_epochs, classification_lr=classification_lr,
                                 classification_top_f=classification_top_f, inline=inline)
