"""Writes of crowd studies (issue 8): creating studies and HITs, workers entering, the atomic next-HIT claim,
leases, submissions with gold feedback and automatic blocking, the qualification test, reviews and bonuses.

Every function is keyword-only and typed. Expected user errors raise :class:`CrowdInputError` with a readable
message. :func:`label_text` is pure.

Blindness (ND'18 §3.1: "the origin of the labels was not revealed to the raters"): HITs are created in a
random order with a random ``position`` and a random hex ``token`` (hex cannot spell an origin); grids are
the analysis app's content-hash PNGs; the label's origin is written only to server-side fields.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from django.db import IntegrityError, connection, transaction
from django.db.models import BigIntegerField, ExpressionWrapper, F, Value
from django.db.models.functions import Cast, Mod
from django.utils import timezone

from analysis.models import Concept, ExemplarKind, ExemplarSet, LayerDissection, LayerExtraction, UnitDissection

from . import claims
from .models import (DESCRIPTION_MAX_LENGTH, AssignmentState, CrowdAdapter, CrowdAssignment, CrowdBonus,
                     CrowdStudy, CrowdTaskKind, CrowdWorker, Hit, HitRole, LabelOrigin, OverlapRule,
                     QualificationAttempt)
from .naming import normalise_concept_name

ORDER_MODULUS = 2_147_483_647
"""A prime above any position: ``(position * a + b) mod p`` is a permutation of positions for 1 ≤ a < p."""
CLAIM_RETRIES = 50
CLAIM_BACKOFF_SECONDS = 0.01
LEASE_EXPIRED = "lease expired"
YES, NO = "yes", "no"
RAW_FILTER_PEAKS = "raw_filter_peaks"
EXPLANATORY_GRAPH = "explanatory_graph"
"""Pattern sources of purity HITs (``Hit.source["pattern_source"]``)."""


class CrowdInputError(ValueError):
    """An expected user error: bad study parameters, a bad answer, a HIT that is no longer yours."""


def new_token() -> str:
    """16 random hex digits: opaque, unguessable enough for URLs, and unable to spell a word like 'human'."""
    return secrets.token_hex(8)


def label_text(name: str) -> str:
    """How a concept name is shown as a label: Broden's category suffix dropped, ``_`` as spaces, lower case."""
    text = " ".join(str(name).replace("_", " ").split()).lower()
    for suffix in ("-c", "-s"):
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
    return text


# -- studies ---------------------------------------------------------------------------------------------------

@dataclass
class HitSpec:
    """A HIT before it is saved (collected, shuffled, then created in one go)."""

    kind: str
    role: str = HitRole.TASK
    unit_id: int | None = None
    extraction_id: int | None = None
    grid_id: int | None = None
    label: str = ""
    label_origin: str = ""
    label_concept_id: int | None = None
    label_category: str = ""
    unit_category: str = ""
    source: dict | None = None
    gold_answer: str = ""
    gold_explanation: str = ""
    purity_k: int | None = None
    purity_shown: int | None = None


def _clean_study_name(name: str) -> str:
    name = " ".join(str(name).split())
    if not name:
        raise CrowdInputError("A study needs a name.")
    if len(name) > 200:
        raise CrowdInputError("A study name has at most 200 characters.")
    if CrowdStudy.objects.filter(name=name).exists():
        raise CrowdInputError(f"A crowd study named {name!r} already exists.")
    return name


def _overall_sets(extraction: LayerExtraction, units: Sequence[int] | None) -> list[ExemplarSet]:
    sets = (ExemplarSet.objects.filter(extraction=extraction, kind=ExemplarKind.TOP_OVERALL)
            .select_related("unit").order_by("unit__index"))
    if units is not None:
        sets = sets.filter(unit__index__in=list(units))
    sets = list(sets)
    if not sets:
        raise CrowdInputError(f"{extraction.layer}: no top-15 exemplar sets (extract the layer first).")
    if any(exemplar.grid_id is None for exemplar in sets):
        raise CrowdInputError(f"Some grids of {extraction.layer.name} are not rendered yet: render the layer's "
                              "grids first (python manage.py render_grids).")
    return sets


def dissection_for(extraction: LayerExtraction) -> LayerDissection | None:
    """The newest complete ND'18 dissection (no null baseline) of the extraction's layer on its dataset."""
    return (LayerDissection.objects.complete().real().newest_first()
            .filter(layer_id=extraction.layer_id, dataset_id=extraction.dataset_id).first())


def canonical_descriptions_for(*, unit_ids: Iterable[int], study: CrowdStudy | None = None) -> dict[int, dict]:
    """Per unit: the canonical description from a description study (the given one, else the newest covering
    the unit), as ``{unit_id: {"text", "study", "hit", "agreed", "confidence"}}``. Units without answers are left
    out. Uses :func:`annotation.crowd_selectors.canonical_description` (ND'18 §3.1's rule)."""
    from .crowd_selectors import canonical_description

    hits = (Hit.objects.filter(kind=CrowdTaskKind.DESCRIPTION, role=HitRole.TASK, unit_id__in=list(unit_ids))
            .select_related("study").order_by("-study__created_at", "-study_id"))
    if study is not None:
        hits = hits.filter(study=study)
    answers: dict[int, list[tuple[str, int]]] = {}
    for hit_id, text, confidence in (CrowdAssignment.objects.answered().filter(hit__in=hits)
                                     .order_by("submitted_at", "id")
                                     .values_list("hit_id", "description", "confidence")):
        answers.setdefault(hit_id, []).append((text, confidence or 1))
    result: dict[int, dict] = {}
    for hit in hits:
        if hit.unit_id in result or not answers.get(hit.pk):
            continue
        chosen = canonical_description(answers[hit.pk])
        if chosen is not None:
            result[hit.unit_id] = {"text": chosen.text, "study": hit.study_id, "hit": hit.pk, "agreed": chosen.agreed,
                                   "confidence": chosen.confidence}
    return result


def _control_concept(rng: np.random.Generator, pool: list[Concept], avoid: set[str]) -> Concept | None:
    """ND'18-style control: a random concept of the dataset whose name matches none of the unit's labels."""
    for _ in range(50):
        concept = pool[int(rng.integers(len(pool)))]
        if normalise_concept_name(concept.name) not in avoid:
            return concept
    return None


