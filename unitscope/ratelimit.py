"""Rate limits on public endpoints (the crowd's worker pages), counted in Django's cache.

A limit is ``"<count>/<period>"`` with period ``s``, ``m`` or ``h`` (``"120/m"``), per group and per client: the
worker code in the URL when the view has one (a worker's own budget), else the client's address. Fixed windows:
at most ``count`` requests per client and window, then 429 with ``Retry-After`` until the window ends.

Settings (from the environment in ``settings/base.py``): ``UNITSCOPE_RATE_LIMITS`` maps a group to its limit
(empty or ``"off"`` disables it) and ``UNITSCOPE_RATE_LIMIT_ENABLED`` switches them all. Counters live in the
``default`` cache: a local-memory cache counts per process; set ``CACHE_URL`` to Redis so that every web process
shares the counts.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

PERIODS = {"s": 1, "m": 60, "h": 3600}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``"120/m"`` → ``(120, 60)``; empty or ``"off"`` → None. Raises ValueError for anything else."""
    if rate is None or rate.strip().lower() in ("", "off", "none"):
        return None
    count, _, period = rate.strip().partition("/")
    if period not in PERIODS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"a rate limit looks like 120/m (count per s, m or h), not {rate!r}")
    return int(count), PERIODS[period]


def client_ident(request: HttpRequest, kwargs: dict) -> str:
    """Whose budget a request spends: the worker code in the URL, else the client's address."""
    if kwargs.get("code"):
        return f"code:{kwargs['code']}"
    return f"ip:{request.META.get('REMOTE_ADDR', '')}"


def rate_limit_hit(group: str, ident: str, *, now: float | None = None) -> int | None:
    """Count one request of ``ident`` in ``group``; seconds to wait when over the limit, else None."""
    if not getattr(settings, "UNITSCOPE_RATE_LIMIT_ENABLED", True):
        return None
    limit = parse_rate(getattr(settings, "UNITSCOPE_RATE_LIMITS", {}).get(group))
    if limit is None:
        return None
    count, period = limit
    now = time.time() if now is None else now
    window = int(now // period)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
    key = f"ratelimit:{group}:{digest}:{window}"
    cache.add(key, 0, timeout=period + 1)
    try:
        used = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=period + 1)
        used = 1
    if used > count:
        return max(1, int((window + 1) * period - now))
    return None


def rate_limited(group: str) -> Callable:
    """Decorator for a view (function or ``dispatch``): 429 once the client used up ``group``'s limit."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            wait = rate_limit_hit(group, client_ident(request, kwargs))
            if wait is not None:
                response = HttpResponse(render_to_string("ratelimited.html", {"wait": wait}, request=request),
                                        status=429)
                response["Retry-After"] = str(wait)
                return response
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
