"""Home pages of the annotating roles."""
from django.views.generic import TemplateView

from accounts.permissions import CrowdRequiredMixin, ExpertRequiredMixin


class ExpertHomeView(ExpertRequiredMixin, TemplateView):
    template_name = "annotation/expert_home.html"


class CrowdHomeView(CrowdRequiredMixin, TemplateView):
    template_name = "annotation/crowd_home.html"
