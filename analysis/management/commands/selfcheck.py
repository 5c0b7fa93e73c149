from analysis.management.run_command import RunCommand
from analysis.services.selfcheck import SELFCHECK_DEFAULTS, selfcheck_run_start


class Command(RunCommand):
    help = "Start a device self-check run (matrix products and a small CNN on the worker's device). Prints the run id."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for name, default in SELFCHECK_DEFAULTS.items():
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=default)

    def start_run(self, *, inline, matmul_size, conv_batch, conv_image_size, repeats, **options):
        return selfcheck_run_start(inline=inline, matmul_size=matmul_size, conv_batch=conv_batch,
                                   conv_image_size=conv_image_size, repeats=repeats)
