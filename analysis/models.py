"""The machine side's data: runs (jobs) now; datasets, networks, units and scores join them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from .jobs import JobKind, job_kind


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class RunQuerySet(models.QuerySet):
    def active(self):
        """Runs that are queued or running."""
        return self.filter(status__in=ACTIVE_RUN_STATUSES)

    def finished(self):
        """Runs in a final state."""
        return self.exclude(status__in=ACTIVE_RUN_STATUSES)

    def succeeded(self):
        """Runs that finished successfully."""
        return self.filter(status=RunStatus.SUCCEEDED)

    def of_kind(self, kind: str):
        """Runs of one job kind."""
        return self.filter(kind=kind)


class Run(models.Model):
    """One job. The row exists before the job is queued and always ends in a final state."""

    kind = models.CharField(max_length=64, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    params_hash = models.CharField(max_length=64, db_index=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    queue = models.CharField(max_length=32, default="default")
    phase = models.CharField(max_length=200, blank=True)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(default=0)
    device = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True, help_text="A readable message for people.")
    error_detail = models.TextField(blank=True, help_text="The traceback, for developers.")
    result = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A queued run whose broker message went missing is sent again once (analysis.services.runs.run_recover_orphans).
    requeue_count = models.PositiveSmallIntegerField(default=0)
    requeued_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "params_hash", "status"])]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.kind}, {self.status})"

    def get_absolute_url(self) -> str:
        return reverse("analysis:run_detail", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    @property
    def percent(self) -> int:
        if self.status == RunStatus.SUCCEEDED:
            return 100
        if self.progress_total <= 0:
            return 0
        return max(0, min(100, int(100 * self.progress_done / self.progress_total)))

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        from django.utils import timezone

        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()

    @property
    def job_kind(self) -> JobKind | None:
        """The registered kind of this run (None for a kind no longer registered)."""
        try:
            return job_kind(self.kind)
        except KeyError:
            return None

    @property
    def kind_label(self) -> str:
        return self.job_kind.label if self.job_kind else self.kind


class WorkerHeartbeat(models.Model):
    """A Celery worker that is (or was) alive: written when it starts and every few seconds while it runs,
    deleted when it stops cleanly. A worker killed outright leaves its row, which then grows old."""

    hostname = models.CharField(max_length=255, unique=True, help_text="The worker's node name (name@host).")
    queues = models.CharField(max_length=255, help_text="The queues it consumes, comma-separated.")
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return f"{self.hostname} ({self.queues})"

    @property
    def queue_list(self) -> list[str]:
        return [queue for queue in self.queues.split(",") if queue]


class DatasetKind(models.TextChoices):
    BRODEN = "broden", "Broden format"
    PASCAL_PART = "pascal_part", "PASCAL-Part"
    PROBE_WORLD = "probe_world", "Generated probe world"


class Dataset(models.Model):
    """A probe dataset in the Broden on-disk format (PASCAL-Part is converted to it on import).

    ``root`` is the folder on this machine, fetched from the artifact store into the data dir when missing
    (:mod:`analysis.storage`): read files through it, never through ``root_dir``.
    """

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=DatasetKind.choices)
    root_dir = models.CharField(
        max_length=500,
        help_text="The Broden-format directory: its artifact key (under the "
        "data dir or in the object store) or an absolute path on a single machine.",
    )
    source_dir = models.CharField(max_length=500, blank=True, help_text="Where it was imported from.")
    description = models.TextField(blank=True)
    image_count = models.PositiveIntegerField(default=0)
    train_count = models.PositiveIntegerField(default=0)
    val_count = models.PositiveIntegerField(default=0)
    categories = models.JSONField(default=list, blank=True, help_text="Category names in index.csv order.")
    has_boxes = models.BooleanField(default=False)
    has_image_classes = models.BooleanField(default=False, help_text="One object class per image (classification).")
    params = models.JSONField(default=dict, blank=True)
    import_run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    @property
    def root(self):
        from analysis.storage import fetch

        return fetch(self.root_dir)

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("analysis:dataset_detail", args=[self.name])


class Concept(models.Model):
    """A label of a dataset (Broden's unified numbering), with its primary category and statistics."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="concepts")
    number = models.PositiveIntegerField(help_text="The unified label id (label.csv).")
    name = models.CharField(max_length=200)
    category = models.CharField(max_length=64, db_index=True, help_text="Primary category.")
    categories = models.JSONField(default=dict, blank=True, help_text="Every category with its image count.")
    image_count = models.PositiveIntegerField(default=0)
    pixel_count = models.BigIntegerField(default=0)
    coverage = models.FloatField(default=0.0, help_text="Mean fraction of an image's pixels, over its images.")

    class Meta:
        ordering = ["category", "name"]
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="unique_concept_number")]

    def __str__(self) -> str:
        return f"{self.name} ({self.category})"


