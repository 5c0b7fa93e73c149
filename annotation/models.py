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
    extraction = models.ForeignKey("analysis.LayerExtraction", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+", help_text="Whose top-10 grids the tasks show.")
    object_classes = models.ManyToManyField("analysis.Concept", blank=True, related_name="+")
    overlap_class = models.ForeignKey("analysis.Concept", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="+", help_text="Paper plan: the class every expert does.")
    plan = models.CharField(max_length=16, choices=StudyPlan.choices, default=StudyPlan.PAPER)
    raters_per_task = models.PositiveSmallIntegerField(default=2, help_text="For the N-raters plan.")
    instructions = models.TextField(default=DEFAULT_INSTRUCTIONS)
    seed = models.IntegerField(default=0, help_text="Orders the units within each class.")
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
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
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                             related_name="study_raters")
    name = models.CharField(max_length=150)
    params = models.JSONField(default=dict, blank=True, help_text="Simulated raters: error rate and seed.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["study", "name"], name="unique_rater_name"),
            models.UniqueConstraint(fields=["study", "user"], condition=Q(user__isnull=False),
                                    name="unique_rater_user"),
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
    object_class = models.ForeignKey("analysis.Concept", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    exemplar_set = models.ForeignKey("analysis.ExemplarSet", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
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
        constraints = [models.UniqueConstraint(fields=["task", "rater"], name="unique_assignment")]


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
    revision_of = models.OneToOneField("self", null=True, blank=True, on_delete=models.PROTECT,
                                       related_name="revision")
    simulated = models.BooleanField(default=False, db_index=True)
    origin = models.CharField(max_length=16, choices=JudgmentOrigin.choices, default=JudgmentOrigin.WEB)
    grid = models.ForeignKey("analysis.RenderedGrid", null=True, blank=True, on_delete=models.PROTECT,
                             related_name="+", help_text="The grid shown (the task's version).")
    source_line = models.PositiveIntegerField(null=True, blank=True, help_text="Imported: the file's line.")

    objects = JudgmentQuerySet.as_manager()

    class Meta:
        ordering = ["submitted_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "rater"], condition=Q(revision_of__isnull=True),
                                    name="one_first_judgment_per_rater"),
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
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "name"]
        constraints = [models.UniqueConstraint(fields=["study", "name"], name="unique_study_synonym")]

    def __str__(self) -> str:
        return f"{self.name} → {self.maps_to}"
