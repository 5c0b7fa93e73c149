"""The demo build: the steps that turn a fresh checkout into a populated site, each a Run.

Steps run in order; each is skipped when an identical run already succeeded (the job system reuses
it). ``make demo`` queues them for the worker so a newcomer watches them in the browser;
``manage.py build_demo`` executes them here, synchronously.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from accounts.roles import Role
from accounts.services import user_ensure
from analysis.models import Run, RunStatus

from .datasets import PROBE_WORLD, probe_world_params
from .dissection import DISSECTION, ROTATION, dissection_params, rotation_params
from .explanatory_graph import EXPLANATORY_GRAPH, graph_params
from .extraction import EXTRACTION, extraction_params
from .grids import GRIDS
from .net2vec import DEMO_NET2VEC, NET2VEC, net2vec_params
from .networks import DEMO_TRAINING, demo_training_params
from .parts import (
    ABLATE,
    DEMO_ABLATION,
    DEMO_MAX_VIEWS,
    DEMO_PART_LAYERS,
    SCORE_PARTS,
    ablation_params,
    part_detection_params,
)
from .runs import WORKER_LOST_PHASE, params_hash, run_start

DEMO_RESEARCHER = "researcher"
DEMO_LAYERS = ["conv3", "conv4", "conv5"]
DEMO_GRAPH_LEARN_CROPS = 50  # per object category: 7 categories learn from about as many crops as one graph did images


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is. The default builds in a few minutes on two CPU cores."""

    images: int = 3000
    image_size: int = 112
    epochs: int = 8

    @property
    def is_default(self) -> bool:
        return self == DemoSize()

    @property
    def dataset(self) -> str:
        return "probe-world" if self.is_default else f"probe-world-{self.images}x{self.image_size}"

    @property
    def network(self) -> str:
        return "demo-net" if self.is_default else f"demo-net-{self.images}x{self.image_size}-e{self.epochs}"


@dataclass(frozen=True)
class DemoStep:
    kind: str
    label: str
    params: Callable[[], dict[str, Any]] = field(default=dict)


def demo_steps(size: DemoSize = DemoSize()) -> list[DemoStep]:
    """The build steps in order: data, training, extraction, grids (later features append theirs)."""
    steps = [
        DemoStep(
            PROBE_WORLD.name,
            f"Generate the probe world ({size.images} images of {size.image_size} px)",
            lambda: probe_world_params(name=size.dataset, n_images=size.images, size=size.image_size),
        ),
        DemoStep(
            DEMO_TRAINING.name,
            f"Train the demo network ({size.epochs} epochs)",
            lambda: demo_training_params(dataset=size.dataset, name=size.network, epochs=size.epochs),
        ),
        DemoStep(EXTRACTION.name, "Extract activations of conv3–conv5", lambda: demo_extraction_params(size)),
    ]
    steps += [
        DemoStep(
            GRIDS.name,
            f"Render the grids of {layer}",
            lambda layer=layer: {"extraction_run": demo_extraction_run_id(size), "layer": layer},
        )
        for layer in DEMO_LAYERS
    ]
    # Dissection reuses the extraction's cached maps and thresholds: no new forward pass.
    for baseline, label in (("none", "Dissect {}"), ("shuffled", "Shuffled-mask baseline of {}")):
        steps += [
            DemoStep(
                DISSECTION.name,
                label.format(layer),
                lambda layer=layer, baseline=baseline: dissection_params(
                    network=size.network, dataset=size.dataset, layer=layer, baseline=baseline
                ),
            )
            for layer in DEMO_LAYERS
        ]
    steps.append(
        DemoStep(
            ROTATION.name,
            "Random rotations of conv5",
            lambda: rotation_params(network=size.network, dataset=size.dataset, layer="conv5", seeds=[0, 1, 2]),
        )
    )
    # Explanatory graphs over the two top conv layers, one per object category on its object crops (AAAI'18), with
    # instability against raw filters.
    steps.append(
        DemoStep(
            EXPLANATORY_GRAPH.name,
            f"Learn an explanatory graph of conv5 → conv4 per object category (≤ {DEMO_GRAPH_LEARN_CROPS} crops each)",
            lambda: demo_graph_params(size),
        )
    )
    # Net2Vec on the extraction's cached maps and thresholds (no forward pass): single vs combined units.
    steps += [
        DemoStep(
            NET2VEC.name,
            f"Net2Vec probes of {layer}",
            lambda layer=layer: net2vec_params(network=size.network, dataset=size.dataset, layer=layer, **DEMO_NET2VEC),
        )
        for layer in DEMO_LAYERS
    ]
    # GG'18 §3: part detection (regression, VOC AP, GA with the paper's settings) on object crops of the top layers;
    # §5–6: filter ablations per class (a seeded sample of views per class keeps conv4's reruns of conv5 short) and
    # part blackouts (layer-independent, so once, with conv5).
    steps += [
        DemoStep(
            SCORE_PARTS.name,
            f"Part detection and GA filter combinations of {layer} (≤ {DEMO_MAX_VIEWS} objects per class)",
            lambda layer=layer: part_detection_params(
                network=size.network,
                dataset=size.dataset,
                layer=layer,
                max_views=DEMO_MAX_VIEWS,
                **demo_part_rules(size),
            ),
        )
        for layer in DEMO_PART_LAYERS
    ]
    steps += [
        DemoStep(
            ABLATE.name,
            f"Filter ablations of {layer}" + (" and part blackouts" if layer == "conv5" else ""),
            lambda layer=layer: ablation_params(
                network=size.network, dataset=size.dataset, layer=layer, **DEMO_ABLATION[layer]
            ),
        )
        for layer in DEMO_PART_LAYERS
    ]
    return steps


