from analysis.management.run_command import RunCommand
from analysis.params import add_argument
from analysis.services.networks import DEMO_TRAINING_PARAMS, demo_training_run_start


class Command(RunCommand):
    help = "Train the demo CNN on a dataset with one object class per image and register it (a run)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for name in ("dataset", "name", "epochs", "seed"):
            add_argument(parser, DEMO_TRAINING_PARAMS, name)

    def start_run(self, *, inline, **options):
        return demo_training_run_start(inline=inline, **self.params_of(DEMO_TRAINING_PARAMS, options))