class DatasetImage(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveIntegerField(help_text="Row number in index.csv, 0-based.")
    path = models.CharField(max_length=500, help_text="Relative to the dataset's images/ folder.")
    split = models.CharField(max_length=16, db_index=True)
    height = models.PositiveIntegerField()
    width = models.PositiveIntegerField()
    seg_height = models.PositiveIntegerField()
    seg_width = models.PositiveIntegerField()
    object_class = models.ForeignKey(Concept, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["dataset", "index"]
        constraints = [models.UniqueConstraint(fields=["dataset", "index"], name="unique_image_index")]

    def __str__(self) -> str:
        return self.path


class AnnotatedBox(models.Model):
    """An object or part instance box, in image pixels, (x1, y1, x2, y2) continuous coordinates."""

    class Kind(models.TextChoices):
        OBJECT = "object"
        PART = "part"

    image = models.ForeignKey(DatasetImage, on_delete=models.CASCADE, related_name="boxes")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    concept = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="boxes")
    instance = models.PositiveIntegerField(default=0)
    object_index = models.PositiveIntegerField(default=0, help_text="The object instance the box belongs to.")
    x1 = models.FloatField()
    y1 = models.FloatField()
    x2 = models.FloatField()
    y2 = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["concept", "kind"])]

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)


class NetworkSource(models.TextChoices):
    TORCHVISION = "torchvision", "torchvision architecture + weights file"
    TORCHSCRIPT = "torchscript", "TorchScript file"
    MODULE = "module", "Python callable (module:callable)"


class Network(models.Model):
    # unique: the registration claims its name by inserting this row first (two cannot both start)
    name = models.SlugField(max_length=100, unique=True)
    source = models.CharField(max_length=16, choices=NetworkSource.choices)
    arch = models.CharField(max_length=200, blank=True, help_text="torchvision name or module:callable.")
    weights_path = models.CharField(max_length=500, blank=True)
    weights_sha256 = models.CharField(max_length=64, blank=True)
    input_height = models.PositiveIntegerField(default=224)
    input_width = models.PositiveIntegerField(default=224)
    mean = models.JSONField(default=list)
    std = models.JSONField(default=list)
    channel_order = models.CharField(
        max_length=3,
        default="RGB",
        choices=[("RGB", "RGB"), ("BGR", "BGR")],
        help_text="Colour order the network reads; mean/std are in this order.",
    )
    class_names = models.JSONField(default=list, blank=True)
    callable_kwargs = models.JSONField(default=dict, blank=True)
    trained_on = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    training_run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    training_report = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("analysis:network_detail", args=[self.name])


class Layer(models.Model):
    """A layer by dotted module name, with its units and receptive-field geometry (input pixels)."""

    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="layers")
    name = models.CharField(max_length=200)
    order = models.PositiveIntegerField()
    module_type = models.CharField(max_length=100, blank=True)
    units = models.PositiveIntegerField()
    out_height = models.PositiveIntegerField()
    out_width = models.PositiveIntegerField()
    rf_size_y = models.FloatField(null=True, blank=True)
    rf_size_x = models.FloatField(null=True, blank=True)
    rf_stride_y = models.FloatField(null=True, blank=True)
    rf_stride_x = models.FloatField(null=True, blank=True)
    rf_offset_y = models.FloatField(null=True, blank=True)
    rf_offset_x = models.FloatField(null=True, blank=True)
    rf_verified = models.BooleanField(default=False, help_text="Analytic geometry equals the numeric probe.")
    rf_check = models.CharField(
        max_length=500, blank=True, help_text="What the numeric check sampled, or why it differs or was not run."
    )

    class Meta:
        ordering = ["network", "order"]
        constraints = [models.UniqueConstraint(fields=["network", "name"], name="unique_layer_name")]

    def __str__(self) -> str:
        return f"{self.network.name}/{self.name}"

    def get_absolute_url(self) -> str:
        return reverse("analysis:layer_detail", args=[self.network.name, self.name])

    @property
    def geometry(self):
        """The layer's receptive-field geometry as the engine's ``LayerGeometry`` (``(y, x)`` pairs, input pixels),
        or ``None`` when the model could not be traced. The one place the ``rf_*`` fields are read."""
        if None in (
            self.rf_size_y,
            self.rf_size_x,
            self.rf_stride_y,
            self.rf_stride_x,
            self.rf_offset_y,
            self.rf_offset_x,
        ):
            return None
        # receptive_field imports torch, which web processes that only list layers never need to load.
        from analysis.engine.receptive_field import LayerGeometry

        return LayerGeometry(
            size=(int(self.rf_size_y), int(self.rf_size_x)),
            stride=(int(self.rf_stride_y), int(self.rf_stride_x)),
            offset=(float(self.rf_offset_y), float(self.rf_offset_x)),
        )


class Unit(models.Model):
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="unit_set")
    index = models.PositiveIntegerField(help_text="0-based channel index.")

    class Meta:
        ordering = ["layer", "index"]
        constraints = [models.UniqueConstraint(fields=["layer", "index"], name="unique_unit_index")]

    def __str__(self) -> str:
        return f"{self.layer}#{self.index}"

    def get_absolute_url(self) -> str:
        return reverse("analysis:unit_detail", args=[self.layer.network.name, self.layer.name, self.index])


