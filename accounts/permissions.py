"""Role checks for views: anonymous users are sent to log in (302), users of other roles get 403."""

from __future__ import annotations

from django.contrib.auth.mixins import AccessMixin
from django.core.exceptions import PermissionDenied

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


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def study_changeable_by(user, study) -> bool:
    """Whether ``user`` may change ``study`` (an expert or crowd study: close, review, block, synonyms, imports):
    the researcher who created it, or a superuser. Every researcher may read every study."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or (study.created_by_id is not None and study.created_by_id == user.pk)


def study_write_check(request, study) -> None:
    """403 for a write request (POST and co.) on ``study`` by anyone but its creator or a superuser; reads pass."""
    if request.method in WRITE_METHODS and not study_changeable_by(request.user, study):
        raise PermissionDenied("Only the researcher who created this study may change it.")
