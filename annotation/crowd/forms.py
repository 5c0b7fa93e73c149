"""Forms of crowd studies: creating one (researchers), answering a HIT and the qualification test (workers),
reviewing work, bonuses and blocks (researchers)."""

from __future__ import annotations

from django import forms
from django.db.models import Exists, OuterRef

from analysis.models import ExemplarKind, ExemplarSet, ExplanatoryGraph, LayerExtraction

from ..fields import ExtractionMultipleChoiceField, parse_units
from ..models import (
    DESCRIPTION_MAX_LENGTH,
    ConditionAssignment,
    CrowdStudy,
    CrowdTaskKind,
    ForcedChoiceCondition,
    Hit,
    OverlapRule,
)
from .services import CrowdInputError, answer_fields


def extractions_with_overall_grids():
    """Extractions whose ND'18 top-15 grids are rendered (what crowd HITs show), newest first."""
    rendered = ExemplarSet.objects.filter(extraction=OuterRef("pk"), kind=ExemplarKind.TOP_OVERALL, grid__isnull=False)
    return (
        LayerExtraction.objects.filter(Exists(rendered))
        .select_related("layer__network", "dataset")
        .order_by("layer__network__name", "layer__order", "-created_at")
    )


class CrowdStudyCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    kind = forms.ChoiceField(choices=CrowdTaskKind.choices, initial=CrowdTaskKind.VALIDATION, widget=forms.RadioSelect)
    extractions = ExtractionMultipleChoiceField(
        queryset=LayerExtraction.objects.none(),
        label="Layers",
        widget=forms.CheckboxSelectMultiple,
        help_text="Layers whose top-15 grids are rendered.",
    )
    units = forms.CharField(required=False, max_length=500, help_text="Empty for every unit, or e.g. 0-31, 40.")
    assignments_per_hit = forms.IntegerField(label="Workers per HIT (N)", initial=3, min_value=1, max_value=50)
    controls = forms.BooleanField(
        required=False, initial=True, help_text="Validation: add a control label (a random other concept) per unit."
    )
    include_human = forms.BooleanField(
        required=False,
        initial=True,
        label="Human descriptions",
        help_text="Validation: add canonical descriptions from a description study.",
    )
    selection_round = forms.BooleanField(
        required=False,
        initial=True,
        label="Selection round (ND'18)",
        help_text="Validation: the canonical descriptions also get HITs of their own whose votes alone decide which "
        "units are interpretable, so Table 3 never measures on the votes that chose its units.",
    )
    description_study = forms.ModelChoiceField(
        queryset=CrowdStudy.objects.none(),
        required=False,
        help_text="Empty: the newest description study covering each unit.",
    )
    detectors_only = forms.BooleanField(
        required=False, help_text="Validation: dissection labels of detectors only (IoU above the threshold)."
    )
    include_dead_units = forms.BooleanField(
        label="Include dead and saturated units",
        required=False,
        initial=False,
        help_text="Off (the default): units that never fire, or whose threshold T_k is 0 (their grids highlight "
        "nothing or everything), get no HIT, gold item or qualification question.",
    )
    gold_rate = forms.FloatField(initial=0.1, min_value=0.0, max_value=0.9)
    qualification_required = forms.BooleanField(required=False, initial=True, label="Qualification test")
    lease_seconds = forms.IntegerField(label="Lease (seconds)", initial=900, min_value=30, max_value=24 * 3600)
    overlap_rule = forms.ChoiceField(choices=OverlapRule.choices, initial=OverlapRule.FIXED)
    graph = forms.ModelChoiceField(
        queryset=ExplanatoryGraph.objects.none(),
        required=False,
        label="Explanatory graph (purity)",
        help_text="Purity: compare the graph's top nodes with the raw filters, both drawn "
        "as the patches of their top-K inferences on the graph's inputs (a category's object crops, for the "
        "paper's per-category graphs). Empty: raw filters only, on whole images.",
    )
    purity_mass = forms.FloatField(
        initial=0.3,
        min_value=0.01,
        max_value=1.0,
        help_text="Purity: the share of the total score mass the top-K hold (EG: 0.3).",
    )
    conditions = forms.MultipleChoiceField(
        choices=ForcedChoiceCondition.choices,
        required=False,
        initial=[ForcedChoiceCondition.NATURAL],
        widget=forms.CheckboxSelectMultiple,
        label="Forced choice: conditions",
        help_text="Compared on the same units and query pairs (Borowski et al. 2021: natural exemplars).",
    )
    condition_assignment = forms.ChoiceField(
        choices=ConditionAssignment.choices,
        initial=ConditionAssignment.TRIALS,
        required=False,
        label="Forced choice: conditions assigned",
    )
    trials_per_unit = forms.IntegerField(
        initial=2,
        min_value=1,
        max_value=10,
        required=False,
        label="Forced choice: trials per unit",
        help_text="Query pairs per unit (9 + 9 references, queries from ranks 10-19; "
        "the gold rate is the catch-trial rate).",
    )
    external_submit_hosts = forms.CharField(
        max_length=500,
        initial="www.mturk.com workersandbox.mturk.com",
        help_text="Hosts an MTurk-style turkSubmitTo may name.",
    )
    seed = forms.IntegerField(initial=0, min_value=0)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["extractions"].queryset = extractions_with_overall_grids()
        self.fields["description_study"].queryset = CrowdStudy.objects.filter(kind=CrowdTaskKind.DESCRIPTION)
        self.fields["graph"].queryset = ExplanatoryGraph.objects.select_related("network", "dataset").order_by(
            "-created_at", "category"
        )

    def clean_units(self):
        return parse_units(self.cleaned_data.get("units", ""))


