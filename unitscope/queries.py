"""Reading ids from query strings: a malformed or out-of-range id is "none given", never a 500."""

from __future__ import annotations

import re

ID_PATTERN = re.compile(r"[0-9]{1,18}")
"""ASCII digits only (``str.isdigit`` takes "²", which ``int`` refuses), and below 2**63 (a database bigint)."""


def query_id(query, name: str) -> int | None:
    """The non-negative integer id ``query[name]`` (a ``QueryDict`` or any mapping), or None when absent or
    malformed."""
    value = query.get(name) or ""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        return None
    return int(value)
