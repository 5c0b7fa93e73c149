"""Aggregating crowd answers: majority vote, Dawid-Skene, agreement with bootstrap intervals, dynamic overlap.

Pure functions on plain data (no models, no Django): answers are a :class:`pandas.DataFrame` with the
columns ``task``, ``worker``, ``label`` (crowd-kit's layout), one row per (task, worker) — each worker's
current answer. ``label`` is any hashable answer: ``"yes"``/``"no"`` for label validation, a normalised
phrase for descriptions, a count for purity tasks. Reports and services shape their rows with
:func:`answers_frame` and call these.

* :func:`majority_vote` — the most frequent label per task, with its share and an explicit tie flag.
* :func:`dawid_skene` — Dawid & Skene (1979) through crowd-kit's ``DawidSkene`` (EM over per-worker
  confusion matrices, initialised by majority vote); each worker's *skill* is the model's probability
  that they answer a random task correctly, ``Σ_c prior_c · P(answer = c | truth = c)``.
* :func:`agreement` — Fleiss' κ and Krippendorff's α (nominal), with seeded percentile bootstrap
  intervals over tasks, by :func:`analysis.engine.agreement.agreement_summary` (the one implementation
  the expert studies use too).
* :func:`overlap_decisions` — the dynamic-overlap policy (:class:`OverlapRules`): stop a HIT early where
  its answer is settled, add raters where agreement is low, up to a cap.
* :func:`mean_purity` — Explanatory Graph purity (how many of the top-K inferences show the same part,
  over K) averaged over patterns.

Not here, to keep one way of doing each: the canonical description of a unit is
:func:`annotation.crowd.selectors.canonical_description`; per-worker gold accuracy comes from the gold HITs'
``gold_correct`` (:func:`annotation.crowd.selectors.crowd_worker_rows`).
"""

from __future__ import annotations

import enum
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.engine import agreement as agreement_engine

__all__ = [
    "COLUMNS",
    "DawidSkeneResult",
    "OverlapAction",
    "OverlapDecision",
    "OverlapRules",
    "agreement",
    "answers_frame",
    "dawid_skene",
    "label_order",
    "majority_support",
    "majority_vote",
    "mean_purity",
    "overlap_decision",
    "overlap_decisions",
    "value_run_p_value",
]

COLUMNS = ("task", "worker", "label")


# -- shaping -------------------------------------------------------------------------------------------------


def answers_frame(rows: Iterable[Sequence[Hashable]] | pd.DataFrame) -> pd.DataFrame:
    """``(task, worker, label)`` rows (or a DataFrame with those columns) → the answers DataFrame.

    Rows keep their order. Missing labels (None/NaN) are dropped. A worker with two answers to one task
    is an error (``ValueError``): pass each worker's current answer only.
    """
    if isinstance(rows, pd.DataFrame):
        missing = [column for column in COLUMNS if column not in rows.columns]
        if missing:
            raise ValueError(f"answers need the columns {COLUMNS}; missing {missing}")
        frame = rows.loc[:, list(COLUMNS)].copy()
    else:
        frame = pd.DataFrame([tuple(row) for row in rows], columns=list(COLUMNS))
        if frame.empty:
            frame = pd.DataFrame({column: pd.Series(dtype=object) for column in COLUMNS})
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    duplicated = frame.duplicated(subset=["task", "worker"], keep=False)
    if duplicated.any():
        task, worker = frame.loc[duplicated, ["task", "worker"]].iloc[0]
        raise ValueError(f"worker {worker!r} answered task {task!r} more than once; pass current answers only")
    return frame


def label_order(answers: pd.DataFrame, labels: Sequence[Hashable] | None = None) -> list:
    """The labels in a fixed order: ``labels`` first (as given), then any other label seen, sorted by text."""
    order = list(dict.fromkeys(labels or ()))
    seen = set(order)
    extra = [label for label in pd.unique(answers["label"]) if label not in seen]
    return order + sorted(extra, key=lambda label: (str(type(label)), str(label)))


def _label_counts(answers: pd.DataFrame) -> dict[Hashable, Counter]:
    counts: dict[Hashable, Counter] = {}
    for task, label in zip(answers["task"], answers["label"]):
        counts.setdefault(task, Counter())[label] += 1
    return counts


# -- majority vote -------------------------------------------------------------------------------------------


