"""Planning forced-choice studies (issue 17): per unit, reference sets and query pairs from the extraction's
activation statistics (:func:`analysis.engine.psychophysics.plan_unit_trials`), pictures under content-hash names,
conditions between trials or between workers, catch trials (the study's gold items) and practice trials (its
qualification HITs, answered with feedback before the real ones). Everything the crowd machinery does — hand-off
links, leases, N distinct workers per HIT through the same claim, blocking, review — applies unchanged.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from django.db import transaction

from analysis.engine.machine_proxy import penultimate_embeddings, proxy_observer
from analysis.engine.networks import NetworkError, load_network, normalize_images
from analysis.engine.psychophysics import plan_unit_trials
from analysis.engine.rendering import render_image_grid
from analysis.models import LayerExtraction, RenderedGrid, Unit
from analysis.services.extraction import dataset_image_batches
from analysis.services.grids import UnitGridRenderer, store_grid
from analysis.services.networks import network_spec

from ..common import new_token
from ..models import (
    ConditionAssignment,
    CrowdStudy,
    CrowdTaskKind,
    ForcedChoiceCondition,
    ForcedChoiceReference,
    ForcedChoiceTrial,
    Hit,
    HitRole,
)
from .forced_choice import INSTRUCTIONS
from .hits import _clean_study_name, unit_image_scores
from .services import CrowdInputError

REFERENCE_COLUMNS = 3
"""References are drawn 3 × 3 (Borowski et al.'s 9 per side)."""


@dataclass
class _TrialSpec:
    role: str
    unit: Unit
    extraction: LayerExtraction
    condition: str
    strong: int
    weak: int
    strong_rank: int
    weak_rank: int
    strong_score: float
    weak_score: float
    strong_grid: RenderedGrid
    weak_grid: RenderedGrid
    catch: bool = False
    practice: bool = False
    proxy_margin: float | None = None


class _Pictures:
    """Content-hash pictures of one extraction: single query images (plain) and reference grids (plain, or with
    the unit's activation overlay drawn by the analysis app's renderer, GG'18 style)."""

    def __init__(self, extraction: LayerExtraction):
        self.renderer = UnitGridRenderer(extraction)
        self.queries: dict[int, RenderedGrid] = {}

    def query(self, image: int) -> RenderedGrid:
        if image not in self.queries:
            self.queries[image] = store_grid(
                render_image_grid(self.renderer.images[image][None], columns=1, gutter=0), style="fc_query"
            )
        return self.queries[image]

    def references(self, unit_index: int, images: np.ndarray, *, overlay: bool, vmax: float) -> RenderedGrid:
        if overlay:
            picture = self.renderer.picture(
                unit_index, [int(i) for i in images], vmax=vmax, columns=REFERENCE_COLUMNS, num_slots=len(images)
            )
        else:
            picture = render_image_grid(
                np.stack([self.renderer.images[int(i)] for i in images]), columns=REFERENCE_COLUMNS
            )
        return store_grid(picture, style="fc_reference")


def proxy_embeddings(
    extraction: LayerExtraction, *, layer: str | None = None, device: str = "cpu", batch_size: int = 64
) -> torch.Tensor:
    """``float[N, D]``: the embedding of every image of the extraction's dataset through the studied network
    (:func:`analysis.engine.machine_proxy.penultimate_embeddings`: its penultimate layer, or ``layer``)."""
    network = extraction.layer.network
    try:
        model = load_network(network_spec(network), device=device)
    except NetworkError as error:
        raise CrowdInputError(f"The machine proxy needs the network ({error}); plan without it (proxy off).") from None
    if layer is not None and layer not in dict(model.named_modules()):
        raise CrowdInputError(f"{network.name} has no module {layer!r} for the proxy's embedding.")
    chunks = []
    for images, _ in dataset_image_batches(
        extraction.dataset, batch_size=batch_size, input_size=(network.input_height, network.input_width)
    ):
        inputs = normalize_images(images.to(device), network.mean, network.std)
        chunks.append(penultimate_embeddings(model, inputs, layer=layer).cpu())
    return torch.cat(chunks)


def _proxy_margins(
    specs: list[_TrialSpec], references: dict[int, ForcedChoiceReference], embeddings: torch.Tensor
) -> None:
    """Set each trial's ``proxy_margin``: the proxy observer on the unit's natural references (strong − weak)."""
    if not specs:
        return
    top = torch.tensor([references[spec.unit.pk].top_images for spec in specs])
    bottom = torch.tensor([references[spec.unit.pk].bottom_images for spec in specs])
    margins = proxy_observer(
        embeddings,
        top,
        bottom,
        torch.tensor([spec.strong for spec in specs]),
        torch.tensor([spec.weak for spec in specs]),
    )
    for spec, margin in zip(specs, margins.tolist()):
        spec.proxy_margin = float(margin)


def forced_choice_study_create(
    *,
    name: str,
    extractions: Sequence[LayerExtraction],
    units: Sequence[int] | None = None,
    conditions: Sequence[str] = (ForcedChoiceCondition.NATURAL,),
    condition_assignment: str = ConditionAssignment.TRIALS,
    trials_per_unit: int = 2,
    reference_count: int = 9,
    query_ranks: tuple[int, int] = (10, 19),
    non_extremal_ranks: tuple[int, int] | None = None,
    catch_rate: float = 0.1,
    catch_per_unit: int = 1,
    practice_trials: int = 3,
    assignments_per_hit: int = 3,
    lease_seconds: int = 600,
    block_below: float = 0.5,
    block_min_gold: int = 4,
    hits_per_session: int = 20,
    external_submit_hosts: str | None = None,
    seed: int = 0,
    proxy: bool = True,
    proxy_layer: str | None = None,
    device: str = "cpu",
    description: str = "",
    created_by=None,
) -> CrowdStudy:
    """Create a forced-choice crowd study over the units of ``extractions`` (one per layer).

    Per unit (silent units — map maximum never above 0 — are left out: they have no strong image):
    ``reference_count`` most and least activating images as references (Borowski et al.: 9 + 9),
    ``trials_per_unit`` query pairs from ``query_ranks`` (after the references; see
    :func:`analysis.engine.psychophysics.plan_unit_trials` for where the choice was ours), and ``catch_per_unit``
    catch trials (queries that are references). ``conditions`` (:class:`annotation.models.ForcedChoiceCondition`)
    are compared on the same units and query pairs: between trials (a HIT per trial and condition, every worker
    sees all, balanced by construction) or between workers (a HIT per trial; the condition is the worker's, in
    turn by arrival). ``non_extremal_ranks`` (default: the ``2 × reference_count`` ranks after the query pool) feed
    the non-extremal references. Catch trials are the study's gold items, mixed in at ``catch_rate``;
    ``practice_trials`` practice trials (from extra query pairs of random units, never a task's) come first, with
    feedback. Which query is shown as "1" is random and balanced over the study's trials. With ``proxy`` the
    machine proxy observer answers every trial on the natural references (embedding: the network's penultimate
    layer, or the module ``proxy_layer``; computed on ``device``) and its margin is kept on the trial.
    """
    name = _clean_study_name(name)
    extractions = list(dict.fromkeys(extractions))
    conditions = list(dict.fromkeys(conditions))
    if not extractions:
        raise CrowdInputError("Choose at least one layer.")
    if not conditions or any(c not in ForcedChoiceCondition.values for c in conditions):
        raise CrowdInputError(f"Conditions are among {', '.join(ForcedChoiceCondition.values)}.")
    if condition_assignment not in ConditionAssignment.values:
        raise CrowdInputError("Assign conditions between trials or between workers.")
    if not 1 <= trials_per_unit <= 50 or not 1 <= assignments_per_hit <= 50:
        raise CrowdInputError("Between 1 and 50 trials per unit and workers per HIT.")
    if not 0.0 <= catch_rate < 1.0 or lease_seconds < 30:
        raise CrowdInputError("The catch rate lies in [0, 1) and a lease lasts at least 30 seconds.")
    if non_extremal_ranks is None:
        non_extremal_ranks = (query_ranks[1] + 1, query_ranks[1] + 2 * reference_count)
    wants_non_extremal = ForcedChoiceCondition.NON_EXTREMAL in conditions
    rng = np.random.default_rng(seed)
    specs: list[_TrialSpec] = []
    references: list[ForcedChoiceReference] = []
    for extraction in extractions:
        scores = unit_image_scores(extraction)
        layer_units = Unit.objects.filter(layer=extraction.layer).order_by("index")
        if units is not None:
            layer_units = layer_units.filter(index__in=list(units))
        layer_units = [unit for unit in layer_units if float(scores[:, unit.index].max()) > 0]
        if not layer_units:
            raise CrowdInputError(f"{extraction.layer}: no unit responds to any image.")
        practice_units = {unit.pk for unit in rng.permutation(np.array(layer_units, dtype=object))[:practice_trials]}
        pictures = _Pictures(extraction)
        first_spec = len(specs)
        natural: dict[int, ForcedChoiceReference] = {}
        for unit in layer_units:
            unit_scores = scores[:, unit.index]
            extra = 1 if unit.pk in practice_units else 0
            try:
                plan = plan_unit_trials(
                    unit_scores,
                    rng=rng,
                    n_trials=trials_per_unit + extra,
                    n_catch=catch_per_unit if catch_rate > 0 else 0,
                    reference_count=reference_count,
                    query_ranks=query_ranks,
                    non_extremal_ranks=non_extremal_ranks if wants_non_extremal else None,
                )
            except ValueError as error:
                raise CrowdInputError(f"{extraction.layer}: {error}.") from None
            vmax = max(float(unit_scores.max()), 1e-6)
            sets = {
                ForcedChoiceCondition.NATURAL: (plan.top, plan.bottom, False),
                ForcedChoiceCondition.OVERLAY: (plan.top, plan.bottom, True),
                ForcedChoiceCondition.NON_EXTREMAL: (plan.top_non_extremal, plan.bottom_non_extremal, False),
            }
            ranks = {ForcedChoiceCondition.NON_EXTREMAL: np.round(np.linspace(*non_extremal_ranks, reference_count))}
            for condition in {ForcedChoiceCondition.NATURAL, *conditions} - {ForcedChoiceCondition.NONE}:
                top, bottom, overlay = sets[condition]
                rank = ranks.get(condition, np.arange(1, reference_count + 1)).astype(int).tolist()
                references.append(
                    reference := ForcedChoiceReference(
                        unit=unit,
                        extraction=extraction,
                        condition=condition,
                        top_grid=pictures.references(unit.index, top, overlay=overlay, vmax=vmax),
                        bottom_grid=pictures.references(unit.index, bottom, overlay=overlay, vmax=vmax),
                        top_images=top.tolist(),
                        bottom_images=bottom.tolist(),
                        top_ranks=rank,
                        bottom_ranks=rank,
                    )
                )
                if condition == ForcedChoiceCondition.NATURAL:
                    natural[unit.pk] = reference
            for number, ((strong, weak), (strong_rank, weak_rank), catch) in enumerate(
                zip(plan.queries.tolist(), plan.query_ranks.tolist(), plan.catch.tolist())
            ):
                if float(unit_scores[strong]) <= float(unit_scores[weak]):
                    continue  # a tie has no right answer
                practice = extra and number == trials_per_unit
                common = dict(
                    unit=unit,
                    extraction=extraction,
                    strong=strong,
                    weak=weak,
                    strong_rank=strong_rank,
                    weak_rank=weak_rank,
                    strong_score=float(unit_scores[strong]),
                    weak_score=float(unit_scores[weak]),
                    strong_grid=pictures.query(strong),
                    weak_grid=pictures.query(weak),
                )
                if catch or practice:
                    role = HitRole.GOLD if catch else HitRole.QUALIFICATION
                    specs.append(
                        _TrialSpec(
                            role=role,
                            condition=ForcedChoiceCondition.NATURAL,
                            catch=catch,
                            practice=bool(practice),
                            **common,
                        )
                    )
                elif condition_assignment == ConditionAssignment.WORKERS:
                    specs.append(_TrialSpec(role=HitRole.TASK, condition="", **common))
                else:
                    specs += [_TrialSpec(role=HitRole.TASK, condition=c, **common) for c in conditions]
        if proxy:
            _proxy_margins(specs[first_spec:], natural, proxy_embeddings(extraction, layer=proxy_layer, device=device))
    if not any(spec.role == HitRole.TASK for spec in specs):
        raise CrowdInputError("These units give no trials.")
    n_practice = sum(spec.role == HitRole.QUALIFICATION for spec in specs)
    sides = np.resize(np.array([1, 2]), len(specs))
    rng.shuffle(sides)
    order = rng.permutation(len(specs))
    params = {
        "reference_count": reference_count,
        "query_ranks": list(query_ranks),
        "non_extremal_ranks": list(non_extremal_ranks) if wants_non_extremal else None,
        "trials_per_unit": trials_per_unit,
        "catch_per_unit": catch_per_unit,
        "practice_trials": n_practice,
        "score": "map maximum per image",
        "seed": seed,
        "proxy": {"embedding": proxy_layer or "penultimate", "references": "natural"} if proxy else None,
    }
    with transaction.atomic():
        study = CrowdStudy.objects.create(
            name=name,
            token=new_token(),
            kind=CrowdTaskKind.FORCED_CHOICE,
            description=description,
            instructions=INSTRUCTIONS,
            assignments_per_hit=assignments_per_hit,
            lease_seconds=lease_seconds,
            gold_rate=catch_rate,
            qualification_required=n_practice > 0,
            qualification_size=n_practice,
            qualification_pass_rate=0.0,
            qualification_max_attempts=1,
            block_below=block_below,
            block_min_gold=block_min_gold,
            hits_per_session=hits_per_session,
            completion_code=secrets.token_hex(4).upper(),
            seed=seed,
            created_by=created_by,
            conditions=conditions,
            condition_assignment=condition_assignment,
            trial_params=params,
            **({"external_submit_hosts": external_submit_hosts} if external_submit_hosts is not None else {}),
        )
        study.extractions.set(extractions)
        for reference in references:
            reference.study = study
        ForcedChoiceReference.objects.bulk_create(references, batch_size=500)
        tokens = [new_token() for _ in specs]
        Hit.objects.bulk_create(
            [
                Hit(
                    study=study,
                    token=tokens[i],
                    position=position,
                    kind=CrowdTaskKind.FORCED_CHOICE,
                    role=specs[i].role,
                    unit=specs[i].unit,
                    extraction=specs[i].extraction,
                    gold_answer=str(sides[i]) if specs[i].role != HitRole.TASK else "",
                    gold_explanation=f"Image {sides[i]} was the strongly activating one."
                    if specs[i].role != HitRole.TASK
                    else "",
                    max_assignments=assignments_per_hit,
                )
                for position, i in enumerate(int(i) for i in order)
            ],
            batch_size=500,
        )
        ids = dict(Hit.objects.filter(study=study).values_list("token", "pk"))
        ForcedChoiceTrial.objects.bulk_create(
            [
                ForcedChoiceTrial(
                    hit_id=ids[tokens[i]],
                    condition=spec.condition,
                    strong_position=int(sides[i]),
                    strong_image=spec.strong,
                    weak_image=spec.weak,
                    strong_rank=spec.strong_rank,
                    weak_rank=spec.weak_rank,
                    strong_score=spec.strong_score,
                    weak_score=spec.weak_score,
                    strong_grid=spec.strong_grid,
                    weak_grid=spec.weak_grid,
                    catch=spec.catch,
                    practice=spec.practice,
                    proxy_margin=spec.proxy_margin,
                )
                for i, spec in enumerate(specs)
            ],
            batch_size=500,
        )
    return study
