import json

from django.core.management.base import BaseCommand, CommandError

from analysis.engine.agreement import DEFAULT_REPLICATES
from annotation.common import SIMULATED_CHOICES
from annotation.expert.selectors import study_agreement, study_dissection_agreement, study_type_distribution
from annotation.models import Study

LABELS = {
    "percent_agreement": "percent agreement",
    "cohen_kappa": "Cohen's kappa",
    "fleiss_kappa": "Fleiss' kappa",
    "krippendorff_alpha": "Krippendorff's alpha (nominal)",
}


class Command(BaseCommand):
    help = (
        "Agreement of a study's raters on the five answers: percent agreement, Cohen's kappa (two raters), "
        "Fleiss' kappa, Krippendorff's alpha, each with a bootstrap interval; all five answers count as in GG'18 §4.1 "
        "('not sure' as a category), the variant with 'not sure' rejected under 'alternative'."
    )

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True, help="the study's name (or id)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
        parser.add_argument(
            "--simulated",
            choices=SIMULATED_CHOICES,
            default="exclude",
            help="simulated raters: exclude (default), include, or only",
        )
        parser.add_argument("--include-simulated", action="store_true", help="same as --simulated include")
        parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES, help="bootstrap resamples")
        parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
        parser.add_argument("--confidence", type=float, default=0.95)

    def handle(
        self,
        *args,
        study,
        as_json: bool,
        simulated: str,
        include_simulated: bool,
        replicates: int,
        seed: int,
        confidence: float,
        **options,
    ):
        found = Study.objects.filter(name=study).first()
        if found is None and study.isdigit():
            found = Study.objects.filter(pk=int(study)).first()
        if found is None:
            raise CommandError(f"No study named {study!r}.")
        if replicates < 1 or not 0 < confidence < 1:
            raise CommandError("--replicates must be positive and --confidence between 0 and 1.")
        if include_simulated and simulated == "exclude":
            simulated = "include"
        report = study_agreement(found, simulated=simulated, replicates=replicates, seed=seed, confidence=confidence)
        report["type_distribution"] = study_type_distribution(found, simulated=simulated)
        comparison = study_dissection_agreement(found, simulated=simulated)
        report["dissection_agreement"] = comparison["summary"] if comparison else None
        if as_json:
            self.stdout.write(json.dumps(report, indent=2))
            return
        self.stdout.write(
            f"Study {found.name}: {report['n_items']} items with two or more answers, "
            f"{report['n_raters']} raters ({', '.join(report['raters']) or 'none'}); simulated raters: "
            f"{simulated}"
        )
        for title, block in (
            ("all five answers, 'not sure' as a category (GG'18)", report),
            ("variant: 'not sure' rejected", report["alternative"]),
        ):
            self.stdout.write(f"\n{title}:")
            for name, label in LABELS.items():
                estimate = block[name]
                if estimate is None or estimate["value"] is None:
                    self.stdout.write(f"  {label:32s} —")
                    continue
                interval = f"[{estimate['ci'][0]:.3f}, {estimate['ci'][1]:.3f}]" if estimate["ci"] else ""
                self.stdout.write(f"  {label:32s} {estimate['value']:.3f} {interval}  ({estimate['n_items']} items)")
        dissection = report["dissection_agreement"]
        if dissection is None:
            self.stdout.write("\nHuman names vs dissection labels: no dissection of the study's layer on its dataset.")
        else:
            share = "—" if dissection["share"] is None else f"{dissection['share']:.3f}"
            detectors = dissection["detectors"]
            detector_share = "—" if detectors["share"] is None else f"{detectors['share']:.3f}"
            self.stdout.write(
                f"\nHuman names vs dissection labels (run {dissection['dissection_run']}): "
                f"{dissection['matches']}/{dissection['units_compared']} units match ({share}); "
                f"detectors {detectors['matches']}/{detectors['units_compared']} ({detector_share})"
            )