def majority_vote(answers: pd.DataFrame, *, labels: Sequence[Hashable] | None = None) -> pd.DataFrame:
    """The most frequent label of each task.

    Returns a DataFrame indexed by ``task`` (first-seen order) with ``label``, ``votes`` (answers for it),
    ``n_answers``, ``share`` (``votes / n_answers``) and ``tied`` (another label has as many votes). A tie
    is broken by :func:`label_order` (``labels`` as given, e.g. ``["yes", "no"]``) — deterministic, and
    flagged so a report can show it rather than hide it.
    """
    order = {label: position for position, label in enumerate(label_order(answers, labels))}
    rows = []
    for task, counts in _label_counts(answers).items():
        top = max(counts.values())
        leaders = sorted((label for label, votes in counts.items() if votes == top), key=order.__getitem__)
        total = sum(counts.values())
        rows.append((task, leaders[0], top, total, top / total, len(leaders) > 1))
    frame = pd.DataFrame(rows, columns=["task", "label", "votes", "n_answers", "share", "tied"])
    return frame.set_index("task")


# -- Dawid-Skene ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DawidSkeneResult:
    """Dawid-Skene's estimates.

    ``labels``: Series task → most probable label; ``probas``: DataFrame task × label of posterior
    probabilities (rows sum to 1); ``confidence``: Series task → the winning label's probability;
    ``priors``: Series label → estimated class prior; ``confusion``: DataFrame indexed by
    (``worker``, observed ``label``) with one column per true label, ``P(observed | true)`` (a label a
    worker never gave has no row: probability 0); ``skills``: Series worker → ``Σ_c prior_c ·
    P(observed = c | true = c)``; ``iterations``: EM steps run.
    """

    labels: pd.Series
    probas: pd.DataFrame
    confidence: pd.Series
    priors: pd.Series
    confusion: pd.DataFrame
    skills: pd.Series
    iterations: int


def dawid_skene(
    answers: pd.DataFrame, *, n_iter: int = 100, tol: float = 1e-5, gold: Mapping[Hashable, Hashable] | None = None
) -> DawidSkeneResult:
    """Dawid & Skene's EM (crowd-kit ``DawidSkene(n_iter, tol)``; its defaults), initialised by majority vote.

    ``gold``: task → known label; when given, those tasks' posteriors are fixed to the known label on every
    EM step (crowd-kit's ``true_labels``), so gold answers calibrate the workers' confusion matrices.
    Deterministic: no random initialisation. Tasks, workers and labels are handed to crowd-kit as integer
    codes (its pandas joins run faster on them: ``benchmarks/bench_crowd_aggregation.py`` measures it)
    and mapped back; index the results by name.
    """
    from crowdkit.aggregation import DawidSkene  # local: crowd-kit (~1.5 s) loads only when a report needs it

    answers = answers_frame(answers)
    if answers.empty:
        empty = pd.Series(dtype=float)
        return DawidSkeneResult(pd.Series(dtype=object), pd.DataFrame(), empty, empty, pd.DataFrame(), empty, 0)
    task_codes, tasks = pd.factorize(answers["task"])
    worker_codes, workers = pd.factorize(answers["worker"])
    label_codes, labels = pd.factorize(answers["label"])
    coded = pd.DataFrame({"task": task_codes, "worker": worker_codes, "label": label_codes})
    true_labels = None
    if gold:
        task_code, label_code = {t: i for i, t in enumerate(tasks)}, {v: i for i, v in enumerate(labels)}
        known = {
            task_code[task]: label_code[label]
            for task, label in gold.items()
            if task in task_code and label in label_code
        }
        true_labels = pd.Series(known, dtype=np.int64) if known else None
    model = DawidSkene(n_iter=n_iter, tol=tol)
    with warnings.catch_warnings():
        # crowd-kit 1.4.2 uses pandas' ``inplace=``/``copy=`` keywords, deprecated in pandas 3 (still correct).
        warnings.filterwarnings("ignore", module=r"crowdkit(\.|$)")
        warnings.filterwarnings("ignore", message=r".*(inplace|copy) keyword.*deprecated")
        model.fit(coded, true_labels=true_labels)
    label_of = dict(enumerate(labels))
    probas = model.probas_.astype(float)
    probas.index = pd.Index([tasks[code] for code in probas.index], name="task")
    probas.columns = [label_of[code] for code in probas.columns]
    priors = model.priors_.astype(float)
    priors.index = pd.Index([label_of[code] for code in priors.index], name="label")
    confusion = model.errors_.astype(float)
    confusion.index = pd.MultiIndex.from_tuples(
        [(workers[w], label_of[code]) for w, code in confusion.index], names=["worker", "label"]
    )
    confusion.columns = [label_of[code] for code in confusion.columns]
    skills = {}
    for worker, block in confusion.groupby(level="worker", sort=False):
        observed = block.droplevel("worker")
        skills[worker] = float(
            sum(priors[label] * observed.at[label, label] for label in priors.index if label in observed.index)
        )
    return DawidSkeneResult(
        labels=probas.idxmax(axis=1).rename("label"),
        probas=probas,
        confidence=probas.max(axis=1).rename("confidence"),
        priors=priors.rename("prior"),
        confusion=confusion,
        skills=pd.Series(skills, dtype=float, name="skill").rename_axis("worker"),
        iterations=len(model.loss_history_),
    )


