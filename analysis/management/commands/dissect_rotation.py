from django.core.management.base import CommandError

from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.dissection import ROTATION_DEFAULTS, ROTATION_PARAMS, rotation_run_start


def _numbers(text: str, kind):
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"expected comma-separated numbers, got {text!r}") from None


class Command(RunCommand):
    help = (
        "Random-rotation test of a layer (ND'18 §3.2): unique detectors of Q^α f(x) for α in a grid; a run, "
        "prints its id."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for name in ("network", "dataset", "layer"):
            add_argument(parser, ROTATION_PARAMS, name)
        parser.add_argument(
            "--alphas",
            default=",".join(str(a) for a in ROTATION_DEFAULTS["alphas"]),
            help="comma-separated α in [0, 1]",
        )
        parser.add_argument(
            "--seeds",
            default=",".join(str(s) for s in ROTATION_DEFAULTS["seeds"]),
            help="comma-separated seeds of Q, one rotation each for every α of the curve",
        )
        add_argument(parser, ROTATION_PARAMS, "full_rotation_repeats")
        add_argument(parser, ROTATION_PARAMS, "upsample")
        add_argument(parser, ROTATION_PARAMS, "iou_threshold")

    def start_run(self, *, inline, alphas, seeds, **options):
        return rotation_run_start(
            alphas=_numbers(alphas, float),
            seeds=_numbers(seeds, int),
            inline=inline,
            **self.params_of(ROTATION_PARAMS, options),
        )
