"""Small factories for tests that need a real probe world, network or extraction in their database.

The slow part of a world is generating its files; ``tests/conftest.py``'s session fixture ``probe_world_files``
does that once per parameter set (in the session's temporary folder, outside any test's own data dir) and
these factories register those files, a network and extractions into the database the test runs on, which is
cheap. Function-scoped tests use the fixtures ``make_probe_world`` and ``tiny_layer_with_grids``; module-scoped
fixtures (which cannot take function-scoped ones) call these functions with ``probe_world_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The tiny world most service, page and crowd tests share: 36 images of 64 px, seed 5.
TINY_WORLD = {"n_images": 36, "size": 64, "seed": 5}
#: The seeded demo network's preprocessing in tests.
TEST_MEAN, TEST_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def probe_world_register(*, name: str, root: Path, n_images: int, size: int, seed: int):
    """Register the generated world in ``root`` as dataset ``name``, as the probe-world run would have."""
    from analysis.services.datasets import probe_world_params
    from analysis.services.datasets import probe_world_register as register

    return register(root=root, params=probe_world_params(name=name, n_images=n_images, size=size, seed=seed))


def seeded_network(
    *,
    name: str = "seeded",
    input_size: tuple[int, int] = (64, 64),
    num_classes: int = 7,
    class_names: Sequence[str] | None = None,
):
    """Register the demo network, untrained and seeded (its builder's default seed), under ``name``."""
    from analysis.engine.demo_network import demo_network_target
    from analysis.engine.networks import NetworkKind, NetworkSpec
    from analysis.services.networks import network_register

    spec = NetworkSpec(
        kind=NetworkKind.MODULE,
        target=demo_network_target(),
        kwargs={"num_classes": num_classes},
        input_size=input_size,
        mean=TEST_MEAN,
        std=TEST_STD,
        class_names=class_names,
    )
    return network_register(name=name, spec=spec)


def extraction_run(*, network: str, dataset: str, layers: list[str], **overrides: Any):
    """Run an extraction inline; the (succeeded) run."""
    from analysis.models import RunStatus
    from analysis.services.extraction import extraction_run_start

    run = extraction_run_start(network=network, dataset=dataset, layers=layers, inline=True, **overrides)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    return run