# -- agreement -----------------------------------------------------------------------------------------------


def agreement(
    answers: pd.DataFrame,
    *,
    labels: Sequence[Hashable] | None = None,
    replicates: int = agreement_engine.DEFAULT_REPLICATES,
    confidence: float = agreement_engine.DEFAULT_CONFIDENCE,
    seed: int = 0,
    interval: bool = False,
) -> agreement_engine.AgreementSummary:
    """Fleiss' κ, Krippendorff's α (nominal; ``interval``: interval α on numeric labels, e.g. purity counts) and
    percent agreement over the tasks with two or more answers,
    each with a ``confidence`` percentile bootstrap interval from ``replicates`` resamples of tasks seeded by
    ``seed`` — :func:`analysis.engine.agreement.agreement_summary` (see its docstring for which tasks each
    statistic uses: Fleiss' κ takes the tasks with the most common number of answers).

    Labels are nominal categories in :func:`label_order`; ``labels`` fixes the category list, so a label
    nobody gave still counts as a possible answer.
    """
    answers = answers_frame(answers)
    order = label_order(answers, labels)
    codes = {label: code for code, label in enumerate(order)}
    triples = [
        (task, worker, codes[label])
        for task, worker, label in zip(answers["task"], answers["worker"], answers["label"])
    ]
    if not triples:
        return agreement_engine.AgreementSummary(
            None,
            None,
            None,
            None,
            n_items=0,
            n_raters=0,
            n_answers=0,
            confidence=confidence,
            replicates=replicates,
            seed=seed,
        )
    matrix, _, _ = agreement_engine.ratings_matrix(triples)
    return agreement_engine.agreement_summary(
        matrix,
        n_categories=max(len(order), 1),
        replicates=replicates,
        confidence=confidence,
        seed=seed,
        values=[float(label) for label in order] if interval else None,
    )


# -- dynamic overlap -----------------------------------------------------------------------------------------


class OverlapAction(str, enum.Enum):  # noqa: UP042 — str() stays as it was
    """What the overlap policy says about one HIT."""

    COLLECT = "collect"
    """Fewer answers than planned (or than ``min_raters``) and not settled: keep collecting."""
    STOP_EARLY = "stop_early"
    """Settled before its planned number of answers: close it now."""
    DONE = "done"
    """Planned number of answers reached with enough agreement: closed."""
    EXTEND = "extend"
    """Planned number reached but agreement low: raise its target (``OverlapDecision.target``)."""
    EXHAUSTED = "exhausted"
    """``max_raters`` answers and still low agreement: closed, left unsettled for the researcher."""

    @property
    def closes(self) -> bool:
        """Whether the HIT takes no more answers."""
        return self in (OverlapAction.STOP_EARLY, OverlapAction.DONE, OverlapAction.EXHAUSTED)