def _validation_specs(extraction: LayerExtraction, sets: list[ExemplarSet], *, rng: np.random.Generator,
                      include_dissection: bool, include_human: bool, controls: bool,
                      description_study: CrowdStudy | None, detectors_only: bool) -> list[HitSpec]:
    dissection = dissection_for(extraction) if include_dissection else None
    results = {}
    if dissection is not None:
        results = {result.unit_id: result for result in
                   UnitDissection.objects.filter(dissection=dissection).select_related("concept")}
    human = canonical_descriptions_for(unit_ids=[s.unit_id for s in sets], study=description_study) \
        if include_human else {}
    pool = list(Concept.objects.filter(dataset_id=extraction.dataset_id, image_count__gt=0)
                .exclude(category="object_class").order_by("number"))
    specs = []
    for exemplar in sets:
        result = results.get(exemplar.unit_id)
        unit_category = result.concept.category if result is not None and result.concept_id else ""
        common = dict(kind=CrowdTaskKind.VALIDATION, unit_id=exemplar.unit_id, extraction_id=extraction.pk,
                      grid_id=exemplar.grid_id, unit_category=unit_category)
        avoid: set[str] = set()
        if result is not None and result.concept_id and (result.is_detector or not detectors_only):
            avoid.add(normalise_concept_name(result.concept.name))
            specs.append(HitSpec(**common, label=label_text(result.concept.name), label_origin=LabelOrigin.DISSECTION,
                                 label_concept_id=result.concept_id, label_category=result.concept.category,
                                 source={"dissection": dissection.pk, "iou": result.iou,
                                         "is_detector": result.is_detector}))
        description = human.get(exemplar.unit_id)
        if description is not None:
            avoid.add(normalise_concept_name(description["text"]))
            specs.append(HitSpec(**common, label=description["text"].strip().lower()[:DESCRIPTION_MAX_LENGTH],
                                 label_origin=LabelOrigin.HUMAN,
                                 source={"description_study": description["study"],
                                         "description_hit": description["hit"], "agreed": description["agreed"]}))
        if controls and pool and avoid:
            concept = _control_concept(rng, pool, avoid)
            if concept is not None:
                specs.append(HitSpec(**common, label=label_text(concept.name), label_origin=LabelOrigin.CONTROL,
                                     label_concept_id=concept.pk, label_category=concept.category,
                                     source={"control_of": sorted(avoid)}))
    return specs


def unit_image_scores(extraction: LayerExtraction, *, chunk: int = 256) -> np.ndarray:
    """``float32[images, units]``: each unit's map maximum on every image of the extraction (read in chunks)."""
    from analysis.services.extraction import open_activation_cache

    maps = open_activation_cache(extraction)
    out = np.empty(maps.shape[:2], dtype=np.float32)
    for start in range(0, maps.shape[0], chunk):
        block = np.asarray(maps[start:start + chunk], dtype=np.float32)
        out[start:start + chunk] = block.reshape(block.shape[0], block.shape[1], -1).max(axis=2)
    return out


def _purity_specs(extraction: LayerExtraction, sets: list[ExemplarSet], *, mass: float,
                  max_shown: int) -> list[HitSpec]:
    """One purity HIT per unit: its top-K images by map maximum (K by the 30% mass rule), at most ``max_shown``."""
    from analysis.engine.explanatory_graph import energy_top_k
    from analysis.services.grids import UnitGridRenderer, store_grid

    scores = unit_image_scores(extraction)
    renderer = UnitGridRenderer(extraction)
    specs = []
    for exemplar in sets:
        unit_scores = scores[:, exemplar.unit.index]
        top = energy_top_k(unit_scores, mass)
        k = len(top)
        if k == 0:
            continue
        shown = min(k, max_shown)
        order = top[:shown]
        picture = renderer.picture(exemplar.unit.index, order, vmax=max(float(unit_scores.max()), 1e-6), columns=5,
                                   num_slots=shown)
        grid = store_grid(picture, style="purity")
        specs.append(HitSpec(kind=CrowdTaskKind.PURITY, unit_id=exemplar.unit_id, extraction_id=extraction.pk,
                             grid_id=grid.pk, purity_k=k, purity_shown=shown,
                             source={"pattern_source": RAW_FILTER_PEAKS, "pattern": exemplar.unit_id,
                                     "images": [int(index) for index in order], "mass": mass,
                                     "score": "map maximum per image, whole images with the peak marked"}))
    return specs


def _graph_purity_specs(extraction: LayerExtraction, graph, *, mass: float, max_shown: int) -> list[HitSpec]:
    """Explanatory Graph purity (AAAI'18 Fig. 8) for one layer of ``graph``: a HIT per top-D graph node
    (:func:`analysis.services.explanatory_graph.graph_purity_candidates`) and per raw filter (the "raw filter
    peaks" baseline), both drawn the same way — the patches of the top-K inferences (K by the 30% rule,
    ``mass``), so that raters cannot tell the sources apart."""
    from analysis.models import Unit
    from analysis.services.explanatory_graph import (graph_purity_candidates, graph_purity_inferences,
                                                      purity_patch_picture)
    from analysis.services.grids import store_grid

    layer = extraction.layer
    units = {unit.index: unit for unit in Unit.objects.filter(layer=layer)}

    def spec(groups, unit_index: int, source: str, pattern: str) -> HitSpec | None:
        if not groups:
            return None
        shown = groups[:max_shown]
        grid = store_grid(purity_patch_picture(graph, shown, columns=5), style="purity")
        return HitSpec(kind=CrowdTaskKind.PURITY, unit_id=units[unit_index].pk, extraction_id=extraction.pk,
                       grid_id=grid.pk, purity_k=len(groups), purity_shown=len(shown),
                       source={"pattern_source": source, "pattern": pattern, "graph": graph.pk, "mass": mass,
                               "images": [int(group[0].image_index) for group in shown]})

    specs = []
    for node, _ in graph_purity_candidates(graph, layer=layer.name):
        groups = graph_purity_inferences(graph, layer=layer.name, filter_index=node.filter, node=node.node,
                                         mode="node", fraction=mass)
        specs.append(spec(groups, node.filter, EXPLANATORY_GRAPH, f"{layer.name}/{node.filter}/{node.node}"))
    for index in sorted(units):
        groups = graph_purity_inferences(graph, layer=layer.name, filter_index=index, mode="peaks", fraction=mass)
        specs.append(spec(groups, index, RAW_FILTER_PEAKS, f"{layer.name}/{index}"))
    return [item for item in specs if item is not None]