class LayerExtraction(models.Model):
    """One layer's activations over one dataset, gathered by an extraction run, and their statistics.

    The activation maps live in a float16 memory map under the data dir, keyed by everything that
    determines them (network weights, dataset, layer, preprocessing), so later runs reuse them.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="layer_extractions")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="extractions")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    cache_key = models.CharField(max_length=64, db_index=True)
    cache_path = models.CharField(max_length=500)
    stats_path = models.CharField(max_length=500)
    n_images = models.PositiveIntegerField()
    map_height = models.PositiveIntegerField()
    map_width = models.PositiveIntegerField()
    quantile = models.FloatField()
    k_overall = models.PositiveIntegerField()
    k_per_class = models.PositiveIntegerField()
    class_names = models.JSONField(default=list, blank=True, help_text="Object class of each class id.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["run", "layer"], name="unique_extraction_layer")]

    def __str__(self) -> str:
        return f"{self.layer} on {self.dataset} (run {self.run_id})"


class UnitStatus(models.TextChoices):
    """Whether a unit's activations can say anything (computed from its :class:`UnitActivationSummary`).

    ``dead``: its maximum over every image and position is ≤ 0, it never fires. ``saturated``: it fires, but
    so rarely that its dissection threshold T_k (the 0.995 quantile) is 0; under ND'18's ``S_k ≥ T_k`` its
    mask is then every pixel, so any IoU it gets measures the concept's coverage, not the unit. Both are
    shown as such, sorted last, and never labelled as detectors nor turned into annotation tasks by default.
    """

    LIVE = "live", "live"
    DEAD = "dead", "dead (never fires)"
    SATURATED = "saturated", "saturated at zero (T_k = 0)"


class UnitActivationSummaryQuerySet(models.QuerySet):
    def dead_q(self) -> models.Q:
        """Dead or saturated: the units whose activations cannot label them (see :class:`UnitStatus`)."""
        return models.Q(max_activation__lte=0) | models.Q(threshold=0)

    def with_status(self):
        """Each summary with ``status`` (a :class:`UnitStatus` value) and ``status_rank`` (0 live, 1 not)."""
        status = models.Case(
            models.When(max_activation__lte=0, then=models.Value(UnitStatus.DEAD.value)),
            models.When(threshold=0, then=models.Value(UnitStatus.SATURATED.value)),
            default=models.Value(UnitStatus.LIVE.value),
            output_field=models.CharField(),
        )
        rank = models.Case(
            models.When(self.dead_q(), then=models.Value(1)),
            default=models.Value(0),
            output_field=models.IntegerField(),
        )
        return self.annotate(status=status, status_rank=rank)

    def dead(self):
        """Dead or saturated units."""
        return self.filter(self.dead_q())

    def live(self):
        """Units that fire and have a positive threshold."""
        return self.exclude(self.dead_q())


class UnitActivationSummary(models.Model):
    """Per-unit figures of an extraction, for sorting and display."""

    extraction = models.ForeignKey(LayerExtraction, on_delete=models.CASCADE, related_name="unit_summaries")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="activation_summaries")
    threshold = models.FloatField(help_text="The per-unit top-quantile T_k of raw activations.")
    max_activation = models.FloatField()
    active_images = models.PositiveIntegerField(help_text="Images where the unit's map maximum exceeds 0.")
    ceiling_ties = models.PositiveIntegerField(
        default=0, help_text="Top images whose map maximum equals the unit's maximum (at most k_overall)."
    )
    saturated_at_ceiling = models.BooleanField(
        default=False,
        help_text="Threshold equals the maximum and several top images tie there (e.g. ReLU6 at 6): "
        "the top images are ordered by the map sum and masks are the saturated region.",
    )

    objects = UnitActivationSummaryQuerySet.as_manager()

    class Meta:
        ordering = ["unit__index"]
        constraints = [models.UniqueConstraint(fields=["extraction", "unit"], name="unique_unit_summary")]

    @property
    def unit_status(self) -> str:
        """The :class:`UnitStatus` value of this unit (the ``status`` annotation computes the same in SQL)."""
        return unit_status_of(max_activation=self.max_activation, threshold=self.threshold)

    @property
    def is_dead(self) -> bool:
        """Dead or saturated (see :class:`UnitStatus`)."""
        return self.unit_status != UnitStatus.LIVE


def unit_status_of(*, max_activation: float, threshold: float) -> str:
    """:class:`UnitStatus` value from a unit's maximum activation and its threshold T_k."""
    if max_activation <= 0:
        return UnitStatus.DEAD.value
    if threshold == 0:
        return UnitStatus.SATURATED.value
    return UnitStatus.LIVE.value


class RenderedGrid(models.Model):
    """A rendered exemplar grid, stored under its content hash: the name reveals nothing about it."""

    sha256 = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=200, help_text="Relative to MEDIA_ROOT.")
    style = models.CharField(max_length=32)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def url(self) -> str:
        """Where browsers fetch it: the media folder's URL, or the object store's (signed or public) URL."""
        from django.core.files.storage import FileSystemStorage, default_storage

        if isinstance(default_storage, FileSystemStorage):
            return settings.MEDIA_URL + self.path
        return default_storage.url(self.path)


class ExemplarKind(models.TextChoices):
    TOP_CLASS = "top_class", "Top 10 of one object class (GG'18)"
    TOP_OVERALL = "top_overall", "Top 15 overall, thresholded (ND'18)"
    DECILE = "decile", "One per decile (Net2Vec)"


