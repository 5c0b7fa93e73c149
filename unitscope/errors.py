"""Error pages. A database that is briefly unreachable (restarting, failing over) answers 503 with
``Retry-After``, not a generic 500: nothing was saved, and the same request can simply be sent again."""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.views.defaults import server_error

DATABASE_RETRY_AFTER = 5
"""Seconds a client is asked to wait before retrying while the database is unreachable."""


def handler500(request, *args, **kwargs):
    error = sys.exc_info()[1]
    if isinstance(error, (OperationalError, InterfaceError)):
        response = HttpResponse(
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Briefly unavailable · UnitScope'
            "</title></head><body><main><h1>Briefly unavailable</h1><p>The database did not answer, so nothing was "
            "saved. Please try again in a few seconds.</p></main></body></html>",
            status=503,
            content_type="text/html; charset=utf-8",
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response
    return server_error(request, *args, **kwargs)
