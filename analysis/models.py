"""The machine side's data: runs (jobs) now; datasets, networks, units and scores join them."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse


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
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="runs")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

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
    def kind_label(self) -> str:
        from .jobs import job_kind

        try:
            return job_kind(self.kind).label
        except KeyError:
            return self.kind


class DatasetKind(models.TextChoices):
    BRODEN = "broden", "Broden format"
    PASCAL_PART = "pascal_part", "PASCAL-Part"
    PROBE_WORLD = "probe_world", "Generated probe world"


class Dataset(models.Model):
    """A probe dataset in the Broden on-disk format (PASCAL-Part is converted to it on import)."""

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=DatasetKind.choices)
    root_dir = models.CharField(max_length=500, help_text="Absolute path of the Broden-format directory.")
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
    name = models.SlugField(max_length=100, unique=True)
    source = models.CharField(max_length=16, choices=NetworkSource.choices)
    arch = models.CharField(max_length=200, blank=True, help_text="torchvision name or module:callable.")
    weights_path = models.CharField(max_length=500, blank=True)
    weights_sha256 = models.CharField(max_length=64, blank=True)
    input_height = models.PositiveIntegerField(default=224)
    input_width = models.PositiveIntegerField(default=224)
    mean = models.JSONField(default=list)
    std = models.JSONField(default=list)
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

    class Meta:
        ordering = ["network", "order"]
        constraints = [models.UniqueConstraint(fields=["network", "name"], name="unique_layer_name")]

    def __str__(self) -> str:
        return f"{self.network.name}/{self.name}"

    def get_absolute_url(self) -> str:
        return reverse("analysis:layer_detail", args=[self.network.name, self.name])


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


class UnitActivationSummary(models.Model):
    """Per-unit figures of an extraction, for sorting and display."""

    extraction = models.ForeignKey(LayerExtraction, on_delete=models.CASCADE, related_name="unit_summaries")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="activation_summaries")
    threshold = models.FloatField(help_text="The per-unit top-quantile T_k of raw activations.")
    max_activation = models.FloatField()
    active_images = models.PositiveIntegerField(help_text="Images where the unit's map maximum exceeds 0.")

    class Meta:
        ordering = ["unit__index"]
        constraints = [models.UniqueConstraint(fields=["extraction", "unit"], name="unique_unit_summary")]


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
        return settings.MEDIA_URL + self.path


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
    extraction = models.ForeignKey(LayerExtraction, null=True, on_delete=models.SET_NULL, related_name="dissections",
                                   help_text="Whose cached maps and thresholds were used.")
    baseline = models.CharField(max_length=16, choices=DissectionBaseline.choices, default=DissectionBaseline.NONE)
    shuffle_seed = models.IntegerField(default=0)
    upsample = models.CharField(max_length=16, choices=UpsampleMethod.choices, default=UpsampleMethod.ANCHORED)
    quantile = models.FloatField()
    iou_threshold = models.FloatField()
    strict_threshold = models.BooleanField(default=False, help_text="Active when S_k > T_k (ND'18: S_k ≥ T_k).")
    count_saturated = models.BooleanField(default=False,
                                          help_text="Whether a unit active on every pixel may be a detector.")
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
    per_category = models.JSONField(default=dict, blank=True,
                                    help_text="{category: {detectors, unique, concepts}} in category order.")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = LayerDissectionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["layer", "dataset", "baseline", "complete"])]

    def __str__(self) -> str:
        return f"dissection of {self.layer} on {self.dataset} (run {self.run_id})"

    def get_absolute_url(self) -> str:
        return reverse("analysis:layer_dissection", args=[self.layer.network.name, self.layer.name]) + \
            f"?run={self.run_id}"

    @property
    def tally_path(self):
        from pathlib import Path

        return Path(self.directory) / "tally.npz"


class UnitDissection(models.Model):
    """A unit's result in one dissection: its label (top concept), IoU, detector flag, top concepts."""

    dissection = models.ForeignKey(LayerDissection, on_delete=models.CASCADE, related_name="unit_results")
    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="dissection_results")
    concept = models.ForeignKey(Concept, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                                help_text="The unit's label: its top concept (none when every IoU is 0).")
    iou = models.FloatField(default=0.0)
    is_detector = models.BooleanField(default=False)
    saturated = models.BooleanField(default=False, help_text="Active on every pixel of every image.")
    threshold = models.FloatField()
    active_pixels = models.BigIntegerField(default=0)
    top_concepts = models.JSONField(default=list, blank=True,
                                    help_text="[{number, name, category, iou}], best first, IoU > 0 only.")

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
    n_combination_wins = models.PositiveIntegerField(default=0,
                                                     help_text="Concepts whose combination IoU ≥ the best single.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Net2Vec of {self.layer} on {self.dataset} (run {self.run_id})"

    @property
    def combination_share(self) -> float | None:
        """Percent of concepts where the combination's val set IoU ≥ the best single filter's."""
        return 100.0 * self.n_combination_wins / self.n_concepts if self.n_concepts else None


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
    embedding = models.JSONField(default=list, help_text="The learned w, one float per unit.")
    bias = models.FloatField(default=0.0)

    class Meta:
        ordering = ["-train_images", "concept__number"]
        constraints = [models.UniqueConstraint(fields=["study", "concept"], name="unique_net2vec_concept")]

    @property
    def combination_wins(self) -> bool:
        return self.combination_val_iou >= self.single_val_iou
