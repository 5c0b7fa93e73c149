"""Rate limits on public endpoints (the crowd's worker pages), counted in Django's cache.

A limit is ``"<count>/<period>"`` with period ``s``, ``m`` or ``h`` (``"120/m"``), per group and per client: the
worker code in the URL when the view has one (a worker's own budget), else the client's address. Fixed windows:
at most ``count`` requests per client and window, then 429 with ``Retry-After`` until the window ends.

Settings (from the environment in ``settings/base.py``): ``UNITSCOPE_RATE_LIMITS`` maps a group to its limit
(empty or ``"off"`` disables it) and ``UNITSCOPE_RATE_LIMIT_ENABLED`` switches them all. Counters live in the
``default`` cache, which every web process shares: the database cache by default (its table is made by
``migrate``), Redis when ``CACHE_URL`` names one. Failed logins are counted the same way (``accounts/throttle.py``).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

PERIODS = {"s": 1, "m": 60, "h": 3600}
RATE_PATTERN = re.compile(r"(\d+)/(\d*)([smh])")


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``"120/m"`` → ``(120, 60)``, ``"10/15m"`` → ``(10, 900)``; empty or ``"off"`` → None. Raises ValueError
    for anything else."""
    if rate is None or rate.strip().lower() in ("", "off", "none"):
        return None
    match = RATE_PATTERN.fullmatch(rate.strip())
    if match is None or int(match[1]) < 1 or (match[2] and int(match[2]) < 1):
        raise ValueError(f"a rate limit looks like 120/m or 10/15m (count per s, m or h), not {rate!r}")
    return int(match[1]), int(match[2] or 1) * PERIODS[match[3]]


def client_address(request: HttpRequest) -> str:
    """The client's address as the web server saw it (``REMOTE_ADDR``; a proxy in front must set it)."""
    return request.META.get("REMOTE_ADDR", "")


def client_ident(request: HttpRequest, kwargs: dict) -> str:
    """Whose budget a request spends: the worker code in the URL, else the client's address."""
    if kwargs.get("code"):
        return f"code:{kwargs['code']}"
    return f"ip:{client_address(request)}"


def _window(group: str, ident: str, period: int, now: float) -> tuple[str, float]:
    """The cache key of ``ident``'s current fixed window in ``group`` and the time that window ends."""
    window = int(now // period)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
    return f"ratelimit:{group}:{digest}:{window}", (window + 1) * period


def window_count(group: str, ident: str, *, rate: str | None, add: bool, now: float | None = None) -> int | None:
    """Seconds ``ident`` must wait in ``group`` under ``rate`` (None when it may go on). With ``add``, this call
    is counted first (a request, a failed login); without, the count is only read."""
    limit = parse_rate(rate)
    if limit is None:
        return None
    count, period = limit
    now = time.time() if now is None else now
    key, ends = _window(group, ident, period, now)
    if add:
        cache.add(key, 0, timeout=period + 1)
        try:
            used = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=period + 1)
            used = 1
        over = used > count
    else:
        over = (cache.get(key) or 0) >= count
    return max(1, int(ends - now)) if over else None


def window_reset(group: str, ident: str, *, rate: str | None, now: float | None = None) -> None:
    """Forget ``ident``'s count in ``group``'s current window."""
    limit = parse_rate(rate)
    if limit is not None:
        cache.delete(_window(group, ident, limit[1], time.time() if now is None else now)[0])


def rate_limit_hit(group: str, ident: str, *, now: float | None = None) -> int | None:
    """Count one request of ``ident`` in ``group``; seconds to wait when over the limit, else None."""
    if not getattr(settings, "UNITSCOPE_RATE_LIMIT_ENABLED", True):
        return None
    return window_count(group, ident, rate=getattr(settings, "UNITSCOPE_RATE_LIMITS", {}).get(group), add=True, now=now)


def rate_limited(group: str) -> Callable:
    """Decorator for a view (function or ``dispatch``): 429 once the client used up ``group``'s limit."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            wait = rate_limit_hit(group, client_ident(request, kwargs))
            if wait is not None:
                response = HttpResponse(
                    render_to_string("ratelimited.html", {"wait": wait}, request=request), status=429
                )
                response["Retry-After"] = str(wait)
                return response
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
