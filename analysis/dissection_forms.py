"""Forms that start Network Dissection runs from the layer pages."""

from django import forms

from analysis.models import Dataset, DissectionBaseline, UpsampleMethod
from analysis.params import form_field
from analysis.services.dissection import DISSECTION_PARAMS, ROTATION_DEFAULTS, ROTATION_PARAMS


def _dataset_choices():
    return [(name, name) for name in Dataset.objects.order_by("name").values_list("name", flat=True)]


class DissectionForm(forms.Form):
    dataset = forms.ChoiceField(help_text="The probe dataset whose masks score the units.")
    upsample = form_field(
        DISSECTION_PARAMS, "upsample", choice_labels=dict(UpsampleMethod.choices), label="Upsampling to mask resolution"
    )
    baseline = form_field(
        DISSECTION_PARAMS,
        "baseline",
        choice_labels=dict(DissectionBaseline.choices),
        help_text="Shuffled: each image's activations scored against another image's masks; "
        "detectors found then are chance.",
    )
    shards = form_field(
        DISSECTION_PARAMS,
        "shards",
        help_text="Image ranges tallied as separate tasks (more workers, faster); the counts merge exactly.",
    )
    iou_threshold = form_field(DISSECTION_PARAMS, "iou_threshold", label="Detector IoU threshold")
    strict_threshold = form_field(
        DISSECTION_PARAMS,
        "strict_threshold",
        label="Strict threshold (S > T, the published code)",
        help_text="Unticked: ND'18's S ≥ T.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = _dataset_choices()


def _number_list(text: str, kind, what: str):
    try:
        values = [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise forms.ValidationError(f"Give {what} separated by commas.") from None
    if not values:
        raise forms.ValidationError(f"Give at least one of the {what}.")
    return values


class RotationForm(forms.Form):
    dataset = forms.ChoiceField()
    alphas = forms.CharField(
        initial=", ".join(f"{alpha:g}" for alpha in ROTATION_DEFAULTS["alphas"]),
        label="α values",
        help_text="Fractions of the rotation, in [0, 1]; 0 is the layer itself.",
    )
    seeds = forms.CharField(
        initial=", ".join(str(seed) for seed in ROTATION_DEFAULTS["seeds"]),
        help_text="One random rotation Q per seed, for every α of the curve.",
    )
    full_rotation_repeats = form_field(ROTATION_PARAMS, "full_rotation_repeats", label="Repeats at α = 1")
    upsample = form_field(
        ROTATION_PARAMS, "upsample", choice_labels=dict(UpsampleMethod.choices), label="Upsampling to mask resolution"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = _dataset_choices()

    def clean_alphas(self):
        return _number_list(self.cleaned_data["alphas"], float, "α values")  # the schema checks each

    def clean_seeds(self):
        return _number_list(self.cleaned_data["seeds"], int, "seeds")
