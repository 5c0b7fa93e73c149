from django.core.management.base import BaseCommand, CommandError

from annotation.common import InputError, study_extraction_for
from annotation.crowd.adapters import crowd_links
from annotation.crowd.hits import crowd_study_create
from annotation.crowd.simulation import crowd_simulate
from annotation.models import CrowdStudy, CrowdTaskKind


def find_study(value: str) -> CrowdStudy:
    found = CrowdStudy.objects.filter(pk=int(value)).first() if value.isdigit() else None
    found = found or CrowdStudy.objects.filter(name=value).first()
    if found is None:
        raise CommandError(f"No crowd study {value!r}.")
    return found


class Command(BaseCommand):
    help = (
        "Crowd studies (ND'18 §3.1 label validation, descriptions, Explanatory Graph purity counts): "
        "'create' one from layers and print its worker links, 'links' prints a study's links, 'simulate' lets "
        "a simulated crowd (flagged simulated) answer what is left."
    )

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="action", required=True)
        create = commands.add_parser("create", help="create a study and print its links")
        create.add_argument("--name", required=True)
        create.add_argument("--kind", choices=CrowdTaskKind.values, default=CrowdTaskKind.VALIDATION)
        create.add_argument("--network", required=True)
        create.add_argument("--layer", action="append", required=True, help="repeat for several layers")
        create.add_argument("--dataset", default=None)
        create.add_argument("--per-hit", type=int, default=3, help="distinct workers per HIT (default 3)")
        create.add_argument("--gold-rate", type=float, default=0.1)
        create.add_argument("--no-qualification", action="store_true")
        create.add_argument("--no-controls", action="store_true")
        create.add_argument(
            "--no-selection-round",
            action="store_true",
            help="validation: no ND'18 selection round (Table 3 then has no interpretable units)",
        )
        create.add_argument(
            "--include-dead-units",
            action="store_true",
            help="make HITs of dead and saturated units too (never fire, or threshold 0)",
        )
        create.add_argument("--description-study", default=None, help="where human labels come from")
        create.add_argument("--submit-hosts", default=None, help="hosts a turkSubmitTo may name (space-separated)")
        create.add_argument("--seed", type=int, default=0)
        create.add_argument("--base-url", default="http://127.0.0.1:8000")
        links = commands.add_parser("links", help="print a study's worker links")
        links.add_argument("--study", required=True)
        links.add_argument("--base-url", default="http://127.0.0.1:8000")
        simulate = commands.add_parser("simulate", help="a simulated crowd answers what is left")
        simulate.add_argument("--study", required=True)
        simulate.add_argument("--seed", type=int, default=0)

    def handle(self, *args, action: str, **options):
        try:
            if action == "create":
                extractions = [
                    study_extraction_for(network=options["network"], layer=layer, dataset=options["dataset"])
                    for layer in options["layer"]
                ]
                description_study = find_study(options["description_study"]) if options["description_study"] else None
                study = crowd_study_create(
                    name=options["name"],
                    kind=options["kind"],
                    extractions=extractions,
                    assignments_per_hit=options["per_hit"],
                    gold_rate=options["gold_rate"],
                    qualification_required=not options["no_qualification"],
                    controls=not options["no_controls"],
                    selection_round=not options["no_selection_round"],
                    description_study=description_study,
                    external_submit_hosts=options["submit_hosts"],
                    include_dead_units=options["include_dead_units"],
                    seed=options["seed"],
                )
                self.stdout.write(
                    f"Crowd study {study.pk} ({study.name}): {study.hits.filter(role='task').count()} "
                    f"HITs, {study.assignments_per_hit} workers each."
                )
                self._links(study, options["base_url"])
            elif action == "links":
                self._links(find_study(options["study"]), options["base_url"])
            else:
                study = find_study(options["study"])
                result = crowd_simulate(study=study, seed=options["seed"])
                self.stdout.write(
                    f"Crowd study {study.name}: {result['workers']} simulated workers submitted "
                    f"{result['submitted']} assignments ({result['blocked']} blocked)."
                )
        except InputError as error:
            raise CommandError(str(error)) from error

    def _links(self, study: CrowdStudy, base: str) -> None:
        for adapter, url in crowd_links(study, base=base).items():
            self.stdout.write(f"{adapter}: {url}")
