"""The human side's data: expert studies, their tasks, raters, assignments and judgments (GG'18 §4).

A study asks, for each (unit, object class) of one layer, whether the unit's top-10 grid of that class
systematically shows one concept. Raters are the people (or simulated and imported raters) of one
study; assignments record which expert holds which task; judgments are never overwritten — a revision
is a new row pointing at the one it revises.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.urls import reverse

QUESTION = "Do the highlighted areas in the images systematically cover the same concept, and if so, which?"
RULE = "This is the case if the highlighted areas cover the same concept in at least seven out of the ten images."
DEFAULT_INSTRUCTIONS = (
    f"{QUESTION}\n\n{RULE}\n\n"
    "Answer Yes – semantic part (e.g. wheel), Yes – background (e.g. grass) or Yes – other (anything else, "
    "e.g. white colour), and name the concept in a few words; No when the highlighted areas do not "
    "systematically cover one concept; Not sure to skip an ambiguous case (such answers are later rejected)."
)
"""GG'18 §4.1's question, rule and answers: the default instructions of a study."""

CONCEPT_MAX_LENGTH = 100
MIN_AGREEING_IMAGES = 7
"""GG'18's rule: the same concept in at least 7 of the 10 images."""


class Answer(models.TextChoices):
    """The five answers of GG'18 §4.1, in the paper's order (their keyboard keys are 1–5)."""

    PART = "part", "Yes – semantic part"
    BACKGROUND = "background", "Yes – background"
    OTHER = "other", "Yes – other"
    NO = "no", "No"
    NOT_SURE = "not_sure", "Not sure"


ANSWER_ORDER: tuple[str, ...] = tuple(Answer.values)
YES_ANSWERS: frozenset[str] = frozenset({Answer.PART, Answer.BACKGROUND, Answer.OTHER})
ANSWER_KEYS: dict[str, str] = {str(position): answer for position, answer in enumerate(ANSWER_ORDER, start=1)}


class StudyKind(models.TextChoices):
    NETWORK = "network", "Units of a network layer"
    IMPORTED = "imported", "Imported judgments"


class StudyPlan(models.TextChoices):
    PAPER = "paper", "GG'18: classes split between experts, one overlap class done by all"
    FULL = "full", "Full overlap: every expert does every task"
    N_RATERS = "n_raters", "N raters per task, first come first served"


class Study(models.Model):
    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=16, choices=StudyKind.choices, default=StudyKind.NETWORK)
    layer = models.ForeignKey("analysis.Layer", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    extraction = models.ForeignKey(
        "analysis.LayerExtraction",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Whose top-10 grids the tasks show.",
    )
    object_classes = models.ManyToManyField("analysis.Concept", blank=True, related_name="+")
    overlap_class = models.ForeignKey(
        "analysis.Concept",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Paper plan: the class every expert does.",
    )
    plan = models.CharField(max_length=16, choices=StudyPlan.choices, default=StudyPlan.PAPER)
    raters_per_task = models.PositiveSmallIntegerField(default=2, help_text="For the N-raters plan.")
    instructions = models.TextField(default=DEFAULT_INSTRUCTIONS)
    seed = models.IntegerField(default=0, help_text="Orders the units within each class.")
    claim_hours = models.PositiveSmallIntegerField(
        default=24,
        help_text="An unanswered task an expert took goes back to the pool after this many hours, when "
        "nothing else is free (0: it stays theirs).",
    )
    suggest_given_names = models.BooleanField(
        default=True,
        help_text="Suggest the names other experts gave in this study (off: each expert sees only "
        "their own names and the dataset's, so that their answers stay independent).",
    )
    include_dead_units = models.BooleanField(
        default=False,
        help_text="Make tasks of dead and saturated units too (off: units that never fire or whose "
        "threshold T_k is 0 get no task; see analysis.models.UnitStatus).",
    )
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("annotation:study_detail", args=[self.pk])


class RaterKind(models.TextChoices):
    EXPERT = "expert", "Expert"
    SIMULATED = "simulated", "Simulated"
    IMPORTED = "imported", "Imported"


class StudyRater(models.Model):
    """Someone who answers a study's tasks: an expert account, a simulated rater, or an imported one."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="raters")
    kind = models.CharField(max_length=16, choices=RaterKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="study_raters"
    )
    name = models.CharField(max_length=150)
    params = models.JSONField(default=dict, blank=True, help_text="Simulated raters: error rate and seed.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["study", "name"], name="unique_rater_name"),
            models.UniqueConstraint(
                fields=["study", "user"], condition=Q(user__isnull=False), name="unique_rater_user"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def is_simulated(self) -> bool:
        return self.kind == RaterKind.SIMULATED


class StudyTask(models.Model):
    """One question: a unit's top-10 grid for one object class (or an imported item).

    ``owner`` (paper plan) is the expert whose class this is; ``None`` means any expert of the study.
    ``capacity`` is how many experts may take it and ``assigned_count`` how many did: the claim is a
    conditional UPDATE ``assigned_count < capacity``.
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="tasks")
    position = models.PositiveIntegerField()
    item = models.CharField(max_length=200, help_text="A stable key (imported items keep theirs).")
    unit = models.ForeignKey("analysis.Unit", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    object_class = models.ForeignKey(
        "analysis.Concept", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    exemplar_set = models.ForeignKey(
        "analysis.ExemplarSet", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    owner = models.ForeignKey(StudyRater, null=True, blank=True, on_delete=models.PROTECT, related_name="owned_tasks")
    capacity = models.PositiveSmallIntegerField(default=1)
    assigned_count = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["study", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["study", "item"], name="unique_task_item"),
            models.CheckConstraint(condition=Q(assigned_count__lte=F("capacity")), name="task_within_capacity"),
        ]
        indexes = [models.Index(fields=["study", "position"])]

    def __str__(self) -> str:
        return f"{self.study} · {self.item}"


class Assignment(models.Model):
    """An expert holds a task: created by the atomic next-task claim; completed by their first judgment."""

    task = models.ForeignKey(StudyTask, on_delete=models.CASCADE, related_name="assignments")
    rater = models.ForeignKey(StudyRater, on_delete=models.CASCADE, related_name="assignments")
    assigned_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["assigned_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "rater"], name="unique_assignment"),
            # A rater holds at most one unanswered task: the claim (annotation.claims) relies on it.
            models.UniqueConstraint(
                fields=["rater"], condition=Q(completed_at__isnull=True), name="one_open_assignment_per_rater"
            ),
        ]


class JudgmentOrigin(models.TextChoices):
    WEB = "web", "Annotation page"
    SIMULATED = "simulated", "Simulated rater"
    IMPORTED = "imported", "Imported file"


class JudgmentQuerySet(models.QuerySet):
    def current(self):
        """Judgments no revision has replaced (each rater's latest answer per task)."""
        return self.filter(revision__isnull=True)

    def human(self):
        """Judgments of people (experts and imported raters), not of simulated raters."""
        return self.filter(simulated=False)


class Judgment(models.Model):
    """One answer. Never updated or deleted: a revision is a new row with ``revision_of`` set."""

    task = models.ForeignKey(StudyTask, on_delete=models.PROTECT, related_name="judgments")
    rater = models.ForeignKey(StudyRater, on_delete=models.PROTECT, related_name="judgments")
    answer = models.CharField(max_length=16, choices=Answer.choices)
    concept = models.CharField(max_length=CONCEPT_MAX_LENGTH, blank=True)
    started_at = models.DateTimeField(null=True, blank=True, help_text="When the task was shown.")
    submitted_at = models.DateTimeField()
    seconds = models.FloatField(null=True, blank=True, help_text="Time from showing to submitting.")
    revision_of = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT, related_name="revision")
    simulated = models.BooleanField(default=False, db_index=True)
    origin = models.CharField(max_length=16, choices=JudgmentOrigin.choices, default=JudgmentOrigin.WEB)
    grid = models.ForeignKey(
        "analysis.RenderedGrid",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The grid shown (the task's version).",
    )
    source_line = models.PositiveIntegerField(null=True, blank=True, help_text="Imported: the file's line.")

    objects = JudgmentQuerySet.as_manager()

    class Meta:
        ordering = ["submitted_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "rater"], condition=Q(revision_of__isnull=True), name="one_first_judgment_per_rater"
            ),
        ]
        indexes = [models.Index(fields=["rater", "submitted_at"])]

    def __str__(self) -> str:
        return f"{self.rater.name} on {self.task.item}: {self.answer}"

    @property
    def is_yes(self) -> bool:
        return self.answer in YES_ANSWERS


class ConceptSynonym(models.Model):
    """A study's synonym: a (normalised) concept name that counts as another one when names are matched.

    Both sides are stored normalised (:func:`annotation.naming.normalise_concept_name` without synonyms), so
    ``Tyres`` → ``wheel`` is stored ``tyre`` → ``wheel``.
    """

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="synonyms")
    name = models.CharField(max_length=CONCEPT_MAX_LENGTH)
    maps_to = models.CharField(max_length=CONCEPT_MAX_LENGTH)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "name"]
        constraints = [models.UniqueConstraint(fields=["study", "name"], name="unique_study_synonym")]

    def __str__(self) -> str:
        return f"{self.name} → {self.maps_to}"


