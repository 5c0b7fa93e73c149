from analysis.management.run_command import RunCommand
from analysis.services.dissection import DISSECTION_DEFAULTS, dissection_run_start


class Command(RunCommand):
    help = ("Network Dissection of one layer over a dataset (ND'18 §2.2): a run; prints its id. Reuses the layer's "
            "extraction (or runs it first).")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--network", required=True)
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--layer", required=True, help="dotted layer name")
        parser.add_argument("--shards", type=int, default=DISSECTION_DEFAULTS["shards"],
                            help="split the images into this many ranges, each its own task; merged exactly")
        parser.add_argument("--upsample", choices=["anchored", "plain"], default=DISSECTION_DEFAULTS["upsample"],
                            help="anchored at receptive-field centres (ND'18, default) or a plain bilinear resize")
        parser.add_argument("--baseline", choices=["none", "shuffled"], default=DISSECTION_DEFAULTS["baseline"],
                            help="shuffled: pair each image's activations with another image's masks (null baseline)")
        parser.add_argument("--shuffle-seed", type=int, default=DISSECTION_DEFAULTS["shuffle_seed"])
        parser.add_argument("--quantile", type=float, default=DISSECTION_DEFAULTS["quantile"])
        parser.add_argument("--iou-threshold", type=float, default=DISSECTION_DEFAULTS["iou_threshold"])
        parser.add_argument("--strict-threshold", action="store_true",
                            help="a pixel is active when S_k > T_k (the published code) instead of S_k >= T_k (ND'18)")
        parser.add_argument("--count-saturated", action="store_true",
                            help="let units active on every pixel (T_k at the ReLU floor) count as detectors")
        parser.add_argument("--batch-size", type=int, default=DISSECTION_DEFAULTS["batch_size"])

    def start_run(self, *, inline, network, dataset, layer, shards, upsample, baseline, shuffle_seed, quantile,
                  iou_threshold, strict_threshold, count_saturated, batch_size, **options):
        return dissection_run_start(network=network, dataset=dataset, layer=layer, shards=shards, upsample=upsample,
                                    baseline=baseline, shuffle_seed=shuffle_seed, quantile=quantile,
                                    iou_threshold=iou_threshold, strict_threshold=strict_threshold,
                                    count_saturated=count_saturated, batch_size=batch_size, inline=inline)
