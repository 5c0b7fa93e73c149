"""A HIT's picture as a worker receives it: one URL per assignment, and bytes and headers that say nothing about
where the picture came from (issue 20, item 4).

Grids are stored once per content hash, so every label of a unit (and every worker) used to load one and the
same media URL, and purity pictures could be told apart by file size or modification time (an explanatory-graph
node's patches against a raw filter's peaks, rendered at different times). Here the picture is served under the
assignment's own URL, without ``Last-Modified`` or ``ETag``, and a purity picture is padded (an ancillary PNG
chunk before ``IEND``, ignored by every decoder) to the size of the study's largest purity picture.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from django.conf import settings

from analysis.models import RenderedGrid

from ..models import CrowdTaskKind, Hit

PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
PAD_CHUNK = b"usPd"
"""An ancillary (lower-case first letter), private (lower-case second) chunk type: decoders skip it."""
CHUNK_OVERHEAD = 12
"""Length, type and CRC of a PNG chunk around its data."""


def _grid_path(grid: RenderedGrid) -> Path:
    return Path(settings.MEDIA_ROOT) / grid.path


def pad_png(data: bytes, size: int) -> bytes:
    """``data`` (a PNG) grown to ``size`` bytes with a padding chunk (unchanged when it is that big already, or
    when the gap is smaller than a chunk's overhead, in which case it is one chunk's overhead larger)."""
    gap = size - len(data)
    if gap <= 0 or not data.endswith(PNG_END):
        return data
    body = b"\x00" * max(gap - CHUNK_OVERHEAD, 0)
    chunk = struct.pack(">I", len(body)) + PAD_CHUNK + body + struct.pack(">I", zlib.crc32(PAD_CHUNK + body))
    return data[: -len(PNG_END)] + chunk + PNG_END


def study_purity_size(study_id: int) -> int:
    """The largest purity picture of a study, in bytes (what every purity picture of it is padded to)."""
    paths = [
        Path(settings.MEDIA_ROOT) / path
        for path in Hit.objects.filter(study_id=study_id, kind=CrowdTaskKind.PURITY, grid__isnull=False)
        .values_list("grid__path", flat=True)
        .distinct()
    ]
    return max((path.stat().st_size for path in paths if path.exists()), default=0)


def hit_picture(hit: Hit) -> bytes | None:
    """The bytes a worker receives for ``hit``'s picture (None when the HIT has none, or its file is missing)."""
    if hit.grid_id is None or not _grid_path(hit.grid).exists():
        return None
    data = _grid_path(hit.grid).read_bytes()
    if hit.kind == CrowdTaskKind.PURITY:
        data = pad_png(data, study_purity_size(hit.study_id))
    return data