@dataclass(frozen=True)
class OverlapRules:
    """A crowd study's dynamic-overlap rules (:meth:`from_study` reads them off a ``CrowdStudy``).

    The papers fix no such rule (ND'18 §3.1 and Zhou et al. 2015 use three raters per unit; Zooniverse
    retires a subject after a set count or by consensus). Defaults are ``CrowdStudy``'s:

    * ``min_raters`` (3, the study's ``overlap_settle_after``): no HIT is decided before this many answers;
    * ``stop_share`` (1.0): a HIT whose leading answer holds at least this share of its first ``min_raters``
      or more answers is settled early (1.0: unanimous);
    * ``extend_below`` (0.7, ``overlap_min_agreement``): once the planned number of answers is in, a HIT whose
      leading answer's share is below this gets more raters (three raters split 2–1 have 0.67: one more);
    * ``add`` (1): raters added per extension;
    * ``max_raters`` (5, ``overlap_max_assignments``): never more answers than this.
    """

    min_raters: int = 3
    stop_share: float = 1.0
    extend_below: float = 0.7
    add: int = 1
    max_raters: int = 5

    def __post_init__(self) -> None:
        if self.min_raters < 1:
            raise ValueError("min_raters must be at least 1")
        if self.max_raters < self.min_raters:
            raise ValueError("max_raters must be at least min_raters")
        if self.add < 1:
            raise ValueError("add must be at least 1")
        if not 0.0 < self.stop_share <= 1.0 or not 0.0 <= self.extend_below <= 1.0:
            raise ValueError("stop_share must lie in (0, 1] and extend_below in [0, 1]")

    @classmethod
    def from_study(cls, study) -> OverlapRules:
        """The rules of a crowd study (any object with ``overlap_settle_after``, ``overlap_min_agreement`` and
        ``overlap_max_assignments``; ``assignments_per_hit`` if it has one). A cap below the settle count or the
        study's planned N is raised to it: the rules add raters beyond the plan, they never cut it."""
        settle = int(study.overlap_settle_after)
        planned = int(getattr(study, "assignments_per_hit", 0) or 0)
        return cls(
            min_raters=settle,
            extend_below=float(study.overlap_min_agreement),
            max_raters=max(int(study.overlap_max_assignments), settle, planned),
        )


@dataclass(frozen=True)
class OverlapDecision:
    """The policy's word on one HIT: ``target`` is how many answers it should end with (its new N)."""

    task: Hashable
    action: OverlapAction
    target: int
    n_answers: int
    leading_label: Hashable | None
    leading_share: float | None


def overlap_decision(
    task: Hashable, counts: Mapping[Hashable, int], planned: int, rules: OverlapRules = OverlapRules()
) -> OverlapDecision:
    """Apply ``rules`` to one HIT with answer ``counts`` (label → answers) and ``planned`` answers (its N,
    possibly raised by earlier extensions).

    In order: fewer than ``min_raters`` answers → collect; leading share ≥ ``stop_share`` before the
    planned count → stop early; below the planned count → collect; at or past it: share ≥
    ``extend_below`` → done, else extend by ``add`` (capped at ``max_raters``), or exhausted at the cap.
    """
    n = int(sum(counts.values()))
    leading, share = None, None
    if n:
        top = max(counts.values())
        leaders = [label for label, votes in counts.items() if votes == top]
        leading, share = (leaders[0] if len(leaders) == 1 else None), top / n
    planned = min(max(int(planned), rules.min_raters), rules.max_raters)

    def decide(action: OverlapAction, target: int) -> OverlapDecision:
        return OverlapDecision(task, action, target, n, leading, share)

    if n < rules.min_raters:
        return decide(OverlapAction.COLLECT, planned)
    if n < planned:
        if share >= rules.stop_share:
            return decide(OverlapAction.STOP_EARLY, n)
        return decide(OverlapAction.COLLECT, planned)
    if share >= rules.extend_below:
        return decide(OverlapAction.DONE, n)
    if n >= rules.max_raters:
        return decide(OverlapAction.EXHAUSTED, n)
    return decide(OverlapAction.EXTEND, min(n + rules.add, rules.max_raters))


def overlap_decisions(
    answers: pd.DataFrame,
    planned: int | Mapping[Hashable, int],
    rules: OverlapRules = OverlapRules(),
    *,
    tasks: Iterable[Hashable] = (),
) -> dict[Hashable, OverlapDecision]:
    """:func:`overlap_decision` for every task of ``answers`` (and every task in ``tasks``, answered or not).

    ``planned``: one N for all, or task → N (a task missing from the mapping takes ``rules.min_raters``).
    """
    counts = _label_counts(answers_frame(answers))
    for task in tasks:
        counts.setdefault(task, Counter())
    result = {}
    for task, task_counts in counts.items():
        n = planned.get(task, rules.min_raters) if isinstance(planned, Mapping) else planned
        result[task] = overlap_decision(task, task_counts, n, rules)
    return result


# -- purity (Explanatory Graph) -------------------------------------------------------------------------------


