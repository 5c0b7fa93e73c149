from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.selfcheck import SELFCHECK_PARAMS, selfcheck_run_start


class Command(RunCommand):
    help = "Start a device self-check run (matrix products and a small CNN on the worker's device). Prints the run id."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for name in SELFCHECK_PARAMS.fields:
            add_argument(parser, SELFCHECK_PARAMS, name)

    def start_run(self, *, inline, **options):
        return selfcheck_run_start(inline=inline, **self.params_of(SELFCHECK_PARAMS, options))