class ExemplarSet(models.Model):
    """The images shown for a unit: top per class, top overall, or decile samples, with map peaks."""

    extraction = models.ForeignKey(LayerExtraction, on_delete=models.CASCADE, related_name="exemplar_sets")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="exemplar_sets")
    kind = models.CharField(max_length=16, choices=ExemplarKind.choices)
    object_class = models.ForeignKey(Concept, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    image_indices = models.JSONField(help_text="Dataset image indices, in display order.")
    scores = models.JSONField(help_text="The unit's map maximum on each image.")
    peaks = models.JSONField(help_text="(y, x) map position of each maximum.")
    grid = models.ForeignKey(RenderedGrid, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["unit__index", "kind", "object_class__name"]
        indexes = [models.Index(fields=["extraction", "unit", "kind"])]


# -- Network Dissection (ND'18 §2.2, §3.2) ----------------------------------------------------------


class DissectionBaseline(models.TextChoices):
    NONE = "none", "None (ND'18 dissection)"
    SHUFFLED = "shuffled", "Shuffled masks (null baseline)"


class UpsampleMethod(models.TextChoices):
    ANCHORED = "anchored", "Bilinear, anchored at receptive-field centres (ND'18)"
    PLAIN = "plain", "Plain bilinear resize (align_corners=False)"


class LayerDissectionQuerySet(models.QuerySet):
    def complete(self):
        """Dissections whose shards are merged and whose results are saved."""
        return self.filter(complete=True)

    def real(self):
        """Dissections without a null baseline (masks paired with their own images)."""
        return self.filter(baseline=DissectionBaseline.NONE)

    def newest_first(self):
        """Newest first."""
        return self.order_by("-created_at", "-id")


class LayerDissection(models.Model):
    """One Network Dissection of a layer over a dataset: summary figures here, full unit × concept counts in
    ``<directory>/tally.npz`` (int64 counts and float64 IoU), per-unit results in :class:`UnitDissection`.

    The row exists while shards are tallied (``complete`` False); the last shard to finish claims the merge
    with a conditional update of ``merge_claimed``.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="layer_dissections")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="dissections")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    extraction = models.ForeignKey(
        LayerExtraction,
        null=True,
        on_delete=models.SET_NULL,
        related_name="dissections",
        help_text="Whose cached maps and thresholds were used.",
    )
    baseline = models.CharField(max_length=16, choices=DissectionBaseline.choices, default=DissectionBaseline.NONE)
    shuffle_seed = models.IntegerField(default=0)
    upsample = models.CharField(max_length=16, choices=UpsampleMethod.choices, default=UpsampleMethod.ANCHORED)
    quantile = models.FloatField()
    iou_threshold = models.FloatField()
    strict_threshold = models.BooleanField(default=False, help_text="Active when S_k > T_k (ND'18: S_k ≥ T_k).")
    count_saturated = models.BooleanField(
        default=False, help_text="Whether a unit active on every pixel may be a detector."
    )
    categories = models.JSONField(default=list, help_text="Category names, in the tally's category order.")
    directory = models.CharField(max_length=500)
    shards = models.PositiveIntegerField(default=1)
    shards_done = models.PositiveIntegerField(default=0)
    merge_claimed = models.BooleanField(default=False)
    complete = models.BooleanField(default=False, db_index=True)
    n_images = models.PositiveIntegerField(default=0)
    mask_pixels = models.BigIntegerField(default=0, help_text="Mask pixels over all images.")
    n_units = models.PositiveIntegerField(default=0)
    n_detectors = models.PositiveIntegerField(default=0)
    n_unique_detectors = models.PositiveIntegerField(default=0)
    n_saturated = models.PositiveIntegerField(default=0, help_text="Units whose mask covers every pixel.")
    per_category = models.JSONField(
        default=dict, blank=True, help_text="{category: {detectors, unique, concepts}} in category order."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = LayerDissectionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["layer", "dataset", "baseline", "complete"])]

    def __str__(self) -> str:
        return f"dissection of {self.layer} on {self.dataset} (run {self.run_id})"

    def get_absolute_url(self) -> str:
        return (
            reverse("analysis:layer_dissection", args=[self.layer.network.name, self.layer.name])
            + f"?run={self.run_id}"
        )

    @property
    def tally_path(self):
        """``tally.npz`` on this machine, fetched from the artifact store when missing."""
        from analysis.storage import fetch

        return fetch(f"{self.directory}/tally.npz")


class UnitDissection(models.Model):
    """A unit's result in one dissection: its label (top concept), IoU, detector flag, top concepts."""

    dissection = models.ForeignKey(LayerDissection, on_delete=models.CASCADE, related_name="unit_results")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="dissection_results")
    concept = models.ForeignKey(
        Concept,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The unit's label: its top concept (none when every IoU is 0).",
    )
    iou = models.FloatField(default=0.0)
    is_detector = models.BooleanField(default=False)
    saturated = models.BooleanField(default=False, help_text="Active on every pixel of every image.")
    threshold = models.FloatField()
    active_pixels = models.BigIntegerField(default=0)
    top_concepts = models.JSONField(
        default=list, blank=True, help_text="[{number, name, category, iou}], best first, IoU > 0 only."
    )

    class Meta:
        ordering = ["unit__index"]
        constraints = [models.UniqueConstraint(fields=["dissection", "unit"], name="unique_unit_dissection")]
        indexes = [models.Index(fields=["dissection", "iou"]), models.Index(fields=["concept", "is_detector"])]


class RotationTest(models.Model):
    """ND'18 §3.2: unique detectors of a layer under random rotations ``Q^α`` of its units, per seed and α."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="rotation_tests")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="rotation_tests")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    extraction = models.ForeignKey(LayerExtraction, null=True, on_delete=models.SET_NULL, related_name="+")
    upsample = models.CharField(max_length=16, choices=UpsampleMethod.choices, default=UpsampleMethod.ANCHORED)
    quantile = models.FloatField()
    iou_threshold = models.FloatField()
    strict_threshold = models.BooleanField(default=False)
    count_saturated = models.BooleanField(default=False)
    alphas = models.JSONField(default=list)
    seeds = models.JSONField(default=list)
    categories = models.JSONField(default=list)
    points = models.JSONField(default=list, help_text="[{seed, alpha, detectors, unique, saturated, per_category}]")
    directory = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"rotation test of {self.layer} on {self.dataset} (run {self.run_id})"


class Net2VecStudy(models.Model):
    """Net2Vec (Fong & Vedaldi §3.1) on one layer: per concept, the best single filter vs a learned filter
    combination vs top-F subsets, by set IoU on the validation images (see analysis.engine.net2vec)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="net2vec_studies")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="net2vec_studies")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    extraction = models.ForeignKey(LayerExtraction, null=True, on_delete=models.SET_NULL, related_name="+")
    upsample = models.CharField(max_length=16, choices=UpsampleMethod.choices, default=UpsampleMethod.ANCHORED)
    quantile = models.FloatField()
    params = models.JSONField(default=dict, help_text="Training parameters (epochs, lr, pixels per image, seed...).")
    top_f = models.JSONField(default=list, help_text="Subset sizes F trained (those ≤ the layer's width).")
    n_concepts = models.PositiveIntegerField(default=0)
    n_combination_wins = models.PositiveIntegerField(
        default=0, help_text="Concepts whose combination IoU ≥ the best single."
    )
    classification_top_f = models.JSONField(default=list, help_text="Classification subset sizes F trained (§3.2.2).")
    n_classification_concepts = models.PositiveIntegerField(default=0)
    n_classification_wins = models.PositiveIntegerField(
        default=0, help_text="Concepts whose combination's balanced val accuracy ≥ the single filter's (F = 1)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Net2Vec of {self.layer} on {self.dataset} (run {self.run_id})"

    @property
    def combination_share(self) -> float | None:
        """Percent of concepts where the combination's val set IoU ≥ the best single filter's."""
        return 100.0 * self.n_combination_wins / self.n_concepts if self.n_concepts else None

    @property
    def classification_share(self) -> float | None:
        """Percent of concepts where the combination's balanced val accuracy ≥ the single filter's (Table 1)."""
        return (
            100.0 * self.n_classification_wins / self.n_classification_concepts
            if self.n_classification_concepts
            else None
        )


class Net2VecConcept(models.Model):
    """One concept's probes in a :class:`Net2VecStudy`; ``embedding`` is the learned weight vector w ∈ R^K."""

    study = models.ForeignKey(Net2VecStudy, on_delete=models.CASCADE, related_name="concept_results")
    concept = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="+")
    train_images = models.PositiveIntegerField()
    val_images = models.PositiveIntegerField()
    alpha = models.FloatField(help_text="Eq. 4's weight of positive pixels: 1 − positive fraction (train).")
    best_unit = models.PositiveIntegerField(help_text="0-based unit with the best train set IoU.")
    best_unit_train_iou = models.FloatField()
    single_val_iou = models.FloatField(help_text="Val set IoU of the best (by train) single filter.")
    combination_val_iou = models.FloatField()
    top_f_val_iou = models.JSONField(default=dict, help_text="{F: val set IoU of the retrained top-F probe}.")
    all_pixels_val_iou = models.FloatField(
        null=True, blank=True, help_text="Val set IoU of the trivial mask 'every pixel of the images with the concept'."
    )
    embedding = models.JSONField(default=list, help_text="The learned w, one float per unit.")
    bias = models.FloatField(default=0.0)
    exemplars = models.JSONField(
        default=dict,
        help_text="Non-extremal exemplars (§5.1, Figs. 7–8): {'single'|'combination': {rows, ious, "
        "images, zero, mean, std}}, one val image per decile of the non-zero IoU_ind.",
    )

    class Meta:
        ordering = ["-train_images", "concept__number"]
        constraints = [models.UniqueConstraint(fields=["study", "concept"], name="unique_net2vec_concept")]

    @property
    def combination_wins(self) -> bool:
        return self.combination_val_iou >= self.single_val_iou


