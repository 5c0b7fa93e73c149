from analysis.management.run_command import RunCommand
from analysis.services.datasets import PROBE_WORLD_DEFAULTS, probe_world_generate, probe_world_run_start


class Command(RunCommand):
    help = ("Generate the probe world (object-centred images with pixel masks, Broden format). With --out DIR, "
            "write the files there and stop; otherwise start a run that generates and registers it as --name.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--out", help="write the Broden directory here, synchronously, without registering it")
        parser.add_argument("--name", default="probe-world", help="dataset name to register (without --out)")
        parser.add_argument("--images", type=int, default=PROBE_WORLD_DEFAULTS["n_images"])
        parser.add_argument("--seed", type=int, default=PROBE_WORLD_DEFAULTS["seed"])
        parser.add_argument("--size", type=int, default=PROBE_WORLD_DEFAULTS["size"], help="image side in pixels")

    def handle(self, *args, out=None, **options):
        if out is None:
            return super().handle(*args, **options)
        from pathlib import Path

        summary = probe_world_generate(out_dir=Path(out), n_images=options["images"], seed=options["seed"],
                                       size=options["size"])
        self.stdout.write(f"wrote {summary['n_images']} images to {summary['out_dir']} "
                          f"in {summary['generation_seconds']} s")

    def start_run(self, *, inline, name, images, seed, size, **options):
        return probe_world_run_start(name=name, n_images=images, seed=seed, size=size, inline=inline)
