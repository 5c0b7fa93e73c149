from django import forms

from analysis.services.datasets import PROBE_WORLD_DEFAULTS
from analysis.services.networks import DEMO_TRAINING_DEFAULTS
from analysis.services.selfcheck import SELFCHECK_DEFAULTS, SELFCHECK_LIMITS

slug_help = "Letters, digits, '-' and '_'."


class SelfcheckForm(forms.Form):
    matmul_size = forms.IntegerField(label="Matrix size", initial=SELFCHECK_DEFAULTS["matmul_size"],
                                     min_value=SELFCHECK_LIMITS["matmul_size"][0],
                                     max_value=SELFCHECK_LIMITS["matmul_size"][1],
                                     help_text="Side of the square float32 matrices multiplied.")
    conv_batch = forms.IntegerField(label="Images per batch", initial=SELFCHECK_DEFAULTS["conv_batch"],
                                    min_value=SELFCHECK_LIMITS["conv_batch"][0],
                                    max_value=SELFCHECK_LIMITS["conv_batch"][1])
    conv_image_size = forms.IntegerField(label="Image size (px)", initial=SELFCHECK_DEFAULTS["conv_image_size"],
                                         min_value=SELFCHECK_LIMITS["conv_image_size"][0],
                                         max_value=SELFCHECK_LIMITS["conv_image_size"][1])
    repeats = forms.IntegerField(label="Repeats", initial=SELFCHECK_DEFAULTS["repeats"],
                                 min_value=SELFCHECK_LIMITS["repeats"][0], max_value=SELFCHECK_LIMITS["repeats"][1],
                                 help_text="How many timed products and forward passes.")


class ProbeWorldForm(forms.Form):
    name = forms.SlugField(initial="probe-world", max_length=100, help_text=slug_help)
    n_images = forms.IntegerField(label="Images", initial=PROBE_WORLD_DEFAULTS["n_images"], min_value=10,
                                  max_value=1_000_000)
    size = forms.IntegerField(label="Image size (px)", initial=PROBE_WORLD_DEFAULTS["size"], min_value=32,
                              max_value=1024)
    seed = forms.IntegerField(initial=PROBE_WORLD_DEFAULTS["seed"], min_value=0)


class BrodenImportForm(forms.Form):
    path = forms.CharField(label="Directory on the server", max_length=500,
                           help_text="A Broden-format directory: index.csv, category.csv, label.csv, images/.")
    name = forms.SlugField(max_length=100, help_text=slug_help)


class PascalPartImportForm(forms.Form):
    path = forms.CharField(label="Annotations_Part directory on the server", max_length=500)
    images = forms.CharField(label="VOC JPEGImages directory", max_length=500, required=False,
                             help_text="Leave empty when JPEGImages/ sits beside the annotations.")
    name = forms.SlugField(max_length=100, help_text=slug_help)


class DemoTrainingForm(forms.Form):
    dataset = forms.SlugField(initial=DEMO_TRAINING_DEFAULTS["dataset"],
                              help_text="A dataset with one object class per image, such as the probe world.")
    name = forms.SlugField(label="Network name", initial=DEMO_TRAINING_DEFAULTS["name"], help_text=slug_help)
    epochs = forms.IntegerField(initial=DEMO_TRAINING_DEFAULTS["epochs"], min_value=1, max_value=500)
    seed = forms.IntegerField(initial=DEMO_TRAINING_DEFAULTS["seed"], min_value=0)


class ExtractionForm(forms.Form):
    """Extract activations of some layers of a network over a dataset (choices set per network)."""

    dataset = forms.ChoiceField()
    layers = forms.MultipleChoiceField(widget=forms.SelectMultiple(attrs={"size": 8}),
                                       help_text="Ctrl/⌘-click to choose several.")
    quantile = forms.FloatField(initial=0.995, min_value=0.5, max_value=0.99999,
                                help_text="Per-unit threshold level T_k (ND'18: 0.995, the top 0.005).")

    def __init__(self, *args, network, **kwargs):
        from analysis.models import Dataset

        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = [(name, name) for name in Dataset.objects.values_list("name", flat=True)]
        self.fields["layers"].choices = [(name, name) for name in network.layers.values_list("name", flat=True)]


class GridsForm(forms.Form):
    extraction_run = forms.IntegerField(widget=forms.HiddenInput)
    layer = forms.CharField(widget=forms.HiddenInput)
    units = forms.CharField(required=False, max_length=2000, label="Units",
                            help_text="Only these units, e.g. 0-9,17; empty renders every unit.")

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
