"""Planning crowd studies (issue 8): a study of one task kind over the units of some layers, with its HITs —
the labels to validate (dissection labels, human descriptions, controls), the units to describe, the purity grids
to count — and its gold items and qualification questions from the dataset's pixel truth
(:mod:`annotation.crowd.truth`).

Blindness (ND'18 §3.1: "the origin of the labels was not revealed to the raters"): HITs are created in a
random order with a random ``position`` and a random hex ``token`` (hex cannot spell an origin); grids are
the analysis app's content-hash PNGs; the label's origin is written only to server-side fields.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.db import transaction

from analysis.engine.broden import BrodenFormatError
from analysis.models import Concept, ExemplarKind, ExemplarSet, LayerDissection, LayerExtraction, Unit, UnitDissection
from analysis.selectors import dead_unit_ids
from analysis.services.explanatory_graph import graph_purity_candidates, graph_purity_inferences, purity_patch_picture
from analysis.services.extraction import open_activation_cache
from analysis.services.grids import GRID_TILE_MAX, DatasetImageCache, UnitGridRenderer, store_grid

from ..common import new_token
from ..models import (
    DESCRIPTION_MAX_LENGTH,
    EXPLANATORY_GRAPH,
    RAW_FILTER_PEAKS,
    CrowdStudy,
    CrowdTaskKind,
    Hit,
    HitRole,
    LabelOrigin,
    OverlapRule,
    ValidationRound,
)
from ..naming import label_text, normalise_concept_name
from .aggregation import PURITY_COUNT_TOLERANCE
from .selectors import canonical_descriptions_for
from .services import NO, ORDER_MODULUS, YES, CrowdInputError
from .truth import MarkedPoint, absent_concepts, part_points, peak_concepts, truth_concepts

COUNT_QUESTION_SHOWN = 10
"""Images per purity qualification question (our choice: two rows of five, quicker to count than a task's 20)."""
COUNT_QUESTION_SHARES = (0.8, 0.3, 1.0, 0.5, 0.2, 0.7)
"""The known counts of successive purity qualification questions as shares of the images shown, from nearly
all alike to mostly different, so that answering one number every time fails the test (our choice)."""


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
    validation_round: str = ""
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


def _overall_sets(
    extraction: LayerExtraction, units: Sequence[int] | None, *, include_dead_units: bool = False
) -> list[ExemplarSet]:
    """The top-15 sets of ``units`` (default: all) of the extraction; dead and saturated units (see
    ``analysis.models.UnitStatus``) left out unless ``include_dead_units``."""
    sets = (
        ExemplarSet.objects.filter(extraction=extraction, kind=ExemplarKind.TOP_OVERALL)
        .select_related("unit")
        .order_by("unit__index")
    )
    if units is not None:
        sets = sets.filter(unit__index__in=list(units))
    if not include_dead_units:
        dead = dead_unit_ids(extraction)
        if dead and sets.exists() and not sets.exclude(unit_id__in=dead).exists():
            raise CrowdInputError(
                f"{extraction.layer}: every chosen unit is dead or saturated (it never fires, or "
                "its threshold is 0): choose live units, or include dead units on purpose."
            )
        sets = sets.exclude(unit_id__in=dead)
    sets = list(sets)
    if not sets:
        raise CrowdInputError(f"{extraction.layer}: no top-15 exemplar sets (extract the layer first).")
    if any(exemplar.grid_id is None for exemplar in sets):
        raise CrowdInputError(
            f"Some grids of {extraction.layer.name} are not rendered yet: render the layer's "
            "grids first (python manage.py render_grids)."
        )
    return sets


def dissection_for(extraction: LayerExtraction) -> LayerDissection | None:
    """The newest complete ND'18 dissection (no null baseline) of the extraction's layer on its dataset."""
    return (
        LayerDissection.objects.complete()
        .real()
        .newest_first()
        .filter(layer_id=extraction.layer_id, dataset_id=extraction.dataset_id)
        .first()
    )


# -- labels to validate ----------------------------------------------------------------------------------------------


def _control_concept(rng: np.random.Generator, pool: list[Concept], avoid: set[str]) -> Concept | None:
    """ND'18-style control: a random concept of the dataset whose name matches none of the unit's labels."""
    for _ in range(50):
        concept = pool[int(rng.integers(len(pool)))]
        if normalise_concept_name(concept.name) not in avoid:
            return concept
    return None


def _validation_specs(
    extraction: LayerExtraction,
    sets: list[ExemplarSet],
    *,
    rng: np.random.Generator,
    include_dissection: bool,
    include_human: bool,
    controls: bool,
    description_study: CrowdStudy | None,
    detectors_only: bool,
    selection_round: bool,
) -> list[HitSpec]:
    """Validation HITs of one layer: per unit, the blind comparison round (its dissection label, its human
    canonical description and a control, as comparison HITs) and, with ``selection_round``, the ND'18 selection
    round (its canonical description again, as a HIT of its own whose votes decide whether the unit is
    interpretable; :class:`annotation.models.ValidationRound`)."""
    dissection = dissection_for(extraction) if include_dissection else None
    results = {}
    if dissection is not None:
        results = {
            result.unit_id: result
            for result in UnitDissection.objects.filter(dissection=dissection).select_related("concept")
        }
    human = (
        canonical_descriptions_for(unit_ids=[s.unit_id for s in sets], study=description_study) if include_human else {}
    )
    pool = list(
        Concept.objects.filter(dataset_id=extraction.dataset_id, image_count__gt=0)
        .exclude(category="object_class")
        .order_by("number")
    )
    specs = []
    for exemplar in sets:
        result = results.get(exemplar.unit_id)
        unit_category = result.concept.category if result is not None and result.concept_id else ""
        common = dict(
            kind=CrowdTaskKind.VALIDATION,
            unit_id=exemplar.unit_id,
            extraction_id=extraction.pk,
            grid_id=exemplar.grid_id,
            unit_category=unit_category,
            validation_round=ValidationRound.COMPARISON,
        )
        avoid: set[str] = set()
        dissection_spec = None
        if result is not None and result.concept_id and (result.is_detector or not detectors_only):
            avoid.add(normalise_concept_name(result.concept.name))
            dissection_spec = HitSpec(
                **common,
                label=label_text(result.concept.name),
                label_origin=LabelOrigin.DISSECTION,
                label_concept_id=result.concept_id,
                label_category=result.concept.category,
                source={"dissection": dissection.pk, "iou": result.iou, "is_detector": result.is_detector},
            )
            specs.append(dissection_spec)
        description = human.get(exemplar.unit_id)
        if description is not None:
            human_label = dict(
                label=description["text"].strip().lower()[:DESCRIPTION_MAX_LENGTH], label_origin=LabelOrigin.HUMAN
            )
            source = {
                "description_study": description["study"],
                "description_hit": description["hit"],
                "agreed": description["agreed"],
            }
            if dissection_spec is not None and normalise_concept_name(description["text"]) in avoid:
                # The same text twice would let a worker see one question twice and know the other label is the
                # control: one HIT, its answers credited to both origins (``also_origins``).
                dissection_spec.source.update(also_origins=[LabelOrigin.HUMAN.value], **source)
            else:
                avoid.add(normalise_concept_name(description["text"]))
                specs.append(HitSpec(**common, **human_label, source=source))
            if selection_round:
                specs.append(
                    HitSpec(**{**common, "validation_round": ValidationRound.SELECTION}, **human_label, source=source)
                )
        if controls and pool and avoid:
            concept = _control_concept(rng, pool, avoid)
            if concept is not None:
                specs.append(
                    HitSpec(
                        **common,
                        label=label_text(concept.name),
                        label_origin=LabelOrigin.CONTROL,
                        label_concept_id=concept.pk,
                        label_category=concept.category,
                        source={"control_of": sorted(avoid)},
                    )
                )
    return specs


# -- purity HITs (grids rendered here from the activation cache) -----------------------------------------------------


def unit_image_scores(extraction: LayerExtraction, *, chunk: int = 256) -> np.ndarray:
    """``float32[images, units]``: each unit's map maximum on every image of the extraction (read in chunks)."""
    maps = open_activation_cache(extraction)
    out = np.empty(maps.shape[:2], dtype=np.float32)
    for start in range(0, maps.shape[0], chunk):
        block = np.asarray(maps[start : start + chunk], dtype=np.float32)
        out[start : start + chunk] = block.reshape(block.shape[0], block.shape[1], -1).max(axis=2)
    return out


def _purity_specs(
    extraction: LayerExtraction, sets: list[ExemplarSet], *, mass: float, max_shown: int
) -> list[HitSpec]:
    """One purity HIT per unit: ``max_shown`` images by map maximum drawn from its top K (K by the 30% mass rule) by
    :func:`analysis.engine.explanatory_graph.purity_sample`, the rule every purity pattern is judged by."""
    from analysis.engine.explanatory_graph import purity_sample  # local: imports torch, kept out of web processes

    scores = unit_image_scores(extraction)
    renderer = UnitGridRenderer(extraction)
    specs = []
    for exemplar in sets:
        unit_scores = scores[:, exemplar.unit.index]
        order, k = purity_sample(unit_scores, mass, max_shown)
        shown = len(order)
        if k == 0:
            continue
        picture = renderer.picture(
            exemplar.unit.index, order, vmax=max(float(unit_scores.max()), 1e-6), columns=5, num_slots=shown
        )
        grid = store_grid(picture, style="purity")
        specs.append(
            HitSpec(
                kind=CrowdTaskKind.PURITY,
                unit_id=exemplar.unit_id,
                extraction_id=extraction.pk,
                grid_id=grid.pk,
                purity_k=k,
                purity_shown=shown,
                source={
                    "pattern_source": RAW_FILTER_PEAKS,
                    "pattern": exemplar.unit_id,
                    "images": [int(index) for index in order],
                    "mass": mass,
                    "score": "map maximum per image, whole images with the peak marked",
                },
            )
        )
    return specs


def _graph_purity_specs(
    extraction: LayerExtraction, graph, *, mass: float, max_shown: int, include_dead_units: bool = False
) -> list[HitSpec]:
    """Explanatory Graph purity (AAAI'18 Fig. 8) for one layer of ``graph`` (one category's graph, by default on its
    object crops): a HIT per top-D graph node (:func:`analysis.services.explanatory_graph.graph_purity_candidates`)
    and per raw filter (the "raw filter peaks" baseline, on the same inputs as the nodes), both drawn the same way
    — patches of the same number of inferences, ``max_shown``, drawn from each pattern's top K (K by the 30% rule,
    ``mass``) by the same rule (:func:`analysis.engine.explanatory_graph.purity_sample`), so that raters cannot tell
    the sources apart and a pattern with a long top K is not judged on its purest head only. Nodes and filters of
    dead or saturated units are left out unless ``include_dead_units``."""
    layer = extraction.layer
    dead = set() if include_dead_units else dead_unit_ids(extraction)
    units = {unit.index: unit for unit in Unit.objects.filter(layer=layer) if unit.pk not in dead}

    def spec(shown, k: int, unit_index: int, source: str, pattern: str) -> HitSpec | None:
        if not shown or not k:
            return None
        grid = store_grid(purity_patch_picture(graph, shown, columns=5), style="purity")
        return HitSpec(
            kind=CrowdTaskKind.PURITY,
            unit_id=units[unit_index].pk,
            extraction_id=extraction.pk,
            grid_id=grid.pk,
            purity_k=k,
            purity_shown=len(shown),
            source={
                "pattern_source": source,
                "pattern": pattern,
                "graph": graph.pk,
                "graph_category": graph.category,
                "graph_inputs": graph.inputs,
                "mass": mass,
                "images": [int(group[0].image_index) for group in shown],
            },
        )

    specs = []
    for node, _ in graph_purity_candidates(graph, layer=layer.name):
        if node.filter not in units:
            continue
        common = dict(layer=layer.name, filter_index=node.filter, node=node.node, mode="node", fraction=mass)
        specs.append(
            spec(
                graph_purity_inferences(graph, **common, shown=max_shown),
                len(graph_purity_inferences(graph, **common)),
                node.filter,
                EXPLANATORY_GRAPH,
                f"{layer.name}/{node.filter}/{node.node}",
            )
        )
    for index in sorted(units):
        common = dict(layer=layer.name, filter_index=index, mode="peaks", fraction=mass)
        specs.append(
            spec(
                graph_purity_inferences(graph, **common, shown=max_shown),
                len(graph_purity_inferences(graph, **common)),
                index,
                RAW_FILTER_PEAKS,
                f"{layer.name}/{index}",
            )
        )
    return [item for item in specs if item is not None]


# -- gold items and qualification questions --------------------------------------------------------------------------


def _gold_specs(
    extraction: LayerExtraction,
    sets: list[ExemplarSet],
    *,
    kind: str,
    rng: np.random.Generator,
    gold_count: int,
    qualification_count: int,
    avoid: set[tuple[int, str]] = frozenset(),
) -> list[HitSpec]:
    """Gold and qualification items with answers known from the dataset's pixel truth (see
    :mod:`annotation.crowd.truth`): "yes" for a concept under the peak of most of the 15 images, "no" for a
    concept under none of them. Qualification questions match the study's kind: descriptions (of units whose
    answer is known) for a description study, yes/no label questions for a validation study (purity studies get
    count questions from :func:`_purity_qualification_specs` instead, and no gold items: no unit's count is
    known from the truth). Never a ``(unit id, normalised label)`` pair of ``avoid`` (the study's task
    questions)."""
    wanted = gold_count + qualification_count
    if wanted == 0:
        return []
    chosen = [sets[int(i)] for i in rng.permutation(len(sets))[: max(3 * wanted, 12)]]
    try:
        per_image = peak_concepts(extraction, chosen)
    except BrodenFormatError as error:
        raise CrowdInputError(
            f"Gold items and qualification questions come from the dataset's pixel truth, which "
            f"cannot be read ({error}): create the study without them."
        ) from None
    concepts = Concept.objects.filter(dataset_id=extraction.dataset_id, image_count__gt=0).exclude(
        category="object_class"
    )
    names = {normalise_concept_name(concept.name): concept for concept in concepts}
    specs: list[HitSpec] = []
    candidates = []
    for exemplar in chosen:
        truth = truth_concepts(per_image.get(exemplar.unit_id, []))
        truth = [name for name in truth if name in names]
        askable = [name for name in truth if (exemplar.unit_id, name) not in avoid]
        absent = [
            name
            for name in absent_concepts(per_image.get(exemplar.unit_id, []), names)
            if name in names and (exemplar.unit_id, name) not in avoid
        ]
        if askable:
            candidates.append((exemplar, YES, askable[0], truth))
        if absent:
            candidates.append((exemplar, NO, absent[int(rng.integers(len(absent)))], truth))
    rng.shuffle(candidates)
    yes_first = sorted(candidates, key=lambda c: c[1] != YES)  # qualification takes a mix: alternate yes/no
    mixed = [
        c for pair in zip([c for c in yes_first if c[1] == YES], [c for c in yes_first if c[1] == NO]) for c in pair
    ]
    mixed += [c for c in candidates if c not in mixed]
    # A description study's qualification and gold items ask for descriptions of units whose answer is known.
    pool = [c for c in mixed if c[1] == YES] if kind == CrowdTaskKind.DESCRIPTION else mixed
    qualification = pool[:qualification_count]
    picked = [(HitRole.QUALIFICATION, c) for c in qualification]
    picked += [(HitRole.GOLD, c) for c in pool if c not in qualification][:gold_count]
    for role, (exemplar, answer, name, truth) in picked:
        concept = names[name]
        shown = label_text(concept.name)
        common = dict(
            unit_id=exemplar.unit_id,
            extraction_id=extraction.pk,
            grid_id=exemplar.grid_id,
            role=role,
            source={"truth": truth},
            label_concept_id=concept.pk,
            label_category=concept.category,
        )
        if kind == CrowdTaskKind.VALIDATION:
            explanation = (
                f"“{shown}” is under the highlighted patch in most of these images."
                if answer == YES
                else f"“{shown}” is under none of the highlighted patches."
            )
            specs.append(
                HitSpec(
                    kind=CrowdTaskKind.VALIDATION,
                    label=shown,
                    gold_answer=answer,
                    gold_explanation=explanation,
                    **common,
                )
            )
        elif kind == CrowdTaskKind.DESCRIPTION and answer == YES:
            specs.append(
                HitSpec(
                    kind=CrowdTaskKind.DESCRIPTION,
                    gold_answer="|".join(truth),
                    gold_explanation="Most highlighted patches show: "
                    + ", ".join(label_text(names[t].name) for t in truth)
                    + ".",
                    **common,
                )
            )
    return specs


def count_question_picture(images: Sequence[np.ndarray], points: Sequence[tuple[float, float]], *, shown: int):
    """A purity-style grid of ``images`` (``uint8[h, w, 3]``, resized to the first one's size) with the green
    square and a bright patch at each ``(y, x)`` point (fractions of the image), the rest shaded: what a purity HIT
    shows (:func:`analysis.engine.rendering.render_activation_grid`), for points we chose instead of a unit's
    peaks. The patch is a Gaussian of σ = 15% of the image's shorter side (our choice: about a part's size)."""
    from PIL import Image

    from analysis.engine.rendering import render_activation_grid  # local: imports torch, kept out of web processes

    height, width = images[0].shape[:2]
    pictures = np.stack(
        [
            image
            if image.shape[:2] == (height, width)
            else np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
            for image in images
        ]
    )
    centres = np.asarray([(y * height, x * width) for y, x in points], dtype=np.float64)
    rows, columns = np.mgrid[0:height, 0:width] + 0.5
    sigma = 0.15 * min(height, width)
    distance = (rows[None] - centres[:, 0, None, None]) ** 2 + (columns[None] - centres[:, 1, None, None]) ** 2
    patches = np.exp(-distance / (2 * sigma**2)).astype(np.float32)
    return render_activation_grid(
        pictures, patches, centres, vmax=1.0, columns=5, num_slots=shown, tile=min(GRID_TILE_MAX, max(height, width))
    )


def count_question_points(
    points: Sequence[MarkedPoint], *, target: int, shown: int, rng: np.random.Generator
) -> tuple[str, list[MarkedPoint]] | None:
    """The marked images of one purity qualification question whose known count is ``target`` (lowered to the
    most images any part has, never below 2): ``target`` images marked on one part drawn at random, the other
    ``shown - target`` on other parts — none of them marked more than ``(target - 1) // 2`` times, so the chosen
    part is clearly "the same part as most of the others" — or on no part, each image used once, in a random
    order. ``(part, points)``, or None when the images do not allow such a question."""
    by_part: dict[str, dict[int, MarkedPoint]] = {}
    for point in points:
        by_part.setdefault(point.part, {}).setdefault(point.image, point)
    parts = sorted(name for name in by_part if name)
    if not parts:
        return None
    target = min(target, max(len(by_part[name]) for name in parts))
    if target < 2:
        return None
    part = rng.choice([name for name in parts if len(by_part[name]) >= target])
    chosen = [by_part[part][int(i)] for i in sorted(rng.permutation(sorted(by_part[part]))[:target])]
    used = {point.image for point in chosen}
    cap, marked = max((target - 1) // 2, 1), {}
    others = [point for point in points if point.part != part and point.image not in by_part[part]]
    for point in (others[int(i)] for i in rng.permutation(len(others))):
        if len(chosen) == shown:
            break
        if point.image in used or (point.part and marked.get(point.part, 0) >= cap):
            continue
        chosen.append(point)
        used.add(point.image)
        marked[point.part] = marked.get(point.part, 0) + 1
    if len(chosen) < shown:
        return None
    return str(part), [chosen[int(i)] for i in rng.permutation(shown)]


def _purity_qualification_specs(
    extraction: LayerExtraction, *, count: int, max_shown: int, rng: np.random.Generator
) -> list[HitSpec]:
    """Purity qualification questions: ``count`` count questions over the extraction's dataset whose answers are
    known by construction (:func:`count_question_points` on :func:`annotation.crowd.truth.part_points`), shown as
    purity HITs are (:func:`count_question_picture`) with :data:`COUNT_QUESTION_SHOWN` images (at most the study's
    ``max_shown``) and known counts spread by :data:`COUNT_QUESTION_SHARES`. A count within
    :data:`~annotation.crowd.aggregation.PURITY_COUNT_TOLERANCE` of the known one is right
    (:func:`annotation.crowd.truth.gold_check`). They show no unit: they test counting, not a unit."""
    if count == 0:
        return []
    shown = min(COUNT_QUESTION_SHOWN, max_shown)
    try:
        points = part_points(extraction.dataset.root, rng=rng)
        images = DatasetImageCache(extraction.dataset)
        specs = []
        for number in range(count):
            share = COUNT_QUESTION_SHARES[number % len(COUNT_QUESTION_SHARES)]
            question = count_question_points(points, target=max(2, round(share * shown)), shown=shown, rng=rng)
            if question is None:
                continue
            part, marked = question
            known = sum(point.part == part for point in marked)
            picture = count_question_picture(
                [images[point.image] for point in marked], [(point.y, point.x) for point in marked], shown=shown
            )
            specs.append(
                HitSpec(
                    kind=CrowdTaskKind.PURITY,
                    role=HitRole.QUALIFICATION,
                    extraction_id=extraction.pk,
                    grid_id=store_grid(picture, style="purity").pk,
                    purity_shown=shown,
                    gold_answer=str(known),
                    gold_explanation=f"All {shown} marked patches show {label_text(part)}."
                    if known == shown
                    else f"{known} of the {shown} marked patches show {label_text(part)}; the others show other "
                    "parts, each fewer times, or no part.",
                    source={
                        "question": "constructed count",
                        "part": part,
                        "images": [point.image for point in marked],
                        "points": [[round(point.y, 4), round(point.x, 4)] for point in marked],
                        "parts": [point.part for point in marked],
                        "tolerance": PURITY_COUNT_TOLERANCE,
                    },
                )
            )
    except BrodenFormatError as error:
        raise CrowdInputError(
            f"Purity qualification questions come from the dataset's part masks, which cannot be read ({error}): "
            "create the study without a qualification."
        ) from None
    return specs


# -- the study -------------------------------------------------------------------------------------------------------


def crowd_study_create(
    *,
    name: str,
    kind: str,
    extractions: Sequence[LayerExtraction],
    units: Sequence[int] | None = None,
    assignments_per_hit: int = 3,
    lease_seconds: int = 900,
    gold_rate: float = 0.1,
    gold_count: int = 12,
    qualification_required: bool = True,
    qualification_size: int = 4,
    qualification_pass_rate: float = 0.75,
    block_below: float = 0.6,
    block_min_gold: int = 8,
    include_dissection: bool = True,
    include_human: bool = True,
    controls: bool = True,
    detectors_only: bool = False,
    description_study: CrowdStudy | None = None,
    selection_round: bool = True,
    include_dead_units: bool = False,
    purity_mass: float = 0.3,
    purity_max_shown: int = 20,
    graph=None,
    overlap_rule: str = OverlapRule.FIXED,
    external_submit_hosts: str | None = None,
    hits_per_session: int = 10,
    seed: int = 0,
    description: str = "",
    created_by=None,
) -> CrowdStudy:
    """Create a crowd study of ``kind`` over the units of ``extractions`` (one per layer), with its HITs.

    * validation (ND'18 §3.1): per unit, a HIT for its dissection label (newest complete dissection of the
      layer on the extraction's dataset; every unit with a top concept, or only detectors with
      ``detectors_only``), one for its human canonical description (from ``description_study`` or the newest
      description study covering it), and — with ``controls`` — one for a random other concept of the dataset;
      a unit with neither label gets no HIT. These are the blind comparison round. With ``selection_round``
      (the default, ND'18's protocol) each canonical description also gets a selection-round HIT of its own,
      whose votes alone decide which units are interpretable in Table 3
      (:func:`annotation.crowd.reports.table3_from_votes`).
    * description: one HIT per unit (``assignments_per_hit`` = 3 raters by default, as ND'18's baseline).
    * purity: one HIT per unit showing ``purity_max_shown`` images by map maximum with the peak marked, drawn from
      its top K (K by the 30% mass rule with ``purity_mass``) by
      :func:`analysis.engine.explanatory_graph.purity_sample`; with an Explanatory ``graph`` covering the layer,
      instead a HIT per top-D graph node and per raw filter, both as patches of as many inferences drawn by that
      same rule (AAAI'18 Fig. 8's comparison; ``Hit.source["pattern_source"]`` tells them apart).

    Dead and saturated units (``analysis.models.UnitStatus``) get no HIT, gold item or qualification question
    unless ``include_dead_units``.

    Gold items (``gold_count``) and qualification questions (2 × ``qualification_size``, so a retake can differ)
    come from the dataset's pixel truth; without enough of them the qualification is not required. Qualification
    questions ask what the study's HITs ask: yes/no labels, descriptions, or (purity) counts of marked images
    showing one part (:func:`_purity_qualification_specs`). All HITs are created in one random order.
    """
    name = _clean_study_name(name)
    if kind not in CrowdTaskKind.values:
        raise CrowdInputError(f"Unknown task kind {kind!r}; choose one of {', '.join(CrowdTaskKind.values)}.")
    if kind == CrowdTaskKind.FORCED_CHOICE:
        raise CrowdInputError(
            "Forced-choice studies are planned by annotation.crowd.forced_choice_plan.forced_choice_study_create."
        )
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
        sets = _overall_sets(extraction, units, include_dead_units=include_dead_units)
        if kind == CrowdTaskKind.VALIDATION:
            specs += _validation_specs(
                extraction,
                sets,
                rng=rng,
                include_dissection=include_dissection,
                include_human=include_human,
                controls=controls,
                description_study=description_study,
                detectors_only=detectors_only,
                selection_round=selection_round,
            )
        elif kind == CrowdTaskKind.DESCRIPTION:
            specs += [
                HitSpec(
                    kind=kind,
                    unit_id=s.unit_id,
                    extraction_id=extraction.pk,
                    grid_id=s.grid_id,
                    unit_category=_unit_category(extraction, s.unit_id),
                )
                for s in sets
            ]
        elif graph is not None and extraction.layer.name in graph.layers:
            specs += _graph_purity_specs(
                extraction, graph, mass=purity_mass, max_shown=purity_max_shown, include_dead_units=include_dead_units
            )
        else:
            specs += _purity_specs(extraction, sets, mass=purity_mass, max_shown=purity_max_shown)
    if not any(spec.role == HitRole.TASK for spec in specs):
        raise CrowdInputError("These layers give no HITs (validation needs dissection labels or descriptions).")
    per_layer_gold = -(-gold_count // len(extractions))
    per_layer_qualification = -(-2 * qualification_size // len(extractions)) if qualification_required else 0
    # Gold feedback must not give a task's answer away: gold comes from units no task shows when the layer has
    # them, else from task units but never with one of that unit's task labels.
    task_units = {spec.unit_id for spec in specs if spec.role == HitRole.TASK}
    task_pairs = {(spec.unit_id, normalise_concept_name(spec.label)) for spec in specs if spec.role == HitRole.TASK}
    if kind == CrowdTaskKind.PURITY and per_layer_qualification:
        specs += _purity_qualification_specs(
            extractions[0], count=2 * qualification_size, max_shown=purity_max_shown, rng=rng
        )
        per_layer_qualification = 0
    for extraction in extractions:
        spare = (
            ExemplarSet.objects.filter(extraction=extraction, kind=ExemplarKind.TOP_OVERALL, grid__isnull=False)
            .exclude(unit_id__in=task_units)
            .select_related("unit")
            .order_by("unit__index")
        )
        if not include_dead_units:
            spare = spare.exclude(unit_id__in=dead_unit_ids(extraction))
        spare = list(spare) or _overall_sets(extraction, units, include_dead_units=include_dead_units)
        specs += _gold_specs(
            extraction,
            spare,
            kind=kind,
            rng=rng,
            gold_count=per_layer_gold if gold_rate > 0 and kind != CrowdTaskKind.PURITY else 0,
            qualification_count=per_layer_qualification,
            avoid=task_pairs,
        )
    n_qualification = sum(spec.role == HitRole.QUALIFICATION for spec in specs)
    with transaction.atomic():
        study = CrowdStudy.objects.create(
            name=name,
            token=new_token(),
            kind=kind,
            description=description,
            assignments_per_hit=assignments_per_hit,
            lease_seconds=lease_seconds,
            gold_rate=gold_rate,
            qualification_required=qualification_required and n_qualification >= qualification_size,
            qualification_size=qualification_size,
            qualification_pass_rate=qualification_pass_rate,
            block_below=block_below,
            block_min_gold=block_min_gold,
            overlap_rule=overlap_rule,
            purity_mass=purity_mass,
            purity_max_shown=purity_max_shown,
            hits_per_session=hits_per_session,
            completion_code=secrets.token_hex(4).upper(),
            seed=seed,
            include_dead_units=include_dead_units,
            created_by=created_by,
            **({"external_submit_hosts": external_submit_hosts} if external_submit_hosts is not None else {}),
        )
        study.extractions.set(extractions)
        order = rng.permutation(len(specs))
        Hit.objects.bulk_create(
            [
                Hit(
                    study=study,
                    token=new_token(),
                    position=position,
                    kind=spec.kind,
                    role=spec.role,
                    unit_id=spec.unit_id,
                    extraction_id=spec.extraction_id,
                    grid_id=spec.grid_id,
                    label=spec.label,
                    label_origin=spec.label_origin,
                    validation_round=spec.validation_round,
                    label_concept_id=spec.label_concept_id,
                    label_category=spec.label_category,
                    unit_category=spec.unit_category,
                    source=spec.source or {},
                    gold_answer=spec.gold_answer,
                    gold_explanation=spec.gold_explanation,
                    purity_k=spec.purity_k,
                    purity_shown=spec.purity_shown,
                    max_assignments=assignments_per_hit,
                )
                for position, spec in enumerate(specs[int(i)] for i in order)
            ],
            batch_size=500,
        )
    return study


def _unit_category(extraction: LayerExtraction, unit_id: int) -> str:
    dissection = dissection_for(extraction)
    if dissection is None:
        return ""
    result = UnitDissection.objects.filter(dissection=dissection, unit_id=unit_id).select_related("concept").first()
    return result.concept.category if result is not None and result.concept_id else ""


def gold_item_add(
    *, study: CrowdStudy, unit_hit: Hit, label: str, answer: str, explanation: str = "", role: str = HitRole.GOLD
) -> Hit:
    """A researcher's own gold (or qualification) yes/no question about the unit shown by ``unit_hit``."""
    if answer not in (YES, NO):
        raise CrowdInputError("A gold answer is yes or no.")
    label = " ".join(label.split())[:DESCRIPTION_MAX_LENGTH]
    if not label:
        raise CrowdInputError("A gold item needs a label.")
    position = int(np.random.default_rng().integers(ORDER_MODULUS - 1))
    return Hit.objects.create(
        study=study,
        token=new_token(),
        position=position,
        kind=CrowdTaskKind.VALIDATION,
        role=role,
        unit_id=unit_hit.unit_id,
        extraction_id=unit_hit.extraction_id,
        grid_id=unit_hit.grid_id,
        label=label,
        gold_answer=answer,
        gold_explanation=explanation,
        max_assignments=study.assignments_per_hit,
    )


def study_open_set(*, study: CrowdStudy, is_open: bool) -> CrowdStudy:
    study.is_open = is_open
    study.save(update_fields=["is_open"])
    return study
