from __future__ import annotations

from functools import cached_property

from django.contrib.auth.models import AbstractUser

from .roles import Role


class User(AbstractUser):
    """A person using UnitScope. Roles are groups (``researcher``, ``expert``, ``crowd``)."""

    @cached_property
    def roles(self) -> list[Role]:
        """The user's roles in a fixed order (researcher, expert, crowd); read once per request."""
        names = set(self.groups.values_list("name", flat=True))
        return [role for role in Role if role.value in names]

    def has_role(self, role: Role | str) -> bool:
        return self.is_active and Role(role) in self.roles

    @property
    def primary_role(self) -> Role | None:
        return self.roles[0] if self.roles else None
