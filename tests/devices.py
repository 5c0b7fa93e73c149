"""Device parametrisation for engine tests, importable without Django (engine tests also run with
``-p no:django``).

``@pytest.mark.parametrize("device", cpu_and_cuda())`` gives every test a ``cpu`` and a ``cuda`` case; the
``cuda`` case carries the ``needs_cuda`` marker, which ``tests/conftest.py`` turns into a skip (with its reason)
where no CUDA device is visible. A GPU run selects exactly those cases with ``pytest -m needs_cuda``.
"""

from __future__ import annotations

import pytest


def cpu_and_cuda() -> list:
    """``[cpu, cuda]`` as ``pytest.param`` values; ``cuda`` is marked ``needs_cuda``."""
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.needs_cuda)]