def mean_purity(counts: Iterable[tuple[Hashable, int, int]]) -> tuple[float | None, int]:
    """Explanatory Graph purity: ``(pattern, same_part_count, K)`` per rater answer → (mean over patterns of
    the pattern's mean ``count / K`` over its raters, number of patterns); ``(None, 0)`` without answers.

    The paper averages per-pattern purity over the D filters (and the top-D graph nodes); raters of one
    pattern are averaged first so a pattern with more raters does not weigh more.
    """
    per_pattern: dict[Hashable, list[float]] = {}
    for pattern, count, k in counts:
        if k <= 0 or not 0 <= count <= k:
            raise ValueError(f"pattern {pattern!r}: a count of {count} out of K={k} is impossible")
        per_pattern.setdefault(pattern, []).append(count / k)
    if not per_pattern:
        return None, 0
    return float(np.mean([np.mean(values) for values in per_pattern.values()])), len(per_pattern)


PURITY_COUNT_TOLERANCE = 1
"""Two purity counts are "the same answer" when they differ by at most this many images (our choice; the papers
fix none): counting 10–20 small images by eye is rarely exact, and ±1 still tells a pure pattern (13 of 15) from a
mixed one (8 of 15). Used for the agreement of a purity HIT's counts and to judge purity qualification answers."""


def majority_support(answers: Sequence[Hashable], *, tolerance: int = 0) -> int:
    """How many of one HIT's ``answers`` give its best-supported answer: the largest number of answers equal to
    one of them or, for counts with a ``tolerance``, within ± ``tolerance`` of one of them: at ±1 the counts 7, 8, 9
    give 3 (all within 1 of 8), the counts 7, 9 give 1 (they differ by 2). 0 without answers."""
    if not answers:
        return 0
    if tolerance:
        return max(sum(abs(other - answer) <= tolerance for other in answers) for answer in answers)
    return max(Counter(answers).values())


def value_run_p_value(n: int, run: int, share: float) -> float:
    """P(a sequence of ``n`` answers drawn independently holds a run of ``run`` or more of one given answer whose
    probability is ``share``): exact, by dynamic programming over the current run's length, O(n · run). 0.0 when
    ``n`` < ``run`` or the answer is never given; 1.0 when ``run`` ≤ 0 or it is the only answer."""
    if n < run or (share <= 0 and run > 0):
        return 0.0
    if run <= 0 or share >= 1:
        return 1.0
    state = np.zeros(run)  # state[r]: no run of ``run`` yet, the sequence ends in r of the answer
    state[0] = 1.0
    for _ in range(n):
        grown = np.empty_like(state)
        grown[0] = state.sum() * (1.0 - share)  # another answer ends the run
        grown[1:] = state[:-1] * share  # the run goes on (one reaching ``run`` leaves the count)
        state = grown
    return float(min(max(1.0 - state.sum(), 0.0), 1.0))


def longest_run_p_value(n: int, run: int, shares: Sequence[float]) -> float:
    """P(a sequence of ``n`` answers drawn independently with probabilities ``shares`` holds a run of ``run`` or
    more identical answers, whichever answer): the rule the streak signal first had; it now tests each answer's
    own runs (:func:`value_run_p_value`, :func:`annotation.crowd.selectors.streak_test`). Exact, by dynamic
    programming over (last answer, current run length): O(n · len(shares) · run); checked against enumeration and
    Monte Carlo in ``tests/test_crowd_streaks.py``. 0.0 when ``n`` < ``run`` (no sequence that short holds the
    run; it used to say 1.0), 1.0 when ``run`` ≤ 1 otherwise or without shares (no evidence either way)."""
    p = np.asarray([share for share in shares if share > 0], dtype=np.float64)
    if n < run:
        return 0.0
    if run <= 1 or p.size == 0:
        return 1.0
    p = p / p.sum()
    state = np.zeros((p.size, run))  # state[v, r]: no run ≥ ``run`` yet, the last answer v repeated r times
    state[:, 1] = p
    for _ in range(n - 1):
        per_value = state.sum(axis=1)
        grown = np.zeros_like(state)
        grown[:, 2:] = state[:, 1:-1] * p[:, None]  # the run goes on (a run reaching ``run`` leaves the count)
        grown[:, 1] = p * (per_value.sum() - per_value)  # another answer starts a new run
        state = grown
    return float(min(max(1.0 - state.sum(), 0.0), 1.0))
