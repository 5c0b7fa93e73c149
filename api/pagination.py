"""Pagination of the API's lists: ``?limit`` and ``?offset`` bounded, so no number reaches the database out of
its range (a 23-digit limit was a 500)."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

MAX_LIMIT = 1000
MAX_OFFSET = 2**53
"""Far beyond any list here, and well inside a bigint."""


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """DRF's limit/offset pagination with ``limit`` at most :data:`MAX_LIMIT` and ``offset`` at most
    :data:`MAX_OFFSET` (malformed values fall back to the defaults, as in DRF)."""

    max_limit = MAX_LIMIT

    def get_offset(self, request) -> int:
        return min(super().get_offset(request), MAX_OFFSET)
