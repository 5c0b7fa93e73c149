"""Login throttling: failed logins counted per account and per client address, in the shared cache.

A guesser is stopped before the password is hashed, so guessing costs the server nothing once the limit is
reached (six parallel guessers used to slow every page to seconds). Limits are
``settings.UNITSCOPE_LOGIN_THROTTLE`` (``"<failures>/<period>"`` as in :mod:`unitscope.ratelimit`, "off" disables
one): ``account`` counts the failures on one username from anywhere (a slow distributed guesser), ``address``
the failures from one address on any usernames (one guesser spraying accounts). Fixed windows: once a count
is reached, logins on that account (or from that address) are refused until the window ends, even with the
right password; a successful login clears its account's count, never its address's.
"""

from __future__ import annotations

from django.conf import settings

from unitscope.ratelimit import window_count, window_reset


def _limits() -> dict[str, str | None]:
    return getattr(settings, "UNITSCOPE_LOGIN_THROTTLE", {})


def _idents(username: str, address: str) -> dict[str, str]:
    # Usernames are matched case-insensitively so that "Rita" and "rita" share one budget.
    return {"account": f"user:{username.strip().casefold()}", "address": f"ip:{address}"}


def login_wait(*, username: str, address: str) -> int | None:
    """Seconds until a login on ``username`` from ``address`` may be tried again; None when it may be now."""
    limits, waits = _limits(), []
    for scope, ident in _idents(username, address).items():
        wait = window_count(f"login_{scope}", ident, rate=limits.get(scope), add=False)
        if wait is not None:
            waits.append(wait)
    return max(waits) if waits else None


def login_failed(*, username: str, address: str) -> None:
    """Count one failed login on ``username`` from ``address``."""
    limits = _limits()
    for scope, ident in _idents(username, address).items():
        window_count(f"login_{scope}", ident, rate=limits.get(scope), add=True)


def login_succeeded(*, username: str) -> None:
    """A correct password clears the account's failures (not the address's: a guesser with an account of their
    own must not reset their budget by logging in)."""
    window_reset("login_account", _idents(username, "")["account"], rate=_limits().get("account"))
