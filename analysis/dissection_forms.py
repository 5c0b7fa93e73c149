"""Forms that start Network Dissection runs from the layer pages."""
from django import forms

from analysis.models import Dataset, DissectionBaseline, UpsampleMethod
from analysis.services.dissection import DISSECTION_DEFAULTS, MAX_SHARDS, ROTATION_DEFAULTS


def _dataset_choices():
    return [(name, name) for name in Dataset.objects.order_by("name").values_list("name", flat=True)]


class DissectionForm(forms.Form):
    dataset = forms.ChoiceField(help_text="The probe dataset whose masks score the units.")
    upsample = forms.ChoiceField(choices=UpsampleMethod.choices, initial=DISSECTION_DEFAULTS["upsample"],
                                 label="Upsampling to mask resolution")
    baseline = forms.ChoiceField(choices=DissectionBaseline.choices, initial=DISSECTION_DEFAULTS["baseline"],
                                 help_text="Shuffled: each image's activations scored against another image's "
                                           "masks; detectors found then are chance.")
    shards = forms.IntegerField(initial=DISSECTION_DEFAULTS["shards"], min_value=1, max_value=MAX_SHARDS,
                                help_text="Image ranges tallied as separate tasks (more workers, faster); the "
                                          "counts merge exactly.")
    iou_threshold = forms.FloatField(label="Detector IoU threshold", initial=DISSECTION_DEFAULTS["iou_threshold"],
                                     min_value=0, max_value=0.99)
    strict_threshold = forms.BooleanField(required=False, label="Strict threshold (S > T, the published code)",
                                          help_text="Unticked: ND'18's S ≥ T.")

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
    alphas = forms.CharField(initial=", ".join(f"{alpha:g}" for alpha in ROTATION_DEFAULTS["alphas"]),
                             label="α values", help_text="Fractions of the rotation, in [0, 1]; 0 is the layer itself.")
    seeds = forms.CharField(initial=", ".join(str(seed) for seed in ROTATION_DEFAULTS["seeds"]),
                            help_text="One random rotation Q per seed (ND'18 repeats α = 1 ten times).")
    upsample = forms.ChoiceField(choices=UpsampleMethod.choices, initial=ROTATION_DEFAULTS["upsample"],
                                 label="Upsampling to mask resolution")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = _dataset_choices()

    def clean_alphas(self):
        values = _number_list(self.cleaned_data["alphas"], float, "α values")
        if not all(0 <= value <= 1 for value in values):
            raise forms.ValidationError("Every α must lie in [0, 1].")
        return values

    def clean_seeds(self):
        return _number_list(self.cleaned_data["seeds"], int, "seeds")