# -- crowd studies (issue 8: ND'18 §3.1, Zhou et al. 2015 descriptions, Explanatory Graph purity) ---------------
#
# A crowd study holds HITs; a HIT is answered by N distinct workers through assignments. Three kinds of task:
#
# * validation (ND'18 §3.1, Table 3): a label (word or short phrase) beside the unit's 15 highlighted images
#   (the ND'18-style top-overall grid); "Is this phrase descriptive of most of the highlighted patches?" yes/no.
#   A label's origin — dissection, a human canonical description, or a control (a random other concept) — is
#   stored on the HIT for the report only and never rendered, put in a URL or an image name;
# * description (Zhou et al. 2015 as used by ND'18): a short phrase and a confidence 1–5; three raters per unit
#   by default; the canonical description is chosen by ``annotation.crowd.selectors.canonical_description``;
# * purity (Explanatory Graph, AAAI'18 §Experiments / arXiv Fig. 6): the top-K inferences of a unit, K such
#   that the top-K scores hold 30% of the total score mass; "how many of these show the same object part?".
#
# Reading guide for reports (issue 8 item 6): the answers are ``CrowdAssignment`` rows with
# ``state in SUBMITTED_STATES`` (submitted or approved; rejected answers are out) of HITs with
# ``role == HitRole.TASK`` (gold and qualification HITs are quality control, never aggregated).
# ``CrowdWorker.simulated`` marks the simulated crowd of the demo (and its assignments carry ``simulated``).

