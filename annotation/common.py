"""The shared floor of both wings: helpers that the expert and the crowd wing (and their exports, demos and
commands) use alike. Nothing here imports a wing.

* :class:`InputError`: the base of the wings' expected user errors (``StudyInputError``, ``CrowdInputError``).
* :func:`study_extraction_for`: the extraction a study of a named network layer is built on.
* :data:`SIMULATED_CHOICES` / :func:`simulated_choice` / :func:`simulated_check`: how reports treat simulated raters.
* Export plumbing: :func:`iso`, :func:`rows_csv`, :func:`attachment_response`.
* :func:`new_token`, :func:`demo_passwords_ensure`, :func:`peak_pixels` (a map position → an image pixel).
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.http import HttpResponse

from analysis.models import ExemplarKind, ExemplarSet, Layer, LayerExtraction
from unitscope.spreadsheets import csv_writer


class InputError(ValueError):
    """An expected user error with a readable message (each wing raises its own subclass)."""


def new_token() -> str:
    """16 random hex digits: opaque, unguessable enough for URLs, and unable to spell a word like 'human'."""
    return secrets.token_hex(8)


def demo_passwords_ensure(usernames: Iterable[str]) -> dict[str, str]:
    """Passwords of demo accounts, kept beside the researcher's in the data dir's demo-credentials.txt."""
    path = settings.UNITSCOPE_DATA_DIR / "demo-credentials.txt"
    stored = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line) if path.exists() else {}
    changed = False
    for username in usernames:
        if username not in stored:
            stored[username] = secrets.token_urlsafe(9)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{name}={secret}\n" for name, secret in stored.items()))
        path.chmod(0o600)
    return {username: stored[username] for username in usernames}


def study_extraction_for(*, network: str, layer: str, dataset: str | None = None) -> LayerExtraction:
    """The newest extraction of ``network``/``layer`` (on ``dataset`` if given) with rendered top-10 grids."""
    layer_row = Layer.objects.filter(network__name=network, name=layer).first()
    if layer_row is None:
        raise InputError(f"No layer {layer!r} of a network {network!r}.")
    extractions = LayerExtraction.objects.filter(layer=layer_row).order_by("-created_at", "-id")
    if dataset:
        extractions = extractions.filter(dataset__name=dataset)
    for extraction in extractions:
        if ExemplarSet.objects.filter(extraction=extraction, kind=ExemplarKind.TOP_CLASS, grid__isnull=False).exists():
            return extraction
    raise InputError(
        f"{network}/{layer} has no extraction with rendered grids" + (f" on {dataset}" if dataset else "") + "."
    )


SIMULATED_CHOICES = ("exclude", "include", "only")
"""How a report or export treats simulated raters and workers: leave them out, add them, or show them alone."""


def simulated_choice(value: str | None, default: str = "exclude") -> str:
    """A page's ``?simulated=`` choice: ``value`` if it is one of :data:`SIMULATED_CHOICES`, else ``default``."""
    return value if value in SIMULATED_CHOICES else default


def simulated_check(value: str) -> str:
    """``value`` if it is one of :data:`SIMULATED_CHOICES`; ValueError otherwise (exports, commands)."""
    if value not in SIMULATED_CHOICES:
        raise ValueError(f"simulated must be one of {', '.join(SIMULATED_CHOICES)}")
    return value


def iso(value) -> str | None:
    """A datetime as ISO 8601 text for exports (None stays None)."""
    return value.isoformat() if value else None


def csv_cell(value: Any) -> Any:
    """One CSV cell: None → empty, booleans → 0/1, lists and dicts → JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def rows_csv(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> str:
    """``rows`` as CSV text with header ``fields`` (None → empty, booleans → 0/1, lists → JSON)."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(fields)
    for row in rows:
        writer.writerow([csv_cell(row.get(field)) for field in fields])
    return buffer.getvalue()


def attachment_response(text: str | bytes, content_type: str, filename: str) -> HttpResponse:
    """An export file as a download (the site's and the API's export endpoints)."""
    response = HttpResponse(text, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def peak_pixels(
    layer, network, positions: Sequence[Sequence[int]], height: int, width: int, map_size: tuple[int, int]
) -> list[tuple[float, float]]:
    """Map ``(i, j)`` map positions → ``(y, x)`` image pixels inside the image (receptive-field centres when known,
    else map-cell centres): :func:`analysis.engine.upsample.peak_pixels`, the one conversion."""
    import torch  # local: keeps torch out of the web processes that import this module

    from analysis.engine.upsample import peak_pixels as engine_peak_pixels  # local: as torch above

    points = engine_peak_pixels(
        torch.as_tensor(list(positions), dtype=torch.int64).reshape(-1, 2),
        layer.geometry,
        input_size=(network.input_height, network.input_width),
        image_size=(height, width),
        map_size=map_size,
        clip=True,
    )
    return [(float(y), float(x)) for y, x in points.tolist()]
