"""CSV that a spreadsheet opens as data: formula injection neutralised (OWASP's rule), one helper for every export.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read by Excel, LibreOffice and
Google Sheets as a formula (``=HYPERLINK(…)``, ``=cmd|…``); people's strings reach our CSV files (descriptions,
worker ids, concept names, labels). Such a cell is written with a leading ``'``, which spreadsheets show as text.
Numbers (Python numbers, and strings that are just a number such as ``-0.25``) are left alone so that columns of
values stay numeric. :func:`spreadsheet_unquote` undoes the prefix when our own files are read back.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` as a CSV cell no spreadsheet runs: strings starting a formula get a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def spreadsheet_unquote(value: str) -> str:
    """The inverse of :func:`spreadsheet_safe` for a cell read back from one of our files."""
    if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value[1:]):
        return value[1:]
    return value


class SafeCsvWriter:
    """``csv.writer`` whose rows pass through :func:`spreadsheet_safe` (same arguments, same dialect)."""

    def __init__(self, handle, **kwargs):
        self._writer = csv.writer(handle, **kwargs)

    def writerow(self, row: Iterable[Any]):
        return self._writer.writerow([spreadsheet_safe(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_field(value: Any) -> str:
    """One cell as CSV text (neutralised, quoted when it holds a comma or quote), for rows written by other
    means (``numpy.savetxt`` formats)."""
    buffer = io.StringIO()
    csv_writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue()


def csv_writer(handle, **kwargs) -> SafeCsvWriter:
    """The CSV writer of every export (``lineterminator="\\n"`` unless given)."""
    kwargs.setdefault("lineterminator", "\n")
    return SafeCsvWriter(handle, **kwargs)
