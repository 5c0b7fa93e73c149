from django import forms

from analysis.services.selfcheck import SELFCHECK_DEFAULTS, SELFCHECK_LIMITS


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
