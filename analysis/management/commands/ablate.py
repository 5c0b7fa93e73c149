from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.parts import ABLATION_PARAMS, ablation_run_start


class Command(RunCommand):
    help = (
        "Discriminativeness (GG'18 §5–6): δ of every filter of a layer per object class, the 2σ rule, set "
        "ablations and part blackouts; a run; prints its id."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for name in ("network", "dataset", "layer", "inputs", "split", "score"):
            add_argument(parser, ABLATION_PARAMS, name)
        add_argument(
            parser,
            ABLATION_PARAMS,
            "sigma_factor",
            help="discriminative when delta > this many standard deviations (GG'18: 2)",
        )
        add_argument(
            parser, ABLATION_PARAMS, "max_images", help="at most this many views per class (a seeded sample; 0 = all)"
        )
        add_argument(
            parser, ABLATION_PARAMS, "blackout", help="the part blackouts (GG'18 §6); --no-blackout skips them"
        )
        add_argument(parser, ABLATION_PARAMS, "seed")
        add_argument(parser, ABLATION_PARAMS, "batch_size")

    def start_run(self, *, inline, **options):
        return ablation_run_start(inline=inline, **self.params_of(ABLATION_PARAMS, options))
