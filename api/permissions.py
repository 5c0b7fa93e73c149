"""Who may use the API: researchers only (token or session), and per object who may read or write it.

Study scope mirrors the site: every researcher may read every study (the study pages of
``annotation.expert.views.StudyMixin`` are open to all researchers). Writing into an existing study (importing
judgments) is for the researcher who created it, or a superuser.
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from accounts.permissions import study_changeable_by
from accounts.roles import Role


def is_researcher(user) -> bool:
    return bool(user and user.is_authenticated and user.has_role(Role.RESEARCHER))


def studies_visible_to(user):
    """The studies ``user`` may read through the API (researchers: all, as on the site; others: none)."""
    from annotation.models import Study

    return Study.objects.all() if is_researcher(user) else Study.objects.none()


def study_writable_by(user, study) -> bool:
    """Whether ``user`` may add to ``study`` (its creator, or a superuser: the site's rule)."""
    return is_researcher(user) and study_changeable_by(user, study)


class IsResearcher(BasePermission):
    """Authenticated researchers only: anonymous → 401 (token auth), other roles → 403."""

    message = "The UnitScope API is for researchers."

    def has_permission(self, request, view) -> bool:
        return is_researcher(request.user)


class StudyObjectPermission(IsResearcher):
    """Reads: studies the user may see. Writes: studies the user may write (see :func:`study_writable_by`)."""

    message = "Only the researcher who created this study may change it."

    def has_object_permission(self, request, view, obj) -> bool:
        study = getattr(obj, "study", obj)
        if request.method in SAFE_METHODS:
            return studies_visible_to(request.user).filter(pk=study.pk).exists()
        return study_writable_by(request.user, study)
