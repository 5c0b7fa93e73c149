"""Panels other apps add to the unit page, so that ``analysis`` shows what people said about a unit without
importing the app that knows (``annotation`` registers its panels from ``AppConfig.ready``; DESIGN.md §3).

A panel is a callable ``panel(*, unit, request) -> str | None``: the HTML of a card (already escaped, e.g. from
``render_to_string``), or None when it has nothing to show for that unit.
"""

from __future__ import annotations

from collections.abc import Callable

from django.utils.safestring import SafeString, mark_safe

UnitPanel = Callable[..., "str | None"]
_unit_panels: dict[str, UnitPanel] = {}


def register_unit_panel(name: str, panel: UnitPanel) -> None:
    """Add (or replace) the unit page's panel ``name``; panels show in registration order."""
    _unit_panels[name] = panel


def unit_panels(*, unit, request) -> list[SafeString]:
    """The HTML of every registered panel that has something to show for ``unit``."""
    rendered = (panel(unit=unit, request=request) for panel in _unit_panels.values())
    return [mark_safe(html) for html in rendered if html]