def _gold_specs(extraction: LayerExtraction, sets: list[ExemplarSet], *, kind: str, rng: np.random.Generator,
                gold_count: int, qualification_count: int) -> list[HitSpec]:
    """Gold and qualification items with answers known from the dataset's pixel truth (see
    :mod:`annotation.crowd_simulation`): "yes" for a concept under the peak of most of the 15 images, "no" for a
    concept under none of them. Qualification questions are always yes/no label questions."""
    from .crowd_simulation import absent_concepts, peak_concepts, truth_concepts

    wanted = gold_count + qualification_count
    if wanted == 0:
        return []
    from analysis.engine.broden import BrodenFormatError

    chosen = [sets[int(i)] for i in rng.permutation(len(sets))[: max(3 * wanted, 12)]]
    try:
        per_image = peak_concepts(extraction, chosen)
    except BrodenFormatError as error:
        raise CrowdInputError(f"Gold items and qualification questions come from the dataset's pixel truth, which "
                              f"cannot be read ({error}): create the study without them.") from None
    concepts = Concept.objects.filter(dataset_id=extraction.dataset_id, image_count__gt=0).exclude(category="object_class")
    names = {normalise_concept_name(concept.name): concept for concept in concepts}
    specs: list[HitSpec] = []
    candidates = []
    for exemplar in chosen:
        truth = truth_concepts(per_image.get(exemplar.unit_id, []))
        truth = [name for name in truth if name in names]
        absent = [name for name in absent_concepts(per_image.get(exemplar.unit_id, []), names) if name in names]
        if truth:
            candidates.append((exemplar, YES, truth[0], truth))
        if absent:
            candidates.append((exemplar, NO, absent[int(rng.integers(len(absent)))], truth))
    rng.shuffle(candidates)
    yes_first = sorted(candidates, key=lambda c: c[1] != YES)  # qualification takes a mix: alternate yes/no
    mixed = [c for pair in zip([c for c in yes_first if c[1] == YES], [c for c in yes_first if c[1] == NO])
             for c in pair]
    mixed += [c for c in candidates if c not in mixed]
    for number, (exemplar, answer, name, truth) in enumerate(mixed[:wanted]):
        role = HitRole.QUALIFICATION if number < qualification_count else HitRole.GOLD
        concept = names[name]
        shown = label_text(concept.name)
        common = dict(unit_id=exemplar.unit_id, extraction_id=extraction.pk, grid_id=exemplar.grid_id, role=role,
                      source={"truth": truth}, label_concept_id=concept.pk, label_category=concept.category)
        if role == HitRole.QUALIFICATION or kind == CrowdTaskKind.VALIDATION:
            explanation = (f"“{shown}” is under the highlighted patch in most of these images." if answer == YES else
                           f"“{shown}” is under none of the highlighted patches.")
            specs.append(HitSpec(kind=CrowdTaskKind.VALIDATION, label=shown, gold_answer=answer,
                                 gold_explanation=explanation, **common))
        elif kind == CrowdTaskKind.DESCRIPTION and answer == YES:
            specs.append(HitSpec(kind=CrowdTaskKind.DESCRIPTION, gold_answer="|".join(truth),
                                 gold_explanation="Most highlighted patches show: "
                                                  + ", ".join(label_text(names[t].name) for t in truth) + ".",
                                 **common))
    return specs