class Net2VecClassification(models.Model):
    """One concept's image-level classifiers in a :class:`Net2VecStudy` (Fong & Vedaldi §3.2): a learned
    combination of all the layer's spatially averaged units vs the single unit of largest |w| (F = 1, retrained) vs
    top-F subsets, on the validation images; ``embedding`` is the combination's weight vector (§5.3)."""

    study = models.ForeignKey(Net2VecStudy, on_delete=models.CASCADE, related_name="classifications")
    concept = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="+")
    train_positives = models.PositiveIntegerField()
    train_negatives = models.PositiveIntegerField()
    val_positives = models.PositiveIntegerField()
    val_negatives = models.PositiveIntegerField()
    single_unit = models.PositiveIntegerField(help_text="0-based unit of largest |w| in the combination (F = 1).")
    single_val_accuracy = models.FloatField(help_text="Balanced val accuracy of the retrained single-unit classifier.")
    combination_val_accuracy = models.FloatField()
    single_val_ap = models.FloatField(help_text="Val average precision of the single-unit classifier.")
    combination_val_ap = models.FloatField()
    top_f_val_accuracy = models.JSONField(default=dict, help_text="{F: balanced val accuracy of the top-F classifier}.")
    top_f_val_ap = models.JSONField(default=dict, help_text="{F: val average precision of the top-F classifier}.")
    embedding = models.JSONField(default=list, help_text="Eq. 5's w on raw pooled activations (the embedding, §5.3).")
    standardized_weight = models.JSONField(
        default=list, help_text="The same classifier's w per standard deviation of each unit's input (training's)."
    )
    bias = models.FloatField(default=0.0, help_text="Eq. 5's b, with the raw w.")

    class Meta:
        ordering = ["-train_positives", "concept__number"]
        constraints = [models.UniqueConstraint(fields=["study", "concept"], name="unique_net2vec_classification")]

    @property
    def combination_wins(self) -> bool:
        return self.combination_val_accuracy >= self.single_val_accuracy


