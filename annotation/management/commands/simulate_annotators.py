from django.core.management.base import BaseCommand, CommandError

from annotation.expert.services import StudyInputError, simulated_raters_run
from annotation.expert.simulation import DEFAULT_ERROR_RATE
from annotation.models import Study


class Command(BaseCommand):
    help = (
        "Simulated raters answer every task of a study from the probe world's pixel truth (GG'18's 7-of-10 "
        "rule at the units' peaks), with an error rate. Their judgments are flagged simulated and left out "
        "of reports unless asked for."
    )

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True, help="the study's id (or name)")
        parser.add_argument("--raters", type=int, default=2)
        parser.add_argument(
            "--error-rate",
            type=float,
            default=DEFAULT_ERROR_RATE,
            help=f"probability of a wrong answer (default {DEFAULT_ERROR_RATE})",
        )
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, study: str, raters: int, error_rate: float, seed: int, **options):
        found = Study.objects.filter(pk=int(study)).first() if study.isdigit() else None
        found = found or Study.objects.filter(name=study).first()
        if found is None:
            raise CommandError(f"No study {study!r}.")
        try:
            result = simulated_raters_run(study=found, raters=raters, error_rate=error_rate, seed=seed)
        except StudyInputError as error:
            raise CommandError(str(error)) from error
        truth = (
            ", ".join(f"{answer} {count}" for answer, count in sorted(result["truth_counts"].items()))
            or "not read (every task was answered already)"
        )
        self.stdout.write(
            f"Study {found.name}: {raters} simulated raters (error rate {result['error_rate']}, seed "
            f"{seed}) gave {result['judgments_created']} new judgments on {result['tasks']} tasks. "
            f"Truth: {truth}."
        )