def crowd_study_create(*, name: str, kind: str, extractions: Sequence[LayerExtraction],
                       units: Sequence[int] | None = None, assignments_per_hit: int = 3, lease_seconds: int = 900,
                       gold_rate: float = 0.1, gold_count: int = 12, qualification_required: bool = True,
                       qualification_size: int = 4, qualification_pass_rate: float = 0.75,
                       block_below: float = 0.6, block_min_gold: int = 8, include_dissection: bool = True,
                       include_human: bool = True, controls: bool = True, detectors_only: bool = False,
                       description_study: CrowdStudy | None = None, purity_mass: float = 0.3,
                       purity_max_shown: int = 20, graph=None, overlap_rule: str = OverlapRule.FIXED,
                       external_submit_hosts: str | None = None, hits_per_session: int = 10, seed: int = 0,
                       description: str = "", created_by=None) -> CrowdStudy:
    """Create a crowd study of ``kind`` over the units of ``extractions`` (one per layer), with its HITs.

    * validation (ND'18 §3.1): per unit, a HIT for its dissection label (newest complete dissection of the
      layer on the extraction's dataset; every unit with a top concept, or only detectors with
      ``detectors_only``), one for its human canonical description (from ``description_study`` or the newest
      description study covering it), and — with ``controls`` — one for a random other concept of the dataset;
      a unit with neither label gets no HIT.
    * description: one HIT per unit (``assignments_per_hit`` = 3 raters by default, as ND'18's baseline).
    * purity: one HIT per unit showing its top-K images by map maximum with the peak marked (K by the 30% mass
      rule, :func:`analysis.engine.explanatory_graph.energy_top_k` with ``purity_mass``); with an Explanatory
      ``graph`` covering the layer, instead a HIT per top-D graph node and per raw filter, both as patches of
      their top-K inferences (AAAI'18 Fig. 8's comparison; ``Hit.source["pattern_source"]`` tells them apart).

    Gold items (``gold_count``) and qualification questions (2 × ``qualification_size``, so a retake can differ)
    come from the dataset's pixel truth; without enough of them the qualification is not required. All HITs are
    created in one random order.
    """
    name = _clean_study_name(name)
    if kind not in CrowdTaskKind.values:
        raise CrowdInputError(f"Unknown task kind {kind!r}; choose one of {', '.join(CrowdTaskKind.values)}.")
    extractions = list(dict.fromkeys(extractions))
    if not extractions:
        raise CrowdInputError("Choose at least one layer.")
    if not 1 <= assignments_per_hit <= 50:
        raise CrowdInputError("Between 1 and 50 workers per HIT.")
    if not 0.0 <= gold_rate < 1.0:
        raise CrowdInputError("The gold rate lies in [0, 1).")
    if not 0.0 < purity_mass <= 1.0:
        raise CrowdInputError("The purity mass lies in (0, 1].")
    if lease_seconds < 30:
        raise CrowdInputError("A lease lasts at least 30 seconds.")
    rng = np.random.default_rng(seed)
    specs: list[HitSpec] = []
    for extraction in extractions:
        sets = _overall_sets(extraction, units)
        if kind == CrowdTaskKind.VALIDATION:
            specs += _validation_specs(extraction, sets, rng=rng, include_dissection=include_dissection,
                                       include_human=include_human, controls=controls,
                                       description_study=description_study, detectors_only=detectors_only)
        elif kind == CrowdTaskKind.DESCRIPTION:
            specs += [HitSpec(kind=kind, unit_id=s.unit_id, extraction_id=extraction.pk, grid_id=s.grid_id,
                              unit_category=_unit_category(extraction, s.unit_id)) for s in sets]
        elif graph is not None and extraction.layer.name in graph.layers:
            specs += _graph_purity_specs(extraction, graph, mass=purity_mass, max_shown=purity_max_shown)
        else:
            specs += _purity_specs(extraction, sets, mass=purity_mass, max_shown=purity_max_shown)
    if not any(spec.role == HitRole.TASK for spec in specs):
        raise CrowdInputError("These layers give no HITs (validation needs dissection labels or descriptions).")
    per_layer_gold = -(-gold_count // len(extractions))
    per_layer_qualification = -(-2 * qualification_size // len(extractions)) if qualification_required else 0
    for extraction in extractions:
        specs += _gold_specs(extraction, _overall_sets(extraction, units), kind=kind, rng=rng,
                             gold_count=per_layer_gold if gold_rate > 0 else 0,
                             qualification_count=per_layer_qualification)
    n_qualification = sum(spec.role == HitRole.QUALIFICATION for spec in specs)
    with transaction.atomic():
        study = CrowdStudy.objects.create(
            name=name, token=new_token(), kind=kind, description=description,
            assignments_per_hit=assignments_per_hit, lease_seconds=lease_seconds, gold_rate=gold_rate,
            qualification_required=qualification_required and n_qualification >= qualification_size,
            qualification_size=qualification_size, qualification_pass_rate=qualification_pass_rate,
            block_below=block_below, block_min_gold=block_min_gold, overlap_rule=overlap_rule,
            purity_mass=purity_mass, purity_max_shown=purity_max_shown, hits_per_session=hits_per_session,
            completion_code=secrets.token_hex(4).upper(), seed=seed, created_by=created_by,
            **({"external_submit_hosts": external_submit_hosts} if external_submit_hosts is not None else {}))
        study.extractions.set(extractions)
        order = rng.permutation(len(specs))
        Hit.objects.bulk_create([
            Hit(study=study, token=new_token(), position=position, kind=spec.kind, role=spec.role,
                unit_id=spec.unit_id, extraction_id=spec.extraction_id, grid_id=spec.grid_id, label=spec.label,
                label_origin=spec.label_origin, label_concept_id=spec.label_concept_id,
                label_category=spec.label_category, unit_category=spec.unit_category, source=spec.source or {},
                gold_answer=spec.gold_answer, gold_explanation=spec.gold_explanation, purity_k=spec.purity_k,
                purity_shown=spec.purity_shown, max_assignments=assignments_per_hit)
            for position, spec in enumerate(specs[int(i)] for i in order)], batch_size=500)
    return study


def _unit_category(extraction: LayerExtraction, unit_id: int) -> str:
    dissection = dissection_for(extraction)
    if dissection is None:
        return ""
    result = UnitDissection.objects.filter(dissection=dissection, unit_id=unit_id).select_related("concept").first()
    return result.concept.category if result is not None and result.concept_id else ""


def gold_item_add(*, study: CrowdStudy, unit_hit: Hit, label: str, answer: str, explanation: str = "",
                  role: str = HitRole.GOLD) -> Hit:
    """A researcher's own gold (or qualification) yes/no question about the unit shown by ``unit_hit``."""
    if answer not in (YES, NO):
        raise CrowdInputError("A gold answer is yes or no.")
    label = " ".join(label.split())[:DESCRIPTION_MAX_LENGTH]
    if not label:
        raise CrowdInputError("A gold item needs a label.")
    position = int(np.random.default_rng().integers(ORDER_MODULUS - 1))
    return Hit.objects.create(study=study, token=new_token(), position=position, kind=CrowdTaskKind.VALIDATION,
                              role=role, unit_id=unit_hit.unit_id, extraction_id=unit_hit.extraction_id,
                              grid_id=unit_hit.grid_id, label=label, gold_answer=answer,
                              gold_explanation=explanation, max_assignments=study.assignments_per_hit)


def study_open_set(*, study: CrowdStudy, is_open: bool) -> CrowdStudy:
    study.is_open = is_open
    study.save(update_fields=["is_open"])
    return study


# -- workers -----------------------------------------------------------------------------------------------------

def worker_enter(*, study: CrowdStudy, adapter: str, external_id: str | None = None, user=None,
                 simulated: bool = False, params: dict | None = None) -> tuple[CrowdWorker, bool]:
    """The study's worker for (adapter, external id), created on first entry; ``(worker, created)``.

    Own links without an external id: a signed-in user is known by their account, others get a new worker.
    """
    if adapter not in CrowdAdapter.values:
        raise CrowdInputError(f"Unknown adapter {adapter!r}.")
    if external_id is None:
        external_id = f"user-{user.pk}" if user is not None else f"anon-{new_token()}"
    external_id = str(external_id).strip()[:128]
    if not external_id:
        raise CrowdInputError("A worker id is missing.")
    existing = CrowdWorker.objects.filter(study=study, adapter=adapter, external_id=external_id).first()
    if existing is not None:
        return existing, False
    rng = np.random.default_rng()
    try:
        with transaction.atomic():
            worker = CrowdWorker.objects.create(
                study=study, adapter=adapter, external_id=external_id, code=new_token() + new_token(), user=user,
                simulated=simulated, params=params or {}, order_a=int(rng.integers(1, ORDER_MODULUS)),
                order_b=int(rng.integers(0, ORDER_MODULUS)),
                qualified=None if study.qualification_required else True)
    except IntegrityError:  # entered twice at once: the other request created it
        return CrowdWorker.objects.get(study=study, adapter=adapter, external_id=external_id), False
    return worker, True


def worker_block(*, worker: CrowdWorker, reason: str, blocked: bool = True) -> CrowdWorker:
    """Block (or unblock) a worker: a blocked worker gets no new HITs; held leases are returned."""
    reason = " ".join(reason.split())[:300]
    if blocked and not reason:
        raise CrowdInputError("Say why the worker is blocked.")
    with transaction.atomic():
        CrowdWorker.objects.filter(pk=worker.pk).update(blocked=blocked, blocked_reason=reason if blocked else "",
                                                        blocked_at=timezone.now() if blocked else None)
        if blocked:
            for assignment in CrowdAssignment.objects.filter(worker=worker, state=AssignmentState.LEASED):
                _release(assignment, reason="worker blocked", now=timezone.now())
    worker.refresh_from_db()
    return worker


# -- the next HIT (atomic) -----------------------------------------------------------------------------------------

def _release(assignment: CrowdAssignment, *, reason: str, now: datetime) -> bool:
    """leased → returned, freeing the HIT's place (conditional: exactly one caller wins)."""
    released = CrowdAssignment.objects.filter(pk=assignment.pk, state=AssignmentState.LEASED).update(
        state=AssignmentState.RETURNED, returned_at=now, reason=reason)
    if released:
        Hit.objects.filter(pk=assignment.hit_id, role=HitRole.TASK).update(assigned_count=F("assigned_count") - 1)
    return bool(released)


def leases_expire(*, study: CrowdStudy, now: datetime | None = None, limit: int = 500) -> int:
    """Release the study's leases that ran out (MTurk's AssignmentDurationInSeconds); returns how many (at most
    ``limit`` at a time, but for PostgreSQL, where one statement releases them all)."""
    now = now or timezone.now()
    if claims.claims_in_sql():
        return claims.leases_expire(study_id=study.pk, now=now, reason=LEASE_EXPIRED)
    expired = list(CrowdAssignment.objects.filter(hit__study=study, state=AssignmentState.LEASED,
                                                  lease_expires_at__lt=now).only("pk", "hit_id")[:limit])
    return sum(_release(assignment, reason=LEASE_EXPIRED, now=now) for assignment in expired)


def _ordered_for(queryset, worker: CrowdWorker):
    """``queryset`` of HITs in the worker's own order: ``(position · a + b) mod p``."""
    big = BigIntegerField()
    order = ExpressionWrapper(Mod(Cast("position", big) * Value(worker.order_a, output_field=big)
                                  + Value(worker.order_b, output_field=big), Value(ORDER_MODULUS, output_field=big)),
                              output_field=big)
    return queryset.annotate(worker_rank=order).order_by("worker_rank", "id")


def _gold_due(worker: CrowdWorker, number: int, rate: float) -> bool:
    """Whether the worker's ``number``-th HIT is a gold item: a draw seeded by the worker's code and ``number``."""
    if rate <= 0:
        return False
    return float(np.random.default_rng([int(worker.code[:12], 16), number]).random()) < rate


def _lease_unsaved(worker: CrowdWorker, now: datetime, hit: Hit | None = None, **external: str) -> CrowdAssignment:
    return CrowdAssignment(hit=hit, worker=worker, token=new_token(), leased_at=now, simulated=worker.simulated,
                           lease_expires_at=now + timedelta(seconds=worker.study.lease_seconds), **external)


def _lease(hit: Hit, worker: CrowdWorker, now: datetime, **external: str) -> CrowdAssignment:
    lease = _lease_unsaved(worker, now, hit, **external)
    lease.save(force_insert=True)
    return lease


def worker_needs_qualification(worker: CrowdWorker) -> bool:
    return worker.study.qualification_required and worker.qualified is not True


def hit_next_for_worker(*, worker: CrowdWorker, now: datetime | None = None,
                        external: dict[str, str] | None = None) -> CrowdAssignment | None:
    """The assignment ``worker`` should do now: the one they hold (lease still running), or a newly leased one.

    Atomic, as the expert claim (:func:`annotation.services.task_next_for_rater`): the worker row is locked, so one
    worker's requests are serialised. On PostgreSQL the first candidate HIT in the worker's order is read ``FOR
    UPDATE SKIP LOCKED`` (one row only; when every open HIT is locked by other claims the worker backs off and
    retries holding no HIT lock, so workers with different orders cannot deadlock). On SQLite the transaction
    begins IMMEDIATE (settings), so claims are serialised by the write lock. The claim itself is a conditional
    UPDATE ``assigned_count < max_assignments``, and ``(hit, worker)`` is unique: no HIT gets more than N live
    workers, and nobody gets a HIT twice (even one they returned). Expired leases of the study are released
    first. Gold items come at the study's ``gold_rate``; HITs come in the worker's own order. With ``external``
    (an MTurk assignment, a Prolific session) only a lease of that visit counts as held. None when blocked,
    unqualified, the study is closed, or nothing is left. On PostgreSQL (no gold item due) the held lease or a new
    one is one SQL statement (:mod:`annotation.claims`), the twin of the ORM code below. The worker is noted as
    seen at every call.
    """
    now = now or timezone.now()
    external = external or {}
    in_sql = claims.claims_in_sql()
    with transaction.atomic():
        if in_sql:
            worker.blocked, worker.qualified = claims.worker_lock(worker, now)
        else:
            worker = CrowdWorker.objects.select_for_update(of=("self",)).select_related("study").get(pk=worker.pk)
            CrowdWorker.objects.filter(pk=worker.pk).update(last_seen_at=now)
        study = worker.study
        if worker.blocked or worker_needs_qualification(worker):
            return None
        leases_expire(study=study, now=now)
        gold_due = study.gold_rate > 0 and _gold_due(
            worker, CrowdAssignment.objects.filter(worker=worker).count() + 1, study.gold_rate)
        if in_sql and not gold_due:
            for _ in range(CLAIM_RETRIES):
                assignment = claims.worker_next(
                    _lease_unsaved(worker, now, **external), study_id=study.pk, may_lease=study.is_open,
                    order_a=worker.order_a, order_b=worker.order_b, modulus=ORDER_MODULUS, now=now, external=external)
                if assignment is not None or not study.is_open or not _open_hits(study, worker).exists():
                    return assignment
                time.sleep(CLAIM_BACKOFF_SECONDS)  # every open HIT is locked by other claims: wait, holding none
            return None
        held = CrowdAssignment.objects.filter(worker=worker, state=AssignmentState.LEASED, lease_expires_at__gte=now)
        # A platform's assignment or session is its own visit: what the worker holds elsewhere stays there.
        for key in ("external_assignment_id", "external_session"):
            if external.get(key):
                held = held.filter(**{key: external[key]})
        held = held.select_related("hit").order_by("leased_at", "id").first()
        if held is not None:
            return held
        if not study.is_open:
            return None
        if gold_due:
            gold = _ordered_for(Hit.objects.filter(study=study, role=HitRole.GOLD, kind=study.kind)
                                .exclude(assignments__worker=worker), worker).first()
            if gold is not None:
                return _lease(gold, worker, now, **external)
        open_hits = _open_hits(study, worker)
        skip_locked = connection.features.has_select_for_update_skip_locked
        for _ in range(CLAIM_RETRIES):
            candidates = _ordered_for(open_hits, worker)
            if skip_locked:
                candidates = candidates.select_for_update(skip_locked=True, of=("self",))
            hit = candidates.first()
            if hit is not None:
                claimed = Hit.objects.filter(pk=hit.pk, assigned_count__lt=F("max_assignments")).update(
                    assigned_count=F("assigned_count") + 1)
                if claimed:
                    return _lease(hit, worker, now, **external)
                continue
            # Nothing unlocked. Without SKIP LOCKED (SQLite: claims are serialised) that means nothing is left;
            # on PostgreSQL other claims may hold the last open HITs: wait for them without holding any lock.
            if not skip_locked or not open_hits.exists():
                break
            time.sleep(CLAIM_BACKOFF_SECONDS)
    return None


def _open_hits(study: CrowdStudy, worker: CrowdWorker):
    """The study's task HITs with a free place that ``worker`` never had (not retired)."""
    return (Hit.objects.filter(study=study, role=HitRole.TASK, retired=False, assigned_count__lt=F("max_assignments"))
            .exclude(assignments__worker=worker))


def assignment_return(*, assignment: CrowdAssignment, reason: str = "returned by the worker") -> bool:
    """The worker gives a leased HIT back (MTurk's "Return"): its place reopens; they will not get it again."""
    return _release(assignment, reason=reason, now=timezone.now())


def assignment_mark_shown(*, assignment: CrowdAssignment, now: datetime | None = None) -> None:
    """Record when the HIT was first shown (time on task runs from here)."""
    CrowdAssignment.objects.filter(pk=assignment.pk, shown_at__isnull=True).update(shown_at=now or timezone.now())


def hit_overlap_set(*, hit: Hit, max_assignments: int | None = None, retired: bool | None = None) -> Hit:
    """Dynamic overlap (issue 8 item 5): give a HIT more (or fewer) places, or retire it (settled early).

    ``max_assignments`` never drops below the places already taken (the capacity constraint)."""
    updates: dict[str, Any] = {}
    if max_assignments is not None:
        updates["max_assignments"] = max(int(max_assignments), 1)
    if retired is not None:
        updates["retired"] = bool(retired)
    if updates:
        with transaction.atomic():
            current = Hit.objects.select_for_update().get(pk=hit.pk)
            if "max_assignments" in updates:
                updates["max_assignments"] = max(updates["max_assignments"], current.assigned_count)
            Hit.objects.filter(pk=hit.pk).update(**updates)
    hit.refresh_from_db()
    return hit


# -- submissions ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubmitResult:
    """What a submission did: the assignment, and for gold items the feedback to show at once."""

    assignment: CrowdAssignment
    gold: bool = False
    correct: bool | None = None
    explanation: str = ""
    blocked: bool = False


def clean_description(text: str | None) -> str:
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in (text or "")).split())
    if not text:
        raise CrowdInputError("Describe the highlighted patches in a few words.")
    if len(text) > DESCRIPTION_MAX_LENGTH:
        raise CrowdInputError(f"A description has at most {DESCRIPTION_MAX_LENGTH} characters.")
    return text