MTURK_PREVIEW_ASSIGNMENT = "ASSIGNMENT_ID_NOT_AVAILABLE"
"""MTurk's ``assignmentId`` in previews: the task is shown but cannot be submitted."""
VALIDATION_QUESTION = "Is this phrase descriptive of most of the highlighted patches?"
"""ND'18 §3.1 / Fig. 4: the yes/no question of label validation."""
DESCRIPTION_QUESTION = "Describe in a few words what the highlighted patches show, and say how sure you are."
PURITY_QUESTION = "How many of these images show the same object part in their highlighted patch?"
"""Explanatory Graph (arXiv Fig. 6): raters counted how many of the top-K inferences describe the same part."""
DESCRIPTION_MAX_LENGTH = 100
CONFIDENCE_CHOICES = tuple(range(1, 6))


class CrowdTaskKind(models.TextChoices):
    VALIDATION = "validation", "Label validation (yes/no)"
    DESCRIPTION = "description", "Description (phrase + confidence)"
    PURITY = "purity", "Purity count"
    FORCED_CHOICE = "forced_choice", "Forced choice (2-AFC psychophysics)"


class LabelOrigin(models.TextChoices):
    """Where a validation label came from: server-side only, never shown to a worker."""

    DISSECTION = "dissection", "Network Dissection label"
    HUMAN = "human", "Human canonical description"
    CONTROL = "control", "Control: a random other concept"


class ValidationRound(models.TextChoices):
    """Which round of ND'18 §3.1 a validation HIT belongs to (server-side only, never shown to a worker).

    ND'18 first validated the canonical human descriptions on their own ("raters were shown the canonical
    descriptions ... and asked whether the description was valid"): those votes decide which units are
    interpretable. The blind comparison round (human, dissection and control labels shuffled, origin hidden)
    supplies Table 3's percentages. The two rounds never share a vote, so choosing the units cannot bias what
    is measured on them. Validation HITs made before the rounds existed have no round and count as comparison.
    """

    SELECTION = "selection", "Selection: is the canonical description valid?"
    COMPARISON = "comparison", "Comparison: blind human / dissection / control labels"


