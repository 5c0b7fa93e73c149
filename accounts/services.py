"""Writes for accounts and roles."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.db import transaction

from .models import User
from .roles import RESEARCHER_PERMISSION_APPS, Role


def role_groups_ensure() -> dict[Role, Group]:
    """Create the three role groups (idempotent); researchers hold every permission of our apps."""
    groups = {role: Group.objects.get_or_create(name=role.value)[0] for role in Role}
    researcher_permissions = Permission.objects.filter(content_type__app_label__in=RESEARCHER_PERMISSION_APPS)
    groups[Role.RESEARCHER].permissions.set(researcher_permissions)
    return groups


@transaction.atomic
def user_create(*, username: str, password: str, role: Role, email: str = "", first_name: str = "") -> User:
    """Create an active user with one role. Researchers may use the admin site (``is_staff``)."""
    groups = role_groups_ensure()
    user = User(username=username, email=email, first_name=first_name, is_staff=role is Role.RESEARCHER)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    user.groups.add(groups[role])
    return user


@transaction.atomic
def user_ensure(*, username: str, password: str, role: Role) -> tuple[User, bool]:
    """Return the user ``username``, creating it with ``role`` if absent; the bool says if it was created."""
    existing = User.objects.filter(username=username).first()
    if existing is not None:
        return existing, False
    return user_create(username=username, password=password, role=role), True
