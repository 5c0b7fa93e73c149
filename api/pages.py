"""The API's page on the site: a researcher's token and how to use the API."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect
from django.views.generic import TemplateView
from rest_framework.authtoken.models import Token

from accounts.permissions import ResearcherRequiredMixin

from .serializers import api_startable_kinds
from .services import api_token_create, api_token_revoke


class ApiTokenView(ResearcherRequiredMixin, TemplateView):
    """Shows the researcher's token (once created) with usage examples; POST creates, replaces or revokes it."""

    nav_section = "api"
    template_name = "api/token.html"

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "token": Token.objects.filter(user=self.request.user).first(),
            "run_kinds": api_startable_kinds(),
        }

    def post(self, request, *args, **kwargs):
        action = request.POST.get("action")
        if action == "revoke":
            if api_token_revoke(user=request.user):
                messages.success(request, "Your API token was revoked.")
        elif action in ("create", "regenerate"):
            api_token_create(user=request.user, regenerate=action == "regenerate")
            messages.success(
                request,
                "Your new API token is shown below. Scripts using the old one stop working."
                if action == "regenerate"
                else "Your API token is shown below.",
            )
        else:
            messages.error(request, "Unknown action.")
        return redirect("api:token")
