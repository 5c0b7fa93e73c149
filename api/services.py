"""Writes of the API app: researchers' API tokens."""

from __future__ import annotations

from django.db import transaction
from rest_framework.authtoken.models import Token

from accounts.roles import Role


class TokenRefused(ValueError):
    """The user may not hold an API token (not an active researcher)."""


@transaction.atomic
def api_token_create(*, user, regenerate: bool = False) -> tuple[Token, bool]:
    """The researcher's API token, created if absent; ``regenerate`` replaces an existing one (the old key
    stops working at once). The bool says whether a new key was made."""
    if not user.has_role(Role.RESEARCHER):
        raise TokenRefused(f"{user.get_username()} is not an active researcher; only researchers use the API.")
    if regenerate:
        Token.objects.filter(user=user).delete()
    token, created = Token.objects.get_or_create(user=user)
    return token, created


def api_token_revoke(*, user) -> bool:
    return Token.objects.filter(user=user).delete()[0] > 0