class OverlapRule(models.TextChoices):
    FIXED = "fixed", "Fixed: N workers per HIT"
    DYNAMIC = "dynamic", "Dynamic: add workers where agreement is low, stop early where settled"


class ForcedChoiceCondition(models.TextChoices):
    """What a forced-choice trial shows as its references (issue 17; Borowski et al. ICLR 2021)."""

    NATURAL = "natural", "Natural exemplars (most and least activating images)"
    OVERLAY = "overlay", "Exemplars with the unit's activation overlay"
    NON_EXTREMAL = "non_extremal", "Non-extremal exemplars"
    NONE = "none", "No references (baseline)"


class ConditionAssignment(models.TextChoices):
    TRIALS = "trials", "Between trials: every worker sees every condition"
    WORKERS = "workers", "Between workers: each worker sees one condition"


class CrowdStudy(models.Model):
    """A crowd study: HITs of one kind over the units of one or more layers (``extractions``).

    URLs name a study by ``token`` (random), never by its id or name. Parameters and their defaults:

    * ``assignments_per_hit`` N (3: ND'18's "three independent raters" for descriptions; MTurk's
      MaxAssignments): distinct workers per HIT. Each HIT copies it into ``Hit.max_assignments``, which
      dynamic overlap may raise or lower per HIT.
    * ``lease_seconds`` (MTurk's AssignmentDurationInSeconds; 15 minutes, our choice): a leased assignment
      not submitted by then is released (state returned, reason "lease expired") and its HIT reopens.
    * ``gold_rate`` (0.1, our choice): share of a worker's HITs that are gold items (known answers), shown with
      immediate feedback; ``block_below`` / ``block_min_gold``: a worker whose gold accuracy falls below
      ``block_below`` once they answered at least ``block_min_gold`` gold items is blocked automatically.
    * ``qualification_required`` / ``qualification_size`` / ``qualification_pass_rate`` /
      ``qualification_max_attempts``: a qualification test of questions of the study's own kind with known
      answers (yes/no labels, descriptions, or purity counts; practice trials for forced choice), taken before a
      worker's first HIT, with feedback question by question.
    * dynamic overlap (used when ``overlap_rule`` is dynamic; the rules themselves live in
      ``annotation.crowd.aggregation``): a HIT whose N answers agree less than ``overlap_min_agreement`` (share of the
      majority answer) gets one more worker at a time up to ``overlap_max_assignments``; a HIT whose first
      ``overlap_settle_after`` answers are unanimous is settled early (``Hit.retired``).
    * purity: ``purity_mass`` (0.3, the Explanatory Graph papers' share of the total score mass held by the
      top-K) and ``purity_max_shown`` (our cap on the images one HIT shows: K can reach hundreds on a large
      probe set; ``Hit.purity_k`` keeps the paper's K, ``Hit.purity_shown`` what was shown).
    * hand-off: ``external_submit_hosts`` are the hosts a ``turkSubmitTo`` may name (MTurk's and its sandbox by
      default; add a look-alike platform's); ``completion_code`` is shown to Prolific-style workers only after
      they submitted; ``hits_per_session`` is how many HITs one Prolific/own-link session asks for before the
      completion page (MTurk: one HIT per external assignment).
    """

    name = models.CharField(max_length=200, unique=True)
    token = models.CharField(max_length=32, unique=True, help_text="Names the study in worker URLs.")
    kind = models.CharField(max_length=16, choices=CrowdTaskKind.choices)
    extractions = models.ManyToManyField(
        "analysis.LayerExtraction",
        related_name="+",
        help_text="The layers (and their dataset) whose units the HITs show.",
    )
    description = models.TextField(blank=True, help_text="For researchers only.")
    instructions = models.TextField(blank=True, help_text="Shown to workers; empty: the kind's default.")
    assignments_per_hit = models.PositiveSmallIntegerField(default=3)
    lease_seconds = models.PositiveIntegerField(default=900)
    gold_rate = models.FloatField(default=0.1)
    qualification_required = models.BooleanField(default=True)
    qualification_size = models.PositiveSmallIntegerField(default=4)
    qualification_pass_rate = models.FloatField(default=0.75)
    qualification_max_attempts = models.PositiveSmallIntegerField(default=2)
    block_below = models.FloatField(default=0.6, help_text="Gold accuracy below which a worker is blocked.")
    block_min_gold = models.PositiveSmallIntegerField(default=8)
    overlap_rule = models.CharField(max_length=16, choices=OverlapRule.choices, default=OverlapRule.FIXED)
    overlap_max_assignments = models.PositiveSmallIntegerField(default=5)
    overlap_min_agreement = models.FloatField(default=0.7)
    overlap_settle_after = models.PositiveSmallIntegerField(default=3)
    purity_mass = models.FloatField(default=0.3)
    purity_max_shown = models.PositiveSmallIntegerField(default=20)
    external_submit_hosts = models.CharField(
        max_length=500,
        default="www.mturk.com workersandbox.mturk.com",
        help_text="Space-separated hosts a turkSubmitTo may name.",
    )
    completion_code = models.CharField(max_length=64, help_text="Prolific-style completion code.")
    hits_per_session = models.PositiveSmallIntegerField(default=10)
    reward_cents = models.PositiveIntegerField(default=0, help_text="Pay per approved HIT (for the records).")
    seed = models.IntegerField(default=0)
    is_open = models.BooleanField(default=True, help_text="Closed studies hand out no new HITs.")
    include_dead_units = models.BooleanField(
        default=False,
        help_text="Make HITs, gold items and qualification questions of dead and saturated units "
        "too (off: units that never fire or whose threshold T_k is 0 get none).",
    )
    conditions = models.JSONField(
        default=list, blank=True, help_text="Forced choice: the conditions compared (ForcedChoiceCondition values)."
    )
    condition_assignment = models.CharField(max_length=16, choices=ConditionAssignment.choices, blank=True)
    trial_params = models.JSONField(
        default=dict, blank=True, help_text="Forced choice: the planning parameters (reference count, ranks, …)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "crowd studies"

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("annotation:crowd_study_detail", args=[self.pk])


class CrowdAdapter(models.TextChoices):
    """How a worker entered (``annotation.crowd.adapters``)."""

    LINK = "link", "Own link (worker code)"
    MTURK = "mturk", "MTurk ExternalQuestion"
    PROLIFIC = "prolific", "Prolific"


class CrowdWorker(models.Model):
    """A worker of one study, known by (adapter, external id): an MTurk ``workerId``, a ``PROLIFIC_PID``, or a
    generated id for own links (then ``user`` is set when a signed-in crowd account entered).

    ``code`` (random, not guessable) names the worker in their task URLs: it is how pages know who asks (MTurk
    shows the page in a cross-site iframe, where cookies are unreliable). External ids are not authentication.
    ``blocked`` stops new HITs (set automatically by the gold rule or by a researcher, with a reason).
    ``qualified`` is None until the qualification test is taken (or when none is required).
    ``simulated`` marks the demo's simulated crowd; ``params`` keeps a simulated worker's reliability and seed.
    ``order_a``/``order_b`` fix the worker's own order of HITs: positions sorted by
    ``(position * order_a + order_b) mod ORDER_MODULUS`` (a per-worker permutation).
    """

    study = models.ForeignKey(CrowdStudy, on_delete=models.CASCADE, related_name="workers")
    adapter = models.CharField(max_length=16, choices=CrowdAdapter.choices)
    external_id = models.CharField(max_length=128)
    code = models.CharField(max_length=32, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="crowd_workers"
    )
    simulated = models.BooleanField(default=False, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    qualified = models.BooleanField(null=True, blank=True)
    blocked = models.BooleanField(default=False)
    blocked_reason = models.CharField(max_length=300, blank=True)
    blocked_at = models.DateTimeField(null=True, blank=True)
    order_a = models.BigIntegerField(default=1)
    order_b = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["study", "adapter", "external_id"], name="unique_crowd_worker")]

    def __str__(self) -> str:
        return f"{self.adapter}:{self.external_id}"