def answer_fields(*, hit: Hit, answer: str | None = None, description: str | None = None,
                  confidence: int | str | None = None, count: int | str | None = None) -> dict[str, Any]:
    """The validated answer fields for ``hit``'s kind (raises :class:`CrowdInputError`)."""
    if hit.kind == CrowdTaskKind.VALIDATION:
        if answer not in (YES, NO):
            raise CrowdInputError("Answer yes or no.")
        return {"answer": answer}
    if hit.kind == CrowdTaskKind.DESCRIPTION:
        try:
            confidence = int(confidence)
        except (TypeError, ValueError):
            raise CrowdInputError("Say how sure you are, from 1 to 5.") from None
        if not 1 <= confidence <= 5:
            raise CrowdInputError("Say how sure you are, from 1 to 5.")
        return {"description": clean_description(description), "confidence": confidence}
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise CrowdInputError("Give the number of images.") from None
    if not 0 <= count <= (hit.purity_shown or 0):
        raise CrowdInputError(f"The number lies between 0 and {hit.purity_shown}.")
    return {"count": count}


def gold_check(hit: Hit, fields: dict[str, Any]) -> bool:
    """Whether an answer to a gold (or qualification) HIT is right: the yes/no, or for descriptions a phrase
    that normalises to one of the accepted names."""
    if hit.kind == CrowdTaskKind.DESCRIPTION:
        accepted = set(hit.gold_answer.split("|"))
        phrase = normalise_concept_name(fields["description"])
        return phrase in accepted or any(name in phrase.split() for name in accepted)
    return fields.get("answer") == hit.gold_answer


