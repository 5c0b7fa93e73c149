from analysis.management.run_command import RunCommand
from analysis.services.parts import PART_DEFAULTS, SPLITS, part_detection_run_start


class Command(RunCommand):
    help = ("Part detection (GG'18 §3): every filter of a layer as a detector of every part class, with box "
            "regression, NMS, VOC AP and GA filter combinations; a run; prints its id.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--network", required=True)
        parser.add_argument("--dataset", required=True, help="a dataset with object and part boxes")
        parser.add_argument("--layer", required=True, help="dotted layer name")
        parser.add_argument("--inputs", choices=["object_crops", "whole_images"], default=PART_DEFAULTS["inputs"],
                            help="object boxes with R-CNN context (GG'18, default) or whole images (cached maps)")
        parser.add_argument("--split", choices=SPLITS, default=PART_DEFAULTS["split"])
        parser.add_argument("--no-regression", action="store_true", help="score raw receptive-field boxes")
        parser.add_argument("--iou-threshold", type=float, default=PART_DEFAULTS["iou_threshold"])
        parser.add_argument("--nms-iou", type=float, default=PART_DEFAULTS["nms_iou"])
        parser.add_argument("--min-part-size", type=float, default=PART_DEFAULTS["min_part_size"],
                            help="drop parts whose mean box side is at most this many pixels (GG'18: 15)")
        parser.add_argument("--min-instances", type=int, default=PART_DEFAULTS["min_instances"])
        parser.add_argument("--population", type=int, default=PART_DEFAULTS["population"])
        parser.add_argument("--generations", type=int, default=PART_DEFAULTS["generations"])
        parser.add_argument("--seed", type=int, default=PART_DEFAULTS["seed"])
        parser.add_argument("--max-views", type=int, default=PART_DEFAULTS["max_views"],
                            help="at most this many views per object class (a seeded sample; 0 = all)")
        parser.add_argument("--batch-size", type=int, default=PART_DEFAULTS["batch_size"])

    def start_run(self, *, inline, network, dataset, layer, inputs, split, no_regression, iou_threshold, nms_iou,
                  min_part_size, min_instances, population, generations, seed, max_views, batch_size, **options):
        return part_detection_run_start(
            network=network, dataset=dataset, layer=layer, inputs=inputs, split=split, regression=not no_regression,
            iou_threshold=iou_threshold, nms_iou=nms_iou, min_part_size=min_part_size, min_instances=min_instances,
            population=population, generations=generations, seed=seed, max_views=max_views, batch_size=batch_size,
            inline=inline)
