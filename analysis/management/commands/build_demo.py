from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from analysis.models import RunStatus
from analysis.services.demo import DemoSize, demo_build, demo_credentials_ensure, demo_hooks_run


class Command(BaseCommand):
    help = (
        "Build the demo synchronously, without a server or worker (idempotent: finished steps are reused). "
        "For scripts and CI; `make demo` runs the same steps through the worker."
    )

    def add_arguments(self, parser):
        default = DemoSize()
        parser.add_argument("--images", type=int, default=default.images, help="probe world images")
        parser.add_argument("--image-size", type=int, default=default.image_size, help="probe world image side (px)")
        parser.add_argument("--epochs", type=int, default=default.epochs, help="training epochs of the demo network")

    def handle(self, *args, images: int, image_size: int, epochs: int, **options):
        call_command("migrate", interactive=False, verbosity=0)
        credentials = demo_credentials_ensure()

        def report(event, step, run, created):
            if event == "start":
                self.stdout.write(f"· {step.label} …")
            elif event == "end":
                reused = "" if created else " (already done)"
                self.stdout.write(f"  run {run.pk} {run.status}{reused}" + (f": {run.error}" if run.error else ""))

        size = DemoSize(images=images, image_size=image_size, epochs=epochs)
        runs = demo_build(inline=True, size=size, on_step=report)
        if not runs or runs[-1].status != RunStatus.SUCCEEDED:
            raise CommandError("the demo build stopped at a failed step (see above)")
        self.stdout.write("· Studies for experts and crowds …")
        credentials.update(demo_hooks_run(size))
        for username, password in credentials.items():
            self.stdout.write(f"Log in as {username} / {password}")