def worker_gold_accuracy(worker: CrowdWorker) -> tuple[int, int]:
    """``(correct, answered)`` over the worker's gold items."""
    rows = list(CrowdAssignment.objects.filter(worker=worker, hit__role=HitRole.GOLD, gold_correct__isnull=False)
                .values_list("gold_correct", flat=True))
    return sum(rows), len(rows)


def assignment_submit(*, assignment: CrowdAssignment, answer: str | None = None, description: str | None = None,
                      confidence: int | str | None = None, count: int | str | None = None, pasted: bool = False,
                      now: datetime | None = None, shown_at: datetime | None = None) -> SubmitResult:
    """Record the answer of a leased assignment (leased → submitted, conditional: a double submit is a no-op).

    A lease that ran out is still accepted while nobody else took the place; once released it is refused.
    Gold items are checked at once (feedback returned) and the worker is blocked automatically when their gold
    accuracy falls below the study's ``block_below`` after at least ``block_min_gold`` gold items.
    """
    hit = assignment.hit
    fields = answer_fields(hit=hit, answer=answer, description=description, confidence=confidence, count=count)
    now = now or timezone.now()
    with transaction.atomic():
        # Lock order as in the claim (worker, then assignment): a worker's submits and claims never deadlock.
        worker = CrowdWorker.objects.select_for_update().select_related("study").get(pk=assignment.worker_id)
        current = CrowdAssignment.objects.select_for_update().get(pk=assignment.pk)
        current.hit, current.worker = hit, worker
        if current.state != AssignmentState.LEASED:
            if current.state in (AssignmentState.SUBMITTED, AssignmentState.APPROVED, AssignmentState.REJECTED):
                return SubmitResult(current, gold=hit.role == HitRole.GOLD, correct=current.gold_correct,
                                    explanation=hit.gold_explanation)
            raise CrowdInputError("This HIT is no longer yours (its time ran out or it was returned).")
        shown = shown_at or current.shown_at or current.leased_at
        correct = gold_check(hit, fields) if hit.role == HitRole.GOLD else None
        submitted = dict(state=AssignmentState.SUBMITTED, submitted_at=now, shown_at=shown,
                         seconds=round(max((now - shown).total_seconds(), 0.0), 3), pasted=bool(pasted),
                         gold_correct=correct, **fields)
        CrowdAssignment.objects.filter(pk=current.pk).update(**submitted)
        for field, value in submitted.items():
            setattr(current, field, value)
        blocked = False
        study = worker.study
        if correct is not None and not worker.blocked:
            right, answered = worker_gold_accuracy(worker)
            if answered >= study.block_min_gold and right / answered < study.block_below:
                worker_block(worker=worker, reason=f"gold accuracy {right}/{answered} below {study.block_below:.0%}")
                blocked = True
    if hit.role == HitRole.TASK and study.overlap_rule == OverlapRule.DYNAMIC:
        hit_overlap_apply(hit=hit)
    return SubmitResult(current, gold=hit.role == HitRole.GOLD, correct=correct, explanation=hit.gold_explanation,
                        blocked=blocked)


