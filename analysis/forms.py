"""Forms of the machine side's start pages. Each parameter field takes its default, bounds and choices from the
job kind's schema (:func:`analysis.params.form_field`); the run's start function then validates through it."""

from django import forms

from analysis.params import form_field
from analysis.services.datasets import BRODEN_IMPORT_PARAMS, PASCAL_PART_IMPORT_PARAMS, PROBE_WORLD_PARAMS
from analysis.services.extraction import EXTRACTION_PARAMS
from analysis.services.networks import DEMO_TRAINING_PARAMS
from analysis.services.selfcheck import SELFCHECK_PARAMS

slug_help = "Letters, digits, '-' and '_'."


class SelfcheckForm(forms.Form):
    matmul_size = form_field(
        SELFCHECK_PARAMS,
        "matmul_size",
        label="Matrix size",
        help_text="Side of the square float32 matrices multiplied.",
    )
    conv_batch = form_field(SELFCHECK_PARAMS, "conv_batch", label="Images per batch")
    conv_image_size = form_field(SELFCHECK_PARAMS, "conv_image_size", label="Image size (px)")
    repeats = form_field(
        SELFCHECK_PARAMS, "repeats", label="Repeats", help_text="How many timed products and forward passes."
    )


class ProbeWorldForm(forms.Form):
    name = form_field(PROBE_WORLD_PARAMS, "name", help_text=slug_help)
    n_images = form_field(PROBE_WORLD_PARAMS, "n_images", label="Images")
    size = form_field(PROBE_WORLD_PARAMS, "size", label="Image size (px)")
    seed = form_field(PROBE_WORLD_PARAMS, "seed")


class BrodenImportForm(forms.Form):
    path = form_field(
        BRODEN_IMPORT_PARAMS,
        "path",
        label="Directory on the server",
        help_text="A Broden-format directory: index.csv, category.csv, label.csv, images/.",
    )
    name = form_field(BRODEN_IMPORT_PARAMS, "name", help_text=slug_help)


class PascalPartImportForm(forms.Form):
    path = form_field(PASCAL_PART_IMPORT_PARAMS, "path", label="Annotations_Part directory on the server")
    images = form_field(
        PASCAL_PART_IMPORT_PARAMS,
        "images",
        label="VOC JPEGImages directory",
        help_text="Leave empty when JPEGImages/ sits beside the annotations.",
    )
    name = form_field(PASCAL_PART_IMPORT_PARAMS, "name", help_text=slug_help)


class DemoTrainingForm(forms.Form):
    dataset = form_field(
        DEMO_TRAINING_PARAMS, "dataset", help_text="A dataset with one object class per image, such as the probe world."
    )
    name = form_field(DEMO_TRAINING_PARAMS, "name", label="Network name", help_text=slug_help)
    epochs = form_field(DEMO_TRAINING_PARAMS, "epochs")
    seed = form_field(DEMO_TRAINING_PARAMS, "seed")


class ExtractionForm(forms.Form):
    """Extract activations of some layers of a network over a dataset (choices set per network)."""

    dataset = forms.ChoiceField()
    layers = forms.MultipleChoiceField(
        widget=forms.SelectMultiple(attrs={"size": 8}), help_text="Ctrl/⌘-click to choose several."
    )
    quantile = form_field(
        EXTRACTION_PARAMS, "quantile", help_text="Per-unit threshold level T_k (ND'18: 0.995, the top 0.005)."
    )
    shards = form_field(
        EXTRACTION_PARAMS,
        "shards",
        help_text="Image ranges run through the network as separate tasks (more GPU workers, faster); merged bit "
        "for bit.",
    )

    def __init__(self, *args, network, **kwargs):
        from analysis.models import Dataset

        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = [(name, name) for name in Dataset.objects.values_list("name", flat=True)]
        self.fields["layers"].choices = [(name, name) for name in network.layers.values_list("name", flat=True)]


class GridsForm(forms.Form):
    extraction_run = forms.IntegerField(widget=forms.HiddenInput)
    layer = forms.CharField(widget=forms.HiddenInput)
    units = forms.CharField(
        required=False,
        max_length=2000,
        label="Units",
        help_text="Only these units, e.g. 0-9,17; empty renders every unit.",
    )

    def clean_units(self):
        from analysis.services.grids import parse_units
        from analysis.services.runs import RunInputError

        text = self.cleaned_data["units"].strip()
        if not text:
            return None
        try:
            return parse_units(text)
        except RunInputError as error:
            raise forms.ValidationError(str(error)) from None


class UnitFilterForm(forms.Form):
    """The layer page's filters (a GET form; every field optional, invalid values are ignored)."""

    STATUS_CHOICES = [
        ("", "Any status"),
        ("live", "Live"),
        ("dead", "Dead or saturated"),
        ("saturated", "Saturated (T_k = 0)"),
    ]

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=100,
        widget=forms.TextInput(attrs={"placeholder": "unit number or label", "type": "search"}),
    )
    label = forms.ChoiceField(label="Label", required=False)
    category = forms.ChoiceField(label="Category", required=False)
    iou_min = forms.FloatField(
        label="IoU from",
        required=False,
        min_value=0,
        max_value=1,
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    iou_max = forms.FloatField(
        label="to",
        required=False,
        min_value=0,
        max_value=1,
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )
    status = forms.ChoiceField(label="Status", required=False, choices=STATUS_CHOICES)

    def __init__(self, *args, labels: list[str] = (), categories: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["label"].choices = [("", "Any label"), *((name, name) for name in labels)]
        self.fields["category"].choices = [("", "Any category"), *((name, name) for name in categories)]

    def filters(self) -> dict:
        """Keyword arguments for ``selectors.unit_rows``: the valid fields only."""
        self.is_valid()
        cleaned = getattr(self, "cleaned_data", {})
        return {
            "search": cleaned.get("q") or "",
            "label": cleaned.get("label") or "",
            "category": cleaned.get("category") or "",
            "iou_min": cleaned.get("iou_min"),
            "iou_max": cleaned.get("iou_max"),
            "status": cleaned.get("status") or "",
        }