# -- Part detection and discriminativeness (GG'18 §3, §5–6) ------------------------------------------


class PartInputs(models.TextChoices):
    OBJECT_CROPS = "object_crops", "Object boxes with context, warped to the input (R-CNN style, GG'18)"
    WHOLE_IMAGES = "whole_images", "Whole images (the cached activations)"


class PartDetectionStudy(models.Model):
    """GG'18 §3: every filter of a layer as a detector of every part class (object-class × part), with box
    regression, NMS and VOC AP; GA filter combinations, TopFilters and all filters. Detections (after regression
    and NMS, image pixels) and ground truth live in ``<directory>/part-<k>.npz``."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="part_detection_studies")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="part_detection_studies")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    inputs = models.CharField(max_length=16, choices=PartInputs.choices, default=PartInputs.OBJECT_CROPS)
    split = models.CharField(max_length=16, default="train")
    params = models.JSONField(default=dict, help_text="Every parameter of the run (IoU, NMS, GA settings, ...).")
    directory = models.CharField(max_length=500, blank=True)
    n_parts = models.PositiveIntegerField(default=0)
    n_emerged = models.PositiveIntegerField(default=0, help_text="Parts whose GA AP exceeds the AP criterion.")
    n_emerged_above_prior = models.PositiveIntegerField(
        default=0, help_text="Parts whose GA AP exceeds the AP criterion and their location-prior floor."
    )
    n_covered = models.PositiveIntegerField(default=0, help_text="Parts whose GA recall exceeds the coverage one.")
    mean_prior_ap = models.FloatField(
        null=True, blank=True, help_text="Mean location-prior floor AP (none for studies made before it)."
    )
    mean_best_ap = models.FloatField(default=0.0)
    mean_ga_ap = models.FloatField(default=0.0)
    mean_top_ap = models.FloatField(default=0.0)
    mean_all_ap = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def nms_rule(self) -> str:
        """The NMS rule the study ran with, in words (studies made before the choice used IoU > nms_iou)."""
        if "nms_overlap" not in self.params:
            return f"IoU > {self.params.get('nms_iou', 0.3)}"
        measure = "IoU" if self.params["nms_overlap"] == "iou" else "intersection / suppressed box's area"
        return f"{measure} > {self.params['nms_threshold']}"

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"part detection of {self.layer} on {self.dataset} (run {self.run_id})"

    def get_absolute_url(self) -> str:
        return reverse("analysis:layer_parts", args=[self.layer.network.name, self.layer.name]) + f"?run={self.run_id}"


class PartDetectionResult(models.Model):
    """One part class in a :class:`PartDetectionStudy`: single filters, the GA combination, TopFilters, all."""

    study = models.ForeignKey(PartDetectionStudy, on_delete=models.CASCADE, related_name="part_results")
    position = models.PositiveIntegerField(help_text="The part's k in part-<k>.npz.")
    object_class = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="+")
    part = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=200, help_text="object-part, e.g. car-wheel.")
    n_views = models.PositiveIntegerField(help_text="Object crops (or images) evaluated.")
    n_instances = models.PositiveIntegerField(help_text="Ground-truth part boxes.")
    relative_size = models.FloatField(help_text="Mean part box area / mean object box area (GG'18 Fig. 3).")
    mean_size = models.FloatField(help_text="Mean of part box widths and heights, image pixels.")
    n_detections = models.PositiveIntegerField(default=0)
    best_filter = models.PositiveIntegerField()
    best_ap = models.FloatField()
    best_recall = models.FloatField()
    ga_filters = models.JSONField(default=list)
    ga_ap = models.FloatField()
    ga_recall = models.FloatField()
    ga_history = models.JSONField(default=list, help_text="Best fitness after each generation.")
    top_filters = models.JSONField(default=list)
    top_ap = models.FloatField()
    top_recall = models.FloatField()
    all_ap = models.FloatField()
    all_recall = models.FloatField()
    prior_ap = models.FloatField(null=True, blank=True, help_text="AP of the activation-blind location-prior floor.")
    prior_recall = models.FloatField(null=True, blank=True)
    single_ap = models.JSONField(default=list, help_text="AP of every filter alone, by filter index.")
    single_recall = models.JSONField(default=list)
    curves = models.JSONField(default=dict, help_text="{label: {recall: [...], precision: [...]}}.")

    class Meta:
        ordering = ["-ga_ap", "name"]
        constraints = [models.UniqueConstraint(fields=["study", "position"], name="unique_part_result")]

    def __str__(self) -> str:
        return self.name

    def emerges(self, threshold: float = 0.3) -> bool:
        return self.ga_ap > threshold

    def emerges_above_prior(self, threshold: float = 0.3) -> bool:
        """GG'18's AP criterion and, ours, above the location-prior floor (when the study measured it)."""
        return self.emerges(threshold) and (self.prior_ap is None or self.ga_ap > self.prior_ap)

    def covered(self, threshold: float = 0.5) -> bool:
        return self.ga_recall > threshold


class AblationStudy(models.Model):
    """GG'18 §5–6 on one layer: δ of every filter per object class, set ablations, and part blackouts."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="ablation_studies")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="ablation_studies")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    inputs = models.CharField(max_length=16, choices=PartInputs.choices, default=PartInputs.OBJECT_CROPS)
    split = models.CharField(max_length=16, default="train")
    score = models.CharField(max_length=16, default="softmax", help_text="softmax probability or logit.")
    sigma_factor = models.FloatField(default=2.0)
    params = models.JSONField(default=dict)
    n_classes = models.PositiveIntegerField(default=0)
    mean_discriminative = models.FloatField(default=0.0, help_text="Discriminative filters per class, on average.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"ablations of {self.layer} on {self.dataset} (run {self.run_id})"

    def get_absolute_url(self) -> str:
        return (
            reverse("analysis:layer_ablation", args=[self.layer.network.name, self.layer.name]) + f"?run={self.run_id}"
        )


class ClassDiscriminativeness(models.Model):
    """δ_j of every filter for one object class (GG'18 eq. 3, Fig. 10a) and the set ablations."""

    study = models.ForeignKey(AblationStudy, on_delete=models.CASCADE, related_name="class_results")
    object_class = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="+")
    n_images = models.PositiveIntegerField()
    mean_score = models.FloatField(help_text="Mean class score with every filter.")
    deltas = models.JSONField(help_text="δ_j by filter index.")
    sigma = models.FloatField()
    discriminative = models.JSONField(default=list, help_text="Filters with δ_j > k σ, by decreasing δ.")
    delta_discriminative_set = models.FloatField(null=True, blank=True)
    delta_other_set = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["object_class__name"]
        constraints = [models.UniqueConstraint(fields=["study", "object_class"], name="unique_class_delta")]

    @property
    def threshold(self) -> float:
        return self.study.sigma_factor * self.sigma


