"""Forms of expert studies: creating a study (researchers) and answering a task (experts)."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef

from accounts.roles import Role
from analysis.models import ExemplarKind, ExemplarSet, LayerExtraction

from ..fields import ExtractionChoiceField, parse_units
from ..models import CONCEPT_MAX_LENGTH, DEFAULT_INSTRUCTIONS, Answer, StudyPlan
from .services import MAX_CLAIM_HOURS, StudyInputError, answer_validate


def extractions_with_grids():
    """Extractions whose top-10 per-class grids are rendered (what a study can show), newest first."""
    rendered = ExemplarSet.objects.filter(extraction=OuterRef("pk"), kind=ExemplarKind.TOP_CLASS, grid__isnull=False)
    return (
        LayerExtraction.objects.filter(Exists(rendered))
        .select_related("layer__network", "dataset")
        .order_by("-created_at", "-id")
    )


class StudyCreateForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Shown to the experts; used by agreement_report --study.")
    extraction = ExtractionChoiceField(
        queryset=LayerExtraction.objects.none(),
        label="Layer",
        empty_label=None,
        help_text="Layers whose per-class top-10 grids are rendered.",
    )
    object_classes = forms.MultipleChoiceField(
        label="Object classes",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every class of the layer's dataset.",
    )
    experts = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.none(), widget=forms.CheckboxSelectMultiple
    )
    plan = forms.ChoiceField(choices=StudyPlan.choices, initial=StudyPlan.PAPER, widget=forms.RadioSelect)
    overlap_class = forms.ChoiceField(
        label="Overlap class (GG'18 plan)",
        required=False,
        help_text="Done by every expert, for agreement. Empty: the first class.",
    )
    raters_per_task = forms.IntegerField(label="Raters per task (N-raters plan)", initial=2, min_value=1, max_value=20)
    units = forms.CharField(
        label="Units",
        required=False,
        max_length=500,
        help_text="Empty for every unit (GG'18), or e.g. 0-31, 40 for a pilot.",
    )
    instructions = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 7}),
        initial=DEFAULT_INSTRUCTIONS,
        help_text="Shown beside every task. The default is GG'18's wording.",
    )
    seed = forms.IntegerField(initial=0, min_value=0, help_text="Orders the units within each class.")
    claim_hours = forms.IntegerField(
        label="Hours an expert keeps a task unanswered",
        initial=24,
        min_value=0,
        max_value=MAX_CLAIM_HOURS,
        help_text="After that the task goes back to the pool when nothing else is free (0: it stays theirs).",
    )
    suggest_given_names = forms.BooleanField(
        label="Suggest the names other experts gave",
        required=False,
        initial=True,
        help_text="Off: each expert is offered only their own earlier names and the dataset's concepts, so "
        "that agreement is measured between independent answers.",
    )
    include_dead_units = forms.BooleanField(
        label="Include dead and saturated units",
        required=False,
        initial=False,
        help_text="Off (the default): units that never fire, or whose threshold T_k is 0 (their grids highlight "
        "nothing or everything), get no task.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        extractions = extractions_with_grids()
        self.fields["extraction"].queryset = extractions
        names = sorted({name for extraction in extractions for name in extraction.class_names or []})
        self.fields["object_classes"].choices = [(name, name) for name in names]
        self.fields["overlap_class"].choices = [("", "— the first class —")] + [(name, name) for name in names]
        self.fields["experts"].queryset = (
            get_user_model().objects.filter(groups__name=Role.EXPERT.value, is_active=True).order_by("username")
        )

    def clean_units(self):
        return parse_units(self.cleaned_data.get("units", ""))


class AnswerForm(forms.Form):
    answer = forms.ChoiceField(
        choices=Answer.choices, widget=forms.RadioSelect, error_messages={"required": "Choose an answer (keys 1–5)."}
    )
    concept = forms.CharField(required=False, max_length=CONCEPT_MAX_LENGTH, strip=True)
    shown = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean(self):
        cleaned = super().clean()
        if "answer" in cleaned:
            try:
                cleaned["answer"], cleaned["concept"] = answer_validate(cleaned["answer"], cleaned.get("concept"))
            except StudyInputError as error:
                self.add_error("concept", str(error))
        return cleaned


class SynonymForm(forms.Form):
    """One entry of a study's synonym table: ``name`` counts as ``maps_to`` when names are matched."""

    name = forms.CharField(max_length=CONCEPT_MAX_LENGTH, strip=True, help_text="e.g. tyre")
    maps_to = forms.CharField(label="counts as", max_length=CONCEPT_MAX_LENGTH, strip=True, help_text="e.g. wheel")