def demo_graph_params(size: DemoSize) -> dict[str, Any]:
    """The paper's method — one graph per object category, learned on its object crops — with the paper's N (10, 20
    from the top), τ, M and β; fewer EM iterations (10 of the paper's 20) on a seeded subset of
    ``DEMO_GRAPH_LEARN_CROPS`` training crops per category (7 categories: about the 300 images the former single
    graph learned from), every node inferred on all of its category's crops. Each graph also pays a fixed cost (its
    neighbour selection per iteration and saving its nodes and edges) and every object a forward pass, so the step
    takes about three times as long as the former single whole-image graph did (the README gives the figures)."""
    return graph_params(
        network=size.network,
        dataset=size.dataset,
        layers=["conv5", "conv4"],
        iterations=10,
        max_learn_images=DEMO_GRAPH_LEARN_CROPS,
        batch_size=32,
    )


def demo_part_rules(size: DemoSize) -> dict[str, Any]:
    """GG'18's part filter (mean box side > 15 px, ≥ 11 instances) for the default demo; smaller demos scale the
    size rule with their image size and ask for fewer instances, so that some parts remain."""
    if size.is_default:
        return {}
    return {"min_part_size": 15.0 * size.image_size / 112, "min_instances": min(11, max(2, size.images // 300))}


def demo_extraction_params(size: DemoSize) -> dict[str, Any]:
    return extraction_params(network=size.network, dataset=size.dataset, layers=DEMO_LAYERS)


def demo_extraction_run_id(size: DemoSize) -> int:
    """The demo's extraction run (the step before the grids has made it)."""
    return (
        Run.objects.of_kind(EXTRACTION.name).succeeded().get(params_hash=params_hash(demo_extraction_params(size))).pk
    )


def demo_credentials_ensure() -> dict[str, str]:
    """Create the demo researcher once; its password is kept under the data dir so it can be shown again."""
    credentials_file = settings.UNITSCOPE_DATA_DIR / "demo-credentials.txt"
    stored = (
        dict(line.split("=", 1) for line in credentials_file.read_text().splitlines() if "=" in line)
        if credentials_file.exists()
        else {}
    )
    password = stored.get(DEMO_RESEARCHER) or secrets.token_urlsafe(9)
    _, created = user_ensure(username=DEMO_RESEARCHER, password=password, role=Role.RESEARCHER)
    if created or DEMO_RESEARCHER not in stored:
        stored[DEMO_RESEARCHER] = password
        credentials_file.parent.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text("".join(f"{name}={secret}\n" for name, secret in stored.items()))
        credentials_file.chmod(0o600)
    return {DEMO_RESEARCHER: stored[DEMO_RESEARCHER]}


DemoHook = Callable[[DemoSize], dict[str, str]]
_DEMO_HOOKS: list[DemoHook] = []


DEMO_SITE_URL = "http://127.0.0.1:8000"
"""Where the demo site answers unless told otherwise (``run_demo``'s default host and port)."""


def register_demo_hook(hook: DemoHook) -> None:
    """Add a step that runs after the build succeeded and returns accounts to show ``{username: password}``.
    A hook is called as ``hook(size, site_url=...)``: ``site_url`` (e.g. ``http://127.0.0.1:8000``) makes the
    links it prints full URLs.

    Apps built on analysis (the annotation app's studies) register here, so analysis never imports them.
    """
    if hook not in _DEMO_HOOKS:
        _DEMO_HOOKS.append(hook)


def demo_hooks_run(size: DemoSize, *, site_url: str = DEMO_SITE_URL) -> dict[str, str]:
    credentials: dict[str, str] = {}
    for hook in _DEMO_HOOKS:
        credentials.update(hook(size, site_url=site_url.rstrip("/")))
    return credentials


StepCallback = Callable[[str, DemoStep, Run | None, bool], None]


def demo_build(
    *,
    inline: bool,
    size: DemoSize = DemoSize(),
    created_by=None,
    on_step: StepCallback | None = None,
    poll_interval: float = 1.0,
    worker_loss_retries: int = 0,
) -> list[Run]:
    """Run every demo step in order and return their runs. Stops at the first step that does not succeed.

    With ``inline`` each step executes in this process; otherwise it is queued for a worker and this
    function waits for it. ``on_step(event, step, run, created)`` is called with event ``"start"``
    (run None), ``"queued"`` (the run exists; ``created`` False when an earlier run is reused), ``"retry"``
    (the run failed because its worker was lost, and the step is started again: at most
    ``worker_loss_retries`` times per step) and ``"end"``.
    """
    notify = on_step or (lambda *args: None)
    runs = []
    for step in demo_steps(size):
        notify("start", step, None, False)
        for attempt in range(worker_loss_retries + 1):
            run, created = run_start(kind=step.kind, params=step.params(), created_by=created_by, inline=inline)
            notify("queued", step, run, created)
            while run.is_active:
                time.sleep(poll_interval)
                run.refresh_from_db()
            if run.status != RunStatus.FAILED or run.phase != WORKER_LOST_PHASE or attempt == worker_loss_retries:
                break
            notify("retry", step, run, created)
        notify("end", step, run, created)
        runs.append(run)
        if run.status != RunStatus.SUCCEEDED:
            break
    return runs