RAW_FILTER_PEAKS = "raw_filter_peaks"
EXPLANATORY_GRAPH = "explanatory_graph"
"""Pattern sources of purity HITs (``Hit.source["pattern_source"]``): a raw filter's peaks, or an Explanatory Graph
node (AAAI'18 Fig. 8 compares the two)."""


class HitRole(models.TextChoices):
    TASK = "task", "Task (aggregated)"
    GOLD = "gold", "Gold item (known answer, mixed in)"
    QUALIFICATION = "qualification", "Qualification question"


class Hit(models.Model):
    """One crowd question. Workers reach it by ``token`` only; ``position`` is a random rank (so ids and creation
    order carry nothing either).

    What the worker sees: ``grid`` (a content-hash PNG: for validation and description the unit's ND'18 top-15
    grid, for purity a grid of the shown top-K inferences) and, for validation, ``label``. Server-side only:
    ``label_origin``, ``label_concept`` (the dataset concept for dissection and control labels),
    ``label_category`` (the label concept's category: color, texture, material, part, object, scene; blank for
    human phrases), ``unit_category`` (the category of the unit's dissection label, for Table 3's per-category
    rows; blank without a dissection), ``source`` (provenance: dissection id and IoU, is_detector, the description
    study and HIT of a human label, …).

    Gold and qualification HITs (``role``) carry ``gold_answer`` ("yes"/"no" for validation, a normalised phrase
    for descriptions, the known count for a purity qualification question, which shows no unit: its marked images
    and their parts are in ``source``) and ``gold_explanation`` (the feedback); they have no capacity limit. Task
    HITs hold at most ``max_assignments`` live assignments (``assigned_count``, kept by conditional UPDATEs);
    ``retired`` stops a HIT early (dynamic overlap).
    """

    study = models.ForeignKey(CrowdStudy, on_delete=models.CASCADE, related_name="hits")
    token = models.CharField(max_length=32, unique=True)
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=CrowdTaskKind.choices)
    role = models.CharField(max_length=16, choices=HitRole.choices, default=HitRole.TASK)
    unit = models.ForeignKey("analysis.Unit", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    extraction = models.ForeignKey(
        "analysis.LayerExtraction", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    grid = models.ForeignKey("analysis.RenderedGrid", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    label = models.CharField(max_length=DESCRIPTION_MAX_LENGTH, blank=True)
    label_origin = models.CharField(max_length=16, choices=LabelOrigin.choices, blank=True)
    validation_round = models.CharField(
        max_length=16,
        choices=ValidationRound.choices,
        blank=True,
        help_text="Validation HITs: the ND'18 round whose votes they give.",
    )
    label_concept = models.ForeignKey(
        "analysis.Concept", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    label_category = models.CharField(max_length=64, blank=True)
    unit_category = models.CharField(max_length=64, blank=True)
    source = models.JSONField(default=dict, blank=True)
    gold_answer = models.CharField(max_length=DESCRIPTION_MAX_LENGTH, blank=True)
    gold_explanation = models.CharField(max_length=300, blank=True)
    purity_k = models.PositiveIntegerField(null=True, blank=True, help_text="K of the 30% mass rule.")
    purity_shown = models.PositiveIntegerField(null=True, blank=True, help_text="Images shown (≤ K).")
    max_assignments = models.PositiveSmallIntegerField(default=3)
    assigned_count = models.PositiveSmallIntegerField(default=0)
    retired = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(role__in=["gold", "qualification"]) | Q(assigned_count__lte=F("max_assignments")),
                name="hit_within_capacity",
            ),
        ]
        indexes = [models.Index(fields=["study", "role", "position"])]

    def __str__(self) -> str:
        return f"{self.study} · {self.kind} HIT {self.pk}"


class CrowdAssignmentState(models.TextChoices):
    LEASED = "leased", "Leased"
    RETURNED = "returned", "Returned (or lease expired)"
    SUBMITTED = "submitted", "Submitted"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


SUBMITTED_STATES = (CrowdAssignmentState.SUBMITTED, CrowdAssignmentState.APPROVED)
"""Assignments whose answers count (rejected ones do not)."""
LIVE_STATES = (CrowdAssignmentState.LEASED, CrowdAssignmentState.SUBMITTED, CrowdAssignmentState.APPROVED)
"""Assignments that occupy one of a HIT's ``max_assignments`` places."""
REVIEWABLE_STATES = (CrowdAssignmentState.SUBMITTED, CrowdAssignmentState.APPROVED, CrowdAssignmentState.REJECTED)
"""Submitted work: what a researcher may approve or reject (again), and what a worker cannot submit twice."""


class CrowdAssignmentQuerySet(models.QuerySet):
    def answered(self):
        """Assignments whose answers count: submitted or approved."""
        return self.filter(state__in=SUBMITTED_STATES)

    def tasks(self):
        """Assignments of task HITs (not gold, not qualification)."""
        return self.filter(hit__role=HitRole.TASK)

    def human(self):
        """Assignments of real workers (not the simulated crowd)."""
        return self.filter(worker__simulated=False)


class CrowdAssignment(models.Model):
    """One worker's turn at one HIT (unique per HIT and worker: nobody sees a HIT twice, even after returning it).

    Lifecycle: leased (``lease_expires_at``) → returned (by the worker, or lazily when the lease expired) |
    submitted → approved | rejected (``reason``, ``reviewed_by``). Returned and rejected assignments free their
    place on the HIT. Answers by kind: validation ``answer`` ("yes"/"no"); description ``description`` +
    ``confidence`` (1–5) + ``pasted`` (the page saw a paste into the phrase field); purity ``count``.
    ``shown_at`` is when the page was first shown, ``seconds`` the time from then to submission.
    ``gold_correct`` is set for gold HITs. External hand-off: MTurk's ``external_assignment_id``,
    ``external_hit_id`` and ``submit_to`` (its ``turkSubmitTo``); Prolific's session id in ``external_session``.
    """

    hit = models.ForeignKey(Hit, on_delete=models.PROTECT, related_name="assignments")
    worker = models.ForeignKey(CrowdWorker, on_delete=models.PROTECT, related_name="assignments")
    token = models.CharField(max_length=32, unique=True)
    state = models.CharField(max_length=16, choices=CrowdAssignmentState.choices, default=CrowdAssignmentState.LEASED)
    leased_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    shown_at = models.DateTimeField(null=True, blank=True)
    returned_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True, help_text="Time on task: shown → submitted.")
    answer = models.CharField(max_length=8, blank=True, help_text="Validation: yes or no.")
    description = models.CharField(max_length=DESCRIPTION_MAX_LENGTH, blank=True)
    confidence = models.PositiveSmallIntegerField(null=True, blank=True)
    count = models.PositiveSmallIntegerField(null=True, blank=True)
    pasted = models.BooleanField(default=False)
    gold_correct = models.BooleanField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True, help_text="Why returned or rejected; review feedback.")
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    simulated = models.BooleanField(default=False)
    external_assignment_id = models.CharField(max_length=128, blank=True)
    external_hit_id = models.CharField(max_length=128, blank=True)
    external_session = models.CharField(max_length=128, blank=True)
    submit_to = models.URLField(max_length=300, blank=True)
    condition = models.CharField(max_length=16, blank=True, help_text="Forced choice: the condition shown.")
    client_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Forced choice: response time measured by the page (ms)."
    )

    objects = CrowdAssignmentQuerySet.as_manager()

    class Meta:
        ordering = ["leased_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["hit", "worker"], name="unique_crowd_assignment"),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | Q(confidence__gte=1, confidence__lte=5),
                name="crowd_confidence_1_5",
            ),
        ]
        indexes = [models.Index(fields=["worker", "state"]), models.Index(fields=["state", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"{self.worker} on HIT {self.hit_id}: {self.state}"


class QualificationAttempt(models.Model):
    """One try at a study's qualification test: the questions asked (HIT tokens), the answers, the score."""

    worker = models.ForeignKey(CrowdWorker, on_delete=models.CASCADE, related_name="qualification_attempts")
    visit = models.CharField(
        max_length=260,
        blank=True,
        default="",
        help_text="The platform visit (MTurk assignment, Prolific session) that took it; empty "
        "for own-link workers. A visit's failures never disqualify the worker id.",
    )
    questions = models.JSONField(default=list, help_text="Tokens of the qualification HITs asked, in order.")
    answers = models.JSONField(default=dict, blank=True, help_text="{token: answer}")
    correct = models.PositiveSmallIntegerField(default=0)
    total = models.PositiveSmallIntegerField(default=0)
    passed = models.BooleanField(null=True, blank=True, help_text="None while not submitted.")
    started_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["worker", "started_at", "id"]


class CrowdBonus(models.Model):
    """A bonus granted to a worker (optionally for one assignment), for the records (payment is external)."""

    worker = models.ForeignKey(CrowdWorker, on_delete=models.PROTECT, related_name="bonuses")
    assignment = models.ForeignKey(
        CrowdAssignment, null=True, blank=True, on_delete=models.PROTECT, related_name="bonuses"
    )
    amount_cents = models.PositiveIntegerField()
    reason = models.CharField(max_length=300)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]


# -- forced-choice psychophysics (issue 17) -------------------------------------------------------------------------

FORCED_CHOICE_QUESTION = "Which of the two images in the middle makes the unit respond strongly?"
"""Borowski et al. (ICLR 2021): pick the query image that strongly activates the feature map."""
FORCED_CHOICE_CONFIDENCE = (1, 2, 3)


class ForcedChoiceReference(models.Model):
    """A unit's reference images in one condition of a forced-choice study: the top (most activating) and bottom
    (least activating) sets as content-hash grids, with the dataset image indices and their activation ranks
    (1-based, from the top and from the bottom). The "none" condition has no row."""

    study = models.ForeignKey(CrowdStudy, on_delete=models.CASCADE, related_name="fc_references")
    unit = models.ForeignKey("analysis.Unit", on_delete=models.PROTECT, related_name="+")
    extraction = models.ForeignKey("analysis.LayerExtraction", on_delete=models.PROTECT, related_name="+")
    condition = models.CharField(max_length=16, choices=ForcedChoiceCondition.choices)
    top_grid = models.ForeignKey("analysis.RenderedGrid", on_delete=models.PROTECT, related_name="+")
    bottom_grid = models.ForeignKey("analysis.RenderedGrid", on_delete=models.PROTECT, related_name="+")
    top_images = models.JSONField()
    bottom_images = models.JSONField()
    top_ranks = models.JSONField()
    bottom_ranks = models.JSONField()

    class Meta:
        ordering = ["study", "unit", "condition"]
        constraints = [models.UniqueConstraint(fields=["study", "unit", "condition"], name="unique_fc_reference")]


class ForcedChoiceTrial(models.Model):
    """The server-side truth of one forced-choice HIT (never rendered): which of the two queries shown as
    "1" and "2" is the strong one (``strong_position``, randomised and balanced at planning), the queries'
    images, activation ranks (strong from the top, weak from the bottom), scores and content-hash pictures;
    ``condition`` (blank when conditions are assigned between workers); ``catch`` (the queries are references:
    an obvious answer; catch HITs are the study's gold items) and ``practice`` (practice trials with feedback,
    the study's qualification HITs); ``proxy_margin``: the machine proxy observer on the natural references
    (:func:`analysis.engine.psychophysics.proxy_observer`)."""

    hit = models.OneToOneField(Hit, on_delete=models.CASCADE, related_name="fc_trial")
    condition = models.CharField(max_length=16, choices=ForcedChoiceCondition.choices, blank=True)
    strong_position = models.PositiveSmallIntegerField()
    strong_image = models.PositiveIntegerField()
    weak_image = models.PositiveIntegerField()
    strong_rank = models.PositiveIntegerField()
    weak_rank = models.PositiveIntegerField()
    strong_score = models.FloatField()
    weak_score = models.FloatField()
    strong_grid = models.ForeignKey("analysis.RenderedGrid", on_delete=models.PROTECT, related_name="+")
    weak_grid = models.ForeignKey("analysis.RenderedGrid", on_delete=models.PROTECT, related_name="+")
    catch = models.BooleanField(default=False)
    practice = models.BooleanField(default=False)
    proxy_margin = models.FloatField(
        null=True,
        blank=True,
        help_text="The machine proxy observer's evidence for the "
        "strong query minus the weak one's (> 0: the proxy answers right).",
    )

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(strong_position__in=[1, 2]), name="fc_strong_position_1_2")]