class PartDiscriminativeness(models.Model):
    """δ of blacking out one part class (GG'18 §6, Fig. 14) and its relative size."""

    study = models.ForeignKey(AblationStudy, on_delete=models.CASCADE, related_name="part_results")
    object_class = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="+")
    part = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=200)
    n_images = models.PositiveIntegerField()
    delta = models.FloatField()
    relative_size = models.FloatField()

    class Meta:
        ordering = ["-delta", "name"]
        constraints = [models.UniqueConstraint(fields=["study", "object_class", "part"], name="unique_part_delta")]


# -- Explanatory graph (Zhang et al. AAAI'18) ---------------------------------------------------------


class ExplanatoryGraph(models.Model):
    """An explanatory graph learned over some conv layers of a network (see analysis.engine.explanatory_graph and
    analysis.services.explanatory_graph): one per object ``category`` (AAAI'18), a run learning one per category
    of its dataset by default.

    The graph's ``n_images`` inputs are object crops of its category or whole images (``inputs``); ``views.npz``
    in ``directory`` (``UNITSCOPE_DATA_DIR/explanatory_graphs/<run id>/<graph>/``) names each input's dataset image,
    object and frame (the image region warped to the network input). Per layer ``<layer>.npz`` (μ, σ², edges,
    normaliser, masses, log-likelihoods), the inference of every node on every input, ``<layer>-units.i32`` and
    ``<layer>-scores.f32`` (memory maps ``[inputs, nodes]``), and for crops the maps the graph read,
    ``<layer>-maps.f16``. ``layers`` lists the layer names top first; positions in rows are in network-input
    pixels. Graphs made before per-category graphs have no ``views.npz``: their inputs are the dataset's images.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="explanatory_graphs")
    network = models.ForeignKey(Network, on_delete=models.CASCADE, related_name="explanatory_graphs")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    layers = models.JSONField(default=list, help_text="Layer names, top layer first.")
    extraction_runs = models.JSONField(default=dict, help_text="{layer: extraction run id} whose cache was read.")
    params = models.JSONField(default=dict)
    category = models.CharField(
        max_length=100,
        blank=True,
        help_text="The object category whose inputs the graph learned from; blank: one graph pooled over every "
        "category (or every image).",
    )
    inputs = models.CharField(
        max_length=16,
        choices=PartInputs.choices,
        default=PartInputs.OBJECT_CROPS,
        help_text="Object crops of the category (the paper's) or whole images.",
    )
    directory = models.CharField(max_length=500)
    n_images = models.PositiveIntegerField(
        default=0, help_text="Inputs (object crops or images) every node was inferred on: the rows of its arrays."
    )
    n_learn_images = models.PositiveIntegerField(default=0, help_text="Inputs the graph learned from.")
    n_nodes = models.PositiveIntegerField(default=0)
    n_edges = models.PositiveIntegerField(default=0)
    plane_unit = models.FloatField(default=1.0, help_text="Input pixels per plane unit (the input's longer side).")
    landmarks = models.JSONField(default=list, help_text="Part names whose box centres are the landmarks.")
    instability = models.JSONField(
        default=dict,
        help_text="{layer: {nodes, filters, node_patterns, filter_patterns}}: "
        "mean location instability over the top patterns.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["run", "category"], name="unique_graph_category")]

    def __str__(self) -> str:
        return f"explanatory graph of {self.network} on {self.dataset}, {self.scope} (run {self.run_id})"

    @property
    def scope(self) -> str:
        """What the graph describes, for labels: its category and inputs."""
        what = self.category or "every category"
        return f"{what}, {'object crops' if self.inputs == PartInputs.OBJECT_CROPS else 'whole images'}"

    def get_absolute_url(self) -> str:
        return reverse("analysis:graph_detail", args=[self.pk])


class GraphNode(models.Model):
    """A node V of an explanatory graph: a part pattern of one filter. ``mu_x, mu_y`` (prior position μ_V) and
    ``sigma`` in network-input pixels; ``score_total`` = Σ_I S_V^I over all images; ``flat`` = filter · N + node."""

    graph = models.ForeignKey(ExplanatoryGraph, on_delete=models.CASCADE, related_name="nodes")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="+")
    level = models.PositiveSmallIntegerField(help_text="0 = the top graph layer.")
    filter = models.PositiveIntegerField()
    node = models.PositiveIntegerField(help_text="Index among the filter's nodes.")
    flat = models.PositiveIntegerField(help_text="Column of the node in the layer's inference arrays.")
    mu_x = models.FloatField()
    mu_y = models.FloatField()
    sigma = models.FloatField(help_text="Variation of the inferred position (input pixels).")
    mass = models.FloatField(default=0.0, help_text="Share of the filter's activation entities it explains.")
    score_total = models.FloatField(default=0.0)
    rank = models.PositiveIntegerField(default=0, help_text="1 = highest score_total in its layer.")

    class Meta:
        ordering = ["level", "rank"]
        constraints = [models.UniqueConstraint(fields=["graph", "layer", "flat"], name="unique_graph_node")]
        indexes = [models.Index(fields=["graph", "level", "rank"]), models.Index(fields=["graph", "layer", "filter"])]

    def __str__(self) -> str:
        return f"{self.layer.name} filter {self.filter} node {self.node}"

    def get_absolute_url(self) -> str:
        return reverse("analysis:graph_node", args=[self.graph_id, self.pk])


class GraphEdge(models.Model):
    """``parent ∈ E_child``: a node's neighbour in the upper layer; ``dx, dy`` = μ_child − μ_parent (input pixels)."""

    graph = models.ForeignKey(ExplanatoryGraph, on_delete=models.CASCADE, related_name="edges")
    child = models.ForeignKey(GraphNode, on_delete=models.CASCADE, related_name="parent_edges")
    parent = models.ForeignKey(GraphNode, on_delete=models.CASCADE, related_name="child_edges")
    order = models.PositiveSmallIntegerField(help_text="0 = the best neighbour by expected log-likelihood.")
    dx = models.FloatField()
    dy = models.FloatField()

    class Meta:
        ordering = ["child", "order"]
        constraints = [models.UniqueConstraint(fields=["child", "parent"], name="unique_graph_edge")]


class GraphInstability(models.Model):
    """Location instability (AAAI'18 Table 1) of one pattern: a graph node or a raw filter (the baseline).
    Rows exist for the top patterns of each layer that enter the mean."""

    class Kind(models.TextChoices):
        NODE = "node", "Graph node"
        FILTER = "filter", "Raw filter"

    graph = models.ForeignKey(ExplanatoryGraph, on_delete=models.CASCADE, related_name="instabilities")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    filter = models.PositiveIntegerField()
    node = models.ForeignKey(GraphNode, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    rank = models.PositiveIntegerField(help_text="Rank by total score (nodes) or total peak activation (filters).")
    instability = models.FloatField(null=True, blank=True)
    per_landmark = models.JSONField(default=dict, help_text="{part: std of the normalised distance}.")

    class Meta:
        ordering = ["kind", "rank"]
        indexes = [models.Index(fields=["graph", "layer", "kind"])]
