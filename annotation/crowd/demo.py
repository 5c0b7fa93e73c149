"""The demo's crowd side: a simulated crowd's finished description and validation studies (and a purity study
when the demo learnt an Explanatory Graph), opened to people through printed links."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import F

from accounts.models import User
from accounts.roles import Role
from accounts.services import user_ensure
from analysis.models import ExplanatoryGraph

from ..common import InputError, demo_passwords_ensure, study_extraction_for
from ..models import CrowdStudy, CrowdTaskKind, HitRole
from .adapters import crowd_links
from .forced_choice_plan import forced_choice_study_create
from .forced_choice_simulation import forced_choice_simulate
from .hits import crowd_study_create, study_open_set
from .services import CrowdInputError
from .simulation import crowd_simulate
from .truth import study_unit_truth

DEMO_DESCRIPTION_STUDY = "demo-crowd-descriptions"
DEMO_VALIDATION_STUDY = "demo-crowd-validation"
DEMO_PURITY_STUDY = "demo-crowd-purity"
DEMO_CROWD_ACCOUNT = "crowd1"
DEMO_LAYERS = ("conv3", "conv4", "conv5")
DEMO_FORCED_CHOICE_STUDY = "demo-crowd-forced-choice"
DEMO_FORCED_CHOICE_LAYERS = ("conv5", "conv3")


def _demo_purity_graph(network: str, dataset: str) -> ExplanatoryGraph | None:
    """The graph the demo's purity study judges: of the newest graph run of ``network`` on ``dataset`` (one graph
    per object category), the graph of the category with the most inputs (ties by name) — a study compares one
    graph's nodes with the raw filters on the same inputs, as AAAI'18 reports purity per graph."""
    newest = ExplanatoryGraph.objects.filter(network__name=network, dataset__name=dataset).first()
    if newest is None:
        return None
    return ExplanatoryGraph.objects.filter(run_id=newest.run_id).order_by("-n_images", "category", "id").first()


def demo_crowd_studies_ensure(
    *,
    network: str = "demo-net",
    dataset: str = "probe-world",
    layers: Sequence[str] = DEMO_LAYERS,
    units: Sequence[int] | None = None,
    real_places: int = 2,
    seed: int = 0,
    researcher: str = "researcher",
) -> dict[str, Any]:
    """The demo's crowd side (idempotent): a description study over ``layers`` answered by a simulated crowd
    (so units have human canonical descriptions), then a blind validation study (dissection labels, those
    descriptions and controls) answered by the simulated crowd too, so the ND'18 Table 3 report is populated.
    Each validation HIT then gets ``real_places`` more places so people entering through the printed links
    still find work; the finished description study is closed. When the demo has learnt explanatory graphs of
    ``network`` (one per object category), a purity study compares the top nodes of one category's graph
    (:func:`_demo_purity_graph`) with the raw filters of the graph's layers on the same crops (AAAI'18 Fig. 8),
    answered by the simulated crowd and then opened to people the same way. A forced-choice study over conv5 and
    conv3 (those of ``layers``; :func:`demo_forced_choice_study_ensure`) is answered and opened the same way.
    Returns the crowd account's credentials, the studies and their links."""
    credentials = demo_passwords_ensure([DEMO_CROWD_ACCOUNT])
    user, created = user_ensure(username=DEMO_CROWD_ACCOUNT, password=credentials[DEMO_CROWD_ACCOUNT], role=Role.CROWD)
    if not created and not user.check_password(credentials[DEMO_CROWD_ACCOUNT]):
        credentials[DEMO_CROWD_ACCOUNT] = "(unchanged: set before the demo stored it)"
    researcher_user = User.objects.filter(username=researcher).first()
    extractions = []
    for layer in layers:
        try:
            extractions.append(study_extraction_for(network=network, layer=layer, dataset=dataset))
        except InputError as error:
            raise CrowdInputError(str(error)) from None
    graph = _demo_purity_graph(network, dataset)
    plans = [
        (DEMO_DESCRIPTION_STUDY, CrowdTaskKind.DESCRIPTION, extractions),
        (DEMO_VALIDATION_STUDY, CrowdTaskKind.VALIDATION, extractions),
    ]
    if graph is not None:
        plans.append(
            (
                DEMO_PURITY_STUDY,
                CrowdTaskKind.PURITY,
                [study_extraction_for(network=network, layer=layer, dataset=dataset) for layer in graph.layers],
            )
        )
    studies: dict[str, CrowdStudy] = {}
    truths: dict[tuple[int, ...], Any] = {}  # the pixel truth of a set of layers, read once
    for name, kind, study_extractions in plans:
        study = CrowdStudy.objects.filter(name=name).first()
        if study is None:
            study = crowd_study_create(
                name=name,
                kind=kind,
                extractions=study_extractions,
                units=units,
                seed=seed,
                created_by=researcher_user,
                description_study=studies.get(DEMO_DESCRIPTION_STUDY),
                graph=graph,
                description="The demo's crowd study: a simulated crowd (flagged simulated) answered every HIT.",
            )
        tasks = study.hits.filter(role=HitRole.TASK)
        reopened = kind != CrowdTaskKind.DESCRIPTION and real_places
        # Places for people are opened once the simulated crowd is done: opened places mean nothing is left to
        # simulate (so a second run adds nothing); a study with open places left is finished by the crowd.
        opened = reopened and not tasks.filter(max_assignments=study.assignments_per_hit).exists()
        if not opened and tasks.filter(retired=False, assigned_count__lt=F("max_assignments")).exists():
            key = tuple(extraction.pk for extraction in study_extractions)
            if key not in truths:
                truths[key] = study_unit_truth(study)
            crowd_simulate(study=study, seed=seed, truth=truths[key])
        if reopened and not opened:
            tasks.update(max_assignments=F("max_assignments") + real_places)
        if kind == CrowdTaskKind.DESCRIPTION and study.is_open:  # its work is done: people get the validation
            study_open_set(study=study, is_open=False)
        studies[name] = study
    forced_layers = [layer for layer in DEMO_FORCED_CHOICE_LAYERS if layer in layers] or list(layers)[-1:]
    forced = demo_forced_choice_study_ensure(
        network=network,
        dataset=dataset,
        layers=forced_layers,
        units=units,
        real_places=real_places,
        seed=seed,
        created_by=researcher_user,
    )
    studies[forced.name] = forced
    validation = studies[DEMO_VALIDATION_STUDY]
    return {
        "credentials": credentials,
        "studies": {name: study.pk for name, study in studies.items()},
        "links": crowd_links(validation),
    }