class HitAnswerForm(forms.Form):
    """A worker's answer; which fields count depends on the HIT's kind (checked by ``answer_fields``)."""

    answer = forms.ChoiceField(choices=[("yes", "Yes"), ("no", "No")], required=False, widget=forms.RadioSelect)
    description = forms.CharField(required=False, max_length=DESCRIPTION_MAX_LENGTH, strip=True)
    confidence = forms.TypedChoiceField(
        choices=[(str(v), str(v)) for v in range(1, 6)],
        coerce=int,
        required=False,
        widget=forms.RadioSelect,
        empty_value=None,
    )
    count = forms.IntegerField(required=False, min_value=0)
    pasted = forms.BooleanField(required=False, widget=forms.HiddenInput)
    client_ms = forms.CharField(required=False, max_length=20, widget=forms.HiddenInput)

    def __init__(self, *args, hit: Hit, **kwargs):
        super().__init__(*args, **kwargs)
        self.hit = hit
        if hit.kind == CrowdTaskKind.FORCED_CHOICE:
            self.fields["answer"].choices = [("1", "Image 1"), ("2", "Image 2")]
        if hit.purity_shown is not None:
            self.fields["count"].max_value = hit.purity_shown
            self.fields["count"].widget.attrs.update(max=hit.purity_shown, min=0, inputmode="numeric")

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                cleaned["fields"] = answer_fields(
                    hit=self.hit,
                    answer=cleaned.get("answer") or None,
                    description=cleaned.get("description"),
                    confidence=cleaned.get("confidence"),
                    count=cleaned.get("count"),
                    client_ms=cleaned.get("client_ms"),
                )
            except CrowdInputError as error:
                raise forms.ValidationError(str(error)) from None
        return cleaned


class ReviewForm(forms.Form):
    assignments = forms.CharField(widget=forms.HiddenInput, help_text="Assignment ids, comma-separated.")
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    reason = forms.CharField(required=False, max_length=300)

    def clean_assignments(self):
        try:
            return [int(part) for part in self.cleaned_data["assignments"].split(",") if part.strip()]
        except ValueError:
            raise forms.ValidationError("Bad assignment list.") from None


class BonusForm(forms.Form):
    worker = forms.IntegerField(widget=forms.HiddenInput)
    amount_cents = forms.IntegerField(label="Bonus (cents)", min_value=1, max_value=100_000)
    reason = forms.CharField(max_length=300)


class BlockForm(forms.Form):
    worker = forms.IntegerField(widget=forms.HiddenInput)
    action = forms.ChoiceField(choices=[("block", "Block"), ("unblock", "Unblock")])
    reason = forms.CharField(required=False, max_length=300)
