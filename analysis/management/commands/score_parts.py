from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.parts import PART_PARAMS, part_detection_run_start


class Command(RunCommand):
    help = (
        "Part detection (GG'18 §3): every filter of a layer as a detector of every part class, with box "
        "regression, NMS, VOC AP and GA filter combinations; a run; prints its id."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        add_argument(parser, PART_PARAMS, "network")
        add_argument(parser, PART_PARAMS, "dataset", help="a dataset with object and part boxes")
        add_argument(parser, PART_PARAMS, "layer")
        add_argument(
            parser,
            PART_PARAMS,
            "inputs",
            help="object boxes with R-CNN context (GG'18, default) or whole images (cached maps)",
        )
        add_argument(parser, PART_PARAMS, "split")
        add_argument(
            parser,
            PART_PARAMS,
            "regression",
            help="box regression (GG'18 §3.1.1); --no-regression scores raw receptive-field boxes",
        )
        for name in (
            "iou_threshold",
            "nms_overlap",
            "nms_threshold",
            "min_part_size",
            "min_instances",
            "population",
            "generations",
            "seed",
        ):
            add_argument(parser, PART_PARAMS, name)
        add_argument(
            parser, PART_PARAMS, "max_views", help="at most this many views per object class (a seeded sample; 0 = all)"
        )
        add_argument(parser, PART_PARAMS, "batch_size")

    def start_run(self, *, inline, **options):
        return part_detection_run_start(inline=inline, **self.params_of(PART_PARAMS, options))
