"""The Content-Security-Policy header on every response.

The site has no inline scripts and no ``on…=`` handlers (a test walks the templates): scripts come only from our
own static files, so an injected ``<script>`` or handler would not run even if escaping ever failed. Inline
``style`` attributes stay allowed (progress bars and swatches set widths and colours from data). ``form-action``
is not restricted: crowd pages post their results to the platform's own host (MTurk's ``turkSubmitTo``), and
``frame-ancestors`` is left to ``X-Frame-Options`` (crowd pages are shown inside the platform's iframe).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings


def default_policy() -> str:
    """The policy for this deployment's settings: our own origin, plus the media origin when media is served
    from another host (an object store's public URL)."""
    media = urlsplit(str(settings.MEDIA_URL))
    media_origin = f" {media.scheme}://{media.netloc}" if media.scheme and media.netloc else ""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            f"img-src 'self' data:{media_origin}",
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
        ]
    )


class ContentSecurityPolicyMiddleware:
    """Adds ``settings.UNITSCOPE_CSP`` (or :func:`default_policy`) unless the response already has a policy."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = getattr(settings, "UNITSCOPE_CSP", None) or default_policy()

    def __call__(self, request):
        response = self.get_response(request)
        if self.policy.lower() != "off":
            response.headers.setdefault("Content-Security-Policy", self.policy)
        return response
