from django.core.management.base import CommandError

from analysis.management.run_command import RunCommand
from analysis.services.dissection import ROTATION_DEFAULTS, rotation_run_start


def _numbers(text: str, kind):
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"expected comma-separated numbers, got {text!r}") from None


class Command(RunCommand):
    help = ("Random-rotation test of a layer (ND'18 §3.2): unique detectors of Q^α f(x) for α in a grid; a run, "
            "prints its id.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--network", required=True)
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--layer", required=True)
        parser.add_argument("--alphas", default=",".join(str(a) for a in ROTATION_DEFAULTS["alphas"]),
                            help="comma-separated α in [0, 1]")
        parser.add_argument("--seeds", default=",".join(str(s) for s in ROTATION_DEFAULTS["seeds"]),
                            help="comma-separated seeds of Q (ND'18 repeats α = 1 ten times)")
        parser.add_argument("--upsample", choices=["anchored", "plain"], default=ROTATION_DEFAULTS["upsample"])
        parser.add_argument("--iou-threshold", type=float, default=ROTATION_DEFAULTS["iou_threshold"])

    def start_run(self, *, inline, network, dataset, layer, alphas, seeds, upsample, iou_threshold, **options):
        return rotation_run_start(network=network, dataset=dataset, layer=layer, alphas=_numbers(alphas, float),
                                  seeds=_numbers(seeds, int), upsample=upsample, iou_threshold=iou_threshold,
                                  inline=inline)