def demo_trial_params(n_images: int) -> dict[str, Any]:
    """Forced-choice planning parameters that fit a probe set of ``n_images``: the papers' 9 + 9 references and
    queries from ranks 10–19 with all four conditions when the set is large enough (74 images), without the
    non-extremal condition from 38, and scaled down below that (the demo's smallest builds)."""
    conditions = ["natural", "overlay", "non_extremal", "none"]
    if n_images >= 74:
        return {"conditions": conditions}
    if n_images >= 38:
        return {"conditions": ["natural", "overlay", "none"]}
    reference = max(2, n_images // 10)
    return {
        "conditions": ["natural", "overlay", "none"],
        "reference_count": reference,
        "query_ranks": (reference + 1, 2 * reference),
        "trials_per_unit": min(2, reference),
    }


def demo_forced_choice_study_ensure(
    *,
    network: str = "demo-net",
    dataset: str = "probe-world",
    layers: Sequence[str] = DEMO_FORCED_CHOICE_LAYERS,
    units: Sequence[int] | None = None,
    real_places: int = 2,
    seed: int = 0,
    created_by=None,
    **overrides: Any,
) -> CrowdStudy:
    """The demo's forced-choice study (issue 17, idempotent): conv5 and conv3 for contrast, conditions compared
    between trials, answered by a simulated crowd of planted per-unit readability (flagged simulated, left out of
    reports unless asked), then ``real_places`` more places per HIT for people."""
    study = CrowdStudy.objects.filter(name=DEMO_FORCED_CHOICE_STUDY).first()
    if study is None:
        try:
            extractions = [study_extraction_for(network=network, layer=layer, dataset=dataset) for layer in layers]
        except InputError as error:
            raise CrowdInputError(str(error)) from None
        params = {**demo_trial_params(extractions[0].n_images), **overrides}
        study = forced_choice_study_create(
            name=DEMO_FORCED_CHOICE_STUDY,
            extractions=extractions,
            units=units,
            seed=seed,
            created_by=created_by,
            description="The demo's forced-choice study: a simulated crowd of planted per-unit readability "
            "(flagged simulated) answered every HIT; places are open for people.",
            **params,
        )
    tasks = study.hits.filter(role=HitRole.TASK)
    opened = real_places and not tasks.filter(max_assignments=study.assignments_per_hit).exists()
    if not opened:
        if tasks.filter(retired=False, assigned_count__lt=F("max_assignments")).exists():
            forced_choice_simulate(study=study, seed=seed)
        if real_places:
            tasks.update(max_assignments=F("max_assignments") + real_places)
    return study
