from analysis.management.run_command import RunCommand
from analysis.services.networks import DEMO_TRAINING_DEFAULTS, demo_training_run_start


class Command(RunCommand):
    help = "Train the demo CNN on a dataset with one object class per image and register it (a run)."

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--dataset", default=DEMO_TRAINING_DEFAULTS["dataset"])
        parser.add_argument("--name", default=DEMO_TRAINING_DEFAULTS["name"])
        parser.add_argument("--epochs", type=int, default=DEMO_TRAINING_DEFAULTS["epochs"])
        parser.add_argument("--seed", type=int, default=DEMO_TRAINING_DEFAULTS["seed"])

    def start_run(self, *, inline, dataset, name, epochs, seed, **options):
        return demo_training_run_start(dataset=dataset, name=name, epochs=epochs, seed=seed, inline=inline)
