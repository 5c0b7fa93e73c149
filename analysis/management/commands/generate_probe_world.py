from pathlib import Path

from django.core.management.base import CommandError

from analysis.management.run_command import RunCommand
from analysis.params import ParamsError, add_argument
from analysis.services.datasets import PROBE_WORLD_PARAMS, probe_world_generate, probe_world_run_start


class Command(RunCommand):
    help = (
        "Generate the probe world (object-centred images with pixel masks, Broden format). With --out DIR, "
        "write the files there and stop; otherwise start a run that generates and registers it as --name."
    )

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--out", help="write the Broden directory here, synchronously, without registering it")
        add_argument(parser, PROBE_WORLD_PARAMS, "name", help="dataset name to register (without --out)")
        add_argument(parser, PROBE_WORLD_PARAMS, "n_images", "--images")
        add_argument(parser, PROBE_WORLD_PARAMS, "seed")
        add_argument(parser, PROBE_WORLD_PARAMS, "size")

    def handle(self, *args, out=None, **options):
        if out is None:
            return super().handle(*args, **options)
        try:
            params = PROBE_WORLD_PARAMS.validate(self.params_of(PROBE_WORLD_PARAMS, options))
        except ParamsError as error:
            raise CommandError(str(error)) from error
        summary = probe_world_generate(
            out_dir=Path(out), n_images=params["n_images"], seed=params["seed"], size=params["size"]
        )
        self.stdout.write(
            f"wrote {summary['n_images']} images to {summary['out_dir']} in {summary['generation_seconds']} s"
        )

    def start_run(self, *, inline, **options):
        return probe_world_run_start(inline=inline, **self.params_of(PROBE_WORLD_PARAMS, options))
