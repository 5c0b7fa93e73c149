from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from analysis.models import RunStatus
from analysis.services.demo import demo_build, demo_credentials_ensure


class Command(BaseCommand):
    help = ("Build the demo synchronously, without a server or worker (idempotent: finished steps are reused). "
            "For scripts and CI; `make demo` runs the same steps through the worker.")

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        credentials = demo_credentials_ensure()

        def report(event, step, run, created):
            if event == "start":
                self.stdout.write(f"· {step.label} …")
            elif event == "end":
                reused = "" if created else " (already done)"
                self.stdout.write(f"  run {run.pk} {run.status}{reused}" + (f": {run.error}" if run.error else ""))

        runs = demo_build(inline=True, on_step=report)
        if not runs or runs[-1].status != RunStatus.SUCCEEDED:
            raise CommandError("the demo build stopped at a failed step (see above)")
        for username, password in credentials.items():
            self.stdout.write(f"Log in as {username} / {password}")
