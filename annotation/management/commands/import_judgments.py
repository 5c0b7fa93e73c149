from django.core.management.base import BaseCommand, CommandError

from annotation.expert.services import StudyInputError, judgments_import


class Command(BaseCommand):
    help = (
        "Import judgments collected elsewhere from a CSV with columns item,rater,answer[,concept] (answers: "
        "part, background, other, no, not_sure) into a study of imported items, created or extended. Every row "
        "is checked first; on any bad row nothing is imported and the bad rows are listed by line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True, help="the study's name (created if absent)")
        parser.add_argument("file", help="the CSV file")

    def handle(self, *args, study: str, file: str, **options):
        try:
            result = judgments_import(study_name=study, path=file)
        except StudyInputError as error:
            raise CommandError(str(error)) from error
        verb = "created" if result["created_study"] else "extended"
        self.stdout.write(
            f"Study {result['study']} {verb}: {result['rows']} rows — {result['created']} new "
            f"judgments, {result['revised']} revisions, {result['unchanged']} unchanged; "
            f"{result['items']} items, {result['raters']} raters."
        )
