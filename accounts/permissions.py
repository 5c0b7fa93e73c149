"""Role checks for views: anonymous users are sent to log in (302), users of other roles get 403."""
from __future__ import annotations

from django.contrib.auth.mixins import AccessMixin

from .roles import Role


class RoleRequiredMixin(AccessMixin):
    """Allow only users holding one of ``allowed_roles``."""

    allowed_roles: tuple[Role, ...] = ()
    raise_exception = False

    def dispatch(self, request, *args, **kwargs):
        user = request.user
        if not user.is_authenticated:
            return self.handle_no_permission()
        if not any(user.has_role(role) for role in self.allowed_roles):
            self.raise_exception = True
            return self.handle_no_permission()
        return super().dispatch(request, *args, **kwargs)


class ResearcherRequiredMixin(RoleRequiredMixin):
    allowed_roles = (Role.RESEARCHER,)


class ExpertRequiredMixin(RoleRequiredMixin):
    allowed_roles = (Role.EXPERT,)


class CrowdRequiredMixin(RoleRequiredMixin):
    allowed_roles = (Role.CROWD,)