def hit_overlap_apply(*, hit: Hit) -> Hit:
    """Dynamic overlap after a submission: the study's rules (:func:`annotation.crowd_reports.hit_overlap_decision`)
    set the HIT's target number of workers (more where agreement is low) and retire it once settled."""
    from .crowd_reports import hit_overlap_decision

    decision = hit_overlap_decision(hit)
    return hit_overlap_set(hit=hit, max_assignments=decision.target, retired=decision.action.closes)


# -- qualification ------------------------------------------------------------------------------------------------

def qualification_start(*, worker: CrowdWorker) -> QualificationAttempt | None:
    """The worker's open qualification attempt, or a new one (None when no attempts are left).

    Questions: ``qualification_size`` of the study's qualification HITs in the worker's own order, preferring
    ones not asked in an earlier attempt."""
    study = worker.study
    with transaction.atomic():
        CrowdWorker.objects.select_for_update().filter(pk=worker.pk).first()
        attempts = list(worker.qualification_attempts.all())
        open_attempt = next((attempt for attempt in attempts if attempt.passed is None), None)
        if open_attempt is not None:
            return open_attempt
        if len(attempts) >= study.qualification_max_attempts or worker.qualified is True:
            return None
        asked = {token for attempt in attempts for token in attempt.questions}
        tokens = list(_ordered_for(Hit.objects.filter(study=study, role=HitRole.QUALIFICATION), worker)
                      .values_list("token", flat=True))
        tokens = [t for t in tokens if t not in asked] + [t for t in tokens if t in asked]
        questions = tokens[: study.qualification_size]
        if not questions:
            return None
        return QualificationAttempt.objects.create(worker=worker, questions=questions, total=len(questions))


def qualification_submit(*, attempt: QualificationAttempt, answers: dict[str, str]) -> QualificationAttempt:
    """Score an attempt (every question must be answered yes or no); the worker qualifies at the study's pass
    rate, and is marked unqualified once their attempts are used up."""
    missing = [token for token in attempt.questions if answers.get(token) not in (YES, NO)]
    if missing:
        raise CrowdInputError(f"Answer every question ({len(missing)} left).")
    with transaction.atomic():
        CrowdWorker.objects.select_for_update().filter(pk=attempt.worker_id).first()
        attempt = (QualificationAttempt.objects.select_for_update(of=("self",)).select_related("worker__study")
                   .get(pk=attempt.pk))
        if attempt.passed is not None:
            return attempt
        worker, study = attempt.worker, attempt.worker.study
        truth = dict(Hit.objects.filter(study=study, token__in=attempt.questions).values_list("token", "gold_answer"))
        correct = sum(answers[token] == truth.get(token) for token in attempt.questions)
        attempt.answers = {token: answers[token] for token in attempt.questions}
        attempt.correct, attempt.total = correct, len(attempt.questions)
        attempt.passed = correct >= study.qualification_pass_rate * attempt.total - 1e-9
        attempt.submitted_at = timezone.now()
        attempt.save()
        used = worker.qualification_attempts.count()
        if attempt.passed:
            CrowdWorker.objects.filter(pk=worker.pk).update(qualified=True)
        elif used >= study.qualification_max_attempts:
            CrowdWorker.objects.filter(pk=worker.pk).update(qualified=False)
    return attempt


# -- review, bonuses --------------------------------------------------------------------------------------------

def assignment_review(*, assignment: CrowdAssignment, approve: bool, reason: str = "",
                      reviewer=None) -> CrowdAssignment:
    """Approve or reject (with a reason) a submitted assignment. A rejected answer leaves the aggregates and frees
    its place on the HIT, so another worker can take it. Reviewing again may change the decision."""
    reason = " ".join((reason or "").split())[:300]
    if not approve and not reason:
        raise CrowdInputError("Say why the work is rejected (the worker sees the reason).")
    with transaction.atomic():
        current = CrowdAssignment.objects.select_for_update().get(pk=assignment.pk)
        if current.state not in (AssignmentState.SUBMITTED, AssignmentState.APPROVED, AssignmentState.REJECTED):
            raise CrowdInputError("Only submitted work can be approved or rejected.")
        new_state = AssignmentState.APPROVED if approve else AssignmentState.REJECTED
        if current.state != new_state:
            if new_state == AssignmentState.REJECTED:
                Hit.objects.filter(pk=current.hit_id, role=HitRole.TASK).update(
                    assigned_count=F("assigned_count") - 1)
            elif current.state == AssignmentState.REJECTED:
                Hit.objects.filter(pk=current.hit_id, role=HitRole.TASK).update(
                    assigned_count=F("assigned_count") + 1, max_assignments=_greatest_places(current.hit_id))
        CrowdAssignment.objects.filter(pk=current.pk).update(state=new_state, reason=reason, reviewed_by=reviewer,
                                                             reviewed_at=timezone.now())
    current.refresh_from_db()
    return current


