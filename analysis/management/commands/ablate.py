from analysis.management.run_command import RunCommand
from analysis.services.parts import ABLATION_DEFAULTS, SPLITS, ablation_run_start


class Command(RunCommand):
    help = ("Discriminativeness (GG'18 §5–6): δ of every filter of a layer per object class, the 2σ rule, set "
            "ablations and part blackouts; a run; prints its id.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--network", required=True)
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--layer", required=True, help="dotted layer name")
        parser.add_argument("--inputs", choices=["object_crops", "whole_images"], default=ABLATION_DEFAULTS["inputs"])
        parser.add_argument("--split", choices=SPLITS, default=ABLATION_DEFAULTS["split"])
        parser.add_argument("--score", choices=["softmax", "logit"], default=ABLATION_DEFAULTS["score"])
        parser.add_argument("--sigma-factor", type=float, default=ABLATION_DEFAULTS["sigma_factor"],
                            help="discriminative when delta > this many standard deviations (GG'18: 2)")
        parser.add_argument("--max-images", type=int, default=ABLATION_DEFAULTS["max_images"],
                            help="at most this many views per class (a seeded sample; 0 = all)")
        parser.add_argument("--no-blackout", action="store_true", help="skip the part blackouts (GG'18 §6)")
        parser.add_argument("--seed", type=int, default=ABLATION_DEFAULTS["seed"])
        parser.add_argument("--batch-size", type=int, default=ABLATION_DEFAULTS["batch_size"])

    def start_run(self, *, inline, network, dataset, layer, inputs, split, score, sigma_factor, max_images,
                  no_blackout, seed, batch_size, **options):
        return ablation_run_start(network=network, dataset=dataset, layer=layer, inputs=inputs, split=split,
                                  score=score, sigma_factor=sigma_factor, max_images=max_images,
                                  blackout=not no_blackout, seed=seed, batch_size=batch_size, inline=inline)