def _greatest_places(hit_id: int) -> int:
    """Un-rejecting restores a place: widen the HIT if another worker took the freed one meanwhile."""
    hit = Hit.objects.get(pk=hit_id)
    return max(hit.max_assignments, hit.assigned_count + 1)


def assignments_review(*, assignments: Iterable[CrowdAssignment], approve: bool, reason: str = "",
                       reviewer=None) -> int:
    done = 0
    for assignment in assignments:
        assignment_review(assignment=assignment, approve=approve, reason=reason, reviewer=reviewer)
        done += 1
    return done


def bonus_grant(*, worker: CrowdWorker, amount_cents: int, reason: str, assignment: CrowdAssignment | None = None,
                created_by=None) -> CrowdBonus:
    """Record a bonus (the payment itself happens on the worker's platform)."""
    reason = " ".join((reason or "").split())[:300]
    if amount_cents <= 0:
        raise CrowdInputError("A bonus is a positive amount.")
    if not reason:
        raise CrowdInputError("Say what the bonus is for.")
    if assignment is not None and assignment.worker_id != worker.pk:
        raise CrowdInputError("That assignment is another worker's.")
    return CrowdBonus.objects.create(worker=worker, assignment=assignment, amount_cents=int(amount_cents),
                                     reason=reason, created_by=created_by)


# -- hand-off checks ---------------------------------------------------------------------------------------------

def submit_to_allowed(*, study: CrowdStudy, submit_to: str) -> bool:
    """Whether ``turkSubmitTo`` names one of the study's allowed hosts over http(s) (answers are posted there)."""
    try:
        parts = urlsplit(submit_to)
    except ValueError:
        return False
    hosts = set(study.external_submit_hosts.split())
    host = parts.hostname or ""
    port_host = f"{host}:{parts.port}" if parts.port else host
    return parts.scheme in ("https", "http") and (host in hosts or port_host in hosts)


# -- the demo -----------------------------------------------------------------------------------------------------

DEMO_DESCRIPTION_STUDY = "demo-crowd-descriptions"
DEMO_VALIDATION_STUDY = "demo-crowd-validation"
DEMO_PURITY_STUDY = "demo-crowd-purity"
DEMO_CROWD_ACCOUNT = "crowd1"
DEMO_LAYERS = ("conv3", "conv4", "conv5")


def crowd_links(study: CrowdStudy, *, base: str = "") -> dict[str, str]:
    """Entry URLs per adapter (``base`` is the site's address, e.g. ``http://127.0.0.1:8000``)."""
    from .crowd_adapters import ADAPTERS

    return {name: adapter.entry_url_template(study, base.rstrip("/")) for name, adapter in ADAPTERS.items()}


def demo_crowd_studies_ensure(*, network: str = "demo-net", dataset: str = "probe-world",
                              layers: Sequence[str] = DEMO_LAYERS, units: Sequence[int] | None = None,
                              real_places: int = 2, seed: int = 0, researcher: str = "researcher") -> dict[str, Any]:
    """The demo's crowd side (idempotent): a description study over ``layers`` answered by a simulated crowd
    (so units have human canonical descriptions), then a blind validation study (dissection labels, those
    descriptions and controls) answered by the simulated crowd too, so the ND'18 Table 3 report is populated.
    Each validation HIT then gets ``real_places`` more places so people entering through the printed links
    still find work; the finished description study is closed. When the demo has learnt an explanatory graph of
    ``network``, a purity study compares its top nodes with the raw filters of the graph's layers (AAAI'18 Fig. 8),
    answered by the simulated crowd and then opened to people the same way. Returns the crowd account's
    credentials, the studies and their links."""
    from accounts.models import User
    from accounts.roles import Role
    from accounts.services import user_ensure

    from .crowd_simulation import crowd_simulate, study_unit_truth
    from .services import StudyInputError, _demo_passwords_ensure, study_extraction_for

    credentials = _demo_passwords_ensure([DEMO_CROWD_ACCOUNT])
    user, created = user_ensure(username=DEMO_CROWD_ACCOUNT, password=credentials[DEMO_CROWD_ACCOUNT], role=Role.CROWD)
    if not created and not user.check_password(credentials[DEMO_CROWD_ACCOUNT]):
        credentials[DEMO_CROWD_ACCOUNT] = "(unchanged: set before the demo stored it)"
    researcher_user = User.objects.filter(username=researcher).first()
    extractions = []
    for layer in layers:
        try:
            extractions.append(study_extraction_for(network=network, layer=layer, dataset=dataset))
        except StudyInputError as error:
            raise CrowdInputError(str(error)) from None
    from analysis.models import ExplanatoryGraph

    graph = ExplanatoryGraph.objects.filter(network__name=network, dataset__name=dataset).first()  # the newest
    plans = [(DEMO_DESCRIPTION_STUDY, CrowdTaskKind.DESCRIPTION, extractions),
             (DEMO_VALIDATION_STUDY, CrowdTaskKind.VALIDATION, extractions)]
    if graph is not None:
        plans.append((DEMO_PURITY_STUDY, CrowdTaskKind.PURITY,
                      [study_extraction_for(network=network, layer=layer, dataset=dataset) for layer in graph.layers]))
    studies: dict[str, CrowdStudy] = {}
    truths: dict[tuple[int, ...], Any] = {}  # the pixel truth of a set of layers, read once
    for name, kind, study_extractions in plans:
        study = CrowdStudy.objects.filter(name=name).first()
        if study is None:
            study = crowd_study_create(
                name=name, kind=kind, extractions=study_extractions, units=units, seed=seed,
                created_by=researcher_user, description_study=studies.get(DEMO_DESCRIPTION_STUDY), graph=graph,
                description="The demo's crowd study: a simulated crowd (flagged simulated) answered every HIT.")
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
    validation = studies[DEMO_VALIDATION_STUDY]
    return {"credentials": credentials, "studies": {name: study.pk for name, study in studies.items()},
            "links": crowd_links(validation)}
