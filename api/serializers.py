"""What the API reads and writes. Reads are plain model fields; writes are validated here and then handed to the
services that the site uses (``run_start``, whose job kind's schema checks the parameters, ``judgments_import``)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from analysis.jobs import JobKind, job_kinds
from analysis.models import Concept, Dataset, Layer, Network, Run, Unit
from annotation.expert.exports import JUDGMENT_FIELDS
from annotation.models import CrowdStudy, Study, StudyTask

JUDGMENT_IMPORT_MAX_BYTES = 5 * 1024 * 1024
"""The largest judgments file the API accepts (5 MiB ≈ 100,000 rows)."""
JUDGMENT_IMPORT_TYPES = ("text/csv", "text/plain", "application/csv", "application/vnd.ms-excel")
JUDGMENT_IMPORT_SUFFIXES = (".csv", ".txt")


def api_startable_kinds() -> list[JobKind]:
    """The job kinds a researcher may start through the API (the registry's ``api_startable`` ones), by name."""
    return sorted((kind for kind in job_kinds() if kind.api_startable), key=lambda kind: kind.name)


# -- the machine side -----------------------------------------------------------------------------------


class NetworkSerializer(serializers.ModelSerializer):
    layer_count = serializers.IntegerField(read_only=True)
    trained_on = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Network
        fields = [
            "id",
            "name",
            "source",
            "arch",
            "weights_sha256",
            "input_height",
            "input_width",
            "mean",
            "std",
            "channel_order",
            "class_names",
            "callable_kwargs",
            "trained_on",
            "description",
            "created_at",
            "layer_count",
        ]


class DatasetSerializer(serializers.ModelSerializer):
    concept_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "kind",
            "description",
            "image_count",
            "train_count",
            "val_count",
            "categories",
            "has_boxes",
            "has_image_classes",
            "created_at",
            "concept_count",
        ]


class ConceptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Concept
        fields = ["id", "number", "name", "category", "categories", "image_count", "pixel_count", "coverage"]


class LayerSerializer(serializers.ModelSerializer):
    network = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Layer
        fields = [
            "id",
            "network",
            "name",
            "order",
            "module_type",
            "units",
            "out_height",
            "out_width",
            "rf_size_y",
            "rf_size_x",
            "rf_stride_y",
            "rf_stride_x",
            "rf_offset_y",
            "rf_offset_x",
            "rf_verified",
            "rf_check",
        ]


class UnitSerializer(serializers.ModelSerializer):
    network = serializers.CharField(source="layer.network.name", read_only=True)
    layer_name = serializers.CharField(source="layer.name", read_only=True)

    class Meta:
        model = Unit
        fields = ["id", "layer", "network", "layer_name", "index"]


class UnitDetailSerializer(UnitSerializer):
    """A unit with its newest extraction's figures and grids, and its newest dissection result."""

    activation = serializers.SerializerMethodField()
    exemplars = serializers.SerializerMethodField()
    dissection = serializers.SerializerMethodField()

    class Meta(UnitSerializer.Meta):
        fields = UnitSerializer.Meta.fields + ["activation", "exemplars", "dissection"]

    def _extraction(self, unit):
        from analysis.selectors import latest_extraction

        if not hasattr(self, "_extraction_cache"):
            self._extraction_cache = latest_extraction(unit.layer)
        return self._extraction_cache

    def get_activation(self, unit) -> dict[str, Any] | None:
        extraction = self._extraction(unit)
        summary = extraction and extraction.unit_summaries.filter(unit=unit).first()
        if not summary:
            return None
        return {
            "extraction_run": extraction.run_id,
            "dataset": extraction.dataset.name,
            "threshold": summary.threshold,
            "max_activation": summary.max_activation,
            "active_images": summary.active_images,
            "quantile": extraction.quantile,
        }

    def get_exemplars(self, unit) -> list[dict[str, Any]]:
        extraction = self._extraction(unit)
        if extraction is None:
            return []
        sets = extraction.exemplar_sets.filter(unit=unit).select_related("grid", "object_class")
        return [
            {
                "kind": s.kind,
                "object_class": s.object_class.name if s.object_class_id else None,
                "image_indices": s.image_indices,
                "scores": s.scores,
                "grid_url": s.grid.url if s.grid_id else None,
                "grid_sha256": s.grid.sha256 if s.grid_id else None,
            }
            for s in sets
        ]

    def get_dissection(self, unit) -> dict[str, Any] | None:
        from analysis.selectors import unit_dissection_result

        result = unit_dissection_result(unit)
        if result is None:
            return None
        return {
            "dissection_run": result.dissection.run_id,
            "dataset": result.dissection.dataset.name,
            "label": result.concept.name if result.concept_id else None,
            "category": result.concept.category if result.concept_id else None,
            "iou": result.iou,
            "is_detector": result.is_detector,
            "saturated": result.saturated,
            "threshold": result.threshold,
            "top_concepts": result.top_concepts,
        }


class RunSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    percent = serializers.IntegerField(read_only=True)
    worker_state = serializers.SerializerMethodField(
        help_text="running (a worker has it), waiting (queued; a worker of its queue is alive or starting), "
        "no_worker (queued, and no worker of its queue is alive), or empty once finished."
    )
    worker_message = serializers.SerializerMethodField(
        help_text="What the run waits on, in words; with no_worker, the command that starts a worker."
    )

    class Meta:
        model = Run
        fields = [
            "id",
            "kind",
            "status",
            "phase",
            "progress_done",
            "progress_total",
            "percent",
            "params",
            "queue",
            "device",
            "worker",
            "worker_state",
            "worker_message",
            "error",
            "result",
            "created_by",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "requeue_count",
        ]

    def _worker_state(self, run: Run):
        from analysis.selectors import queues_liveness, run_worker_state

        if "queues_liveness" not in self.context:  # one query per response, however many runs it lists
            self.context["queues_liveness"] = queues_liveness()
        return run_worker_state(run, liveness=self.context["queues_liveness"])

    def get_worker_state(self, run: Run) -> str:
        return self._worker_state(run).state

    def get_worker_message(self, run: Run) -> str:
        return self._worker_state(run).message


class RunStartSerializer(serializers.Serializer):
    """A run to start: its kind (one the API starts, from the job registry) and the kind's parameters, which the
    kind's schema (:mod:`analysis.params`) checks in :func:`~analysis.services.runs.run_start`."""

    kind = serializers.ChoiceField(choices=[], help_text="A job kind: see the description of this endpoint.")
    params = serializers.DictField(required=False, default=dict, help_text="The kind's parameters.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [kind.name for kind in api_startable_kinds()]


# -- the human side -------------------------------------------------------------------------------------


class StudySerializer(serializers.ModelSerializer):
    network = serializers.SerializerMethodField()
    layer_name = serializers.SerializerMethodField()
    dataset = serializers.SerializerMethodField()
    object_classes = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    overlap_class = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    task_count = serializers.IntegerField(read_only=True)
    rater_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Study
        fields = [
            "id",
            "name",
            "kind",
            "plan",
            "layer",
            "network",
            "layer_name",
            "dataset",
            "extraction",
            "object_classes",
            "overlap_class",
            "raters_per_task",
            "claim_hours",
            "suggest_given_names",
            "instructions",
            "seed",
            "description",
            "created_by",
            "created_at",
            "task_count",
            "rater_count",
        ]

    def get_network(self, study) -> str | None:
        return study.layer.network.name if study.layer_id else None

    def get_layer_name(self, study) -> str | None:
        return study.layer.name if study.layer_id else None

    def get_dataset(self, study) -> str | None:
        return study.extraction.dataset.name if study.extraction_id else None


class CrowdStudySerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    hit_count = serializers.IntegerField(read_only=True)
    worker_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = CrowdStudy
        fields = [
            "id",
            "name",
            "kind",
            "description",
            "assignments_per_hit",
            "lease_seconds",
            "gold_rate",
            "qualification_required",
            "overlap_rule",
            "purity_mass",
            "hits_per_session",
            "reward_cents",
            "seed",
            "is_open",
            "created_by",
            "created_at",
            "hit_count",
            "worker_count",
        ]


class TaskSerializer(serializers.ModelSerializer):
    unit_index = serializers.IntegerField(source="unit.index", read_only=True, allow_null=True, default=None)
    object_class = serializers.SlugRelatedField(slug_field="name", read_only=True)
    owner = serializers.SlugRelatedField(slug_field="name", read_only=True)
    grid_url = serializers.SerializerMethodField()
    grid_sha256 = serializers.SerializerMethodField()

    class Meta:
        model = StudyTask
        fields = [
            "id",
            "study",
            "position",
            "item",
            "unit",
            "unit_index",
            "object_class",
            "exemplar_set",
            "grid_url",
            "grid_sha256",
            "owner",
            "capacity",
            "assigned_count",
        ]

    def get_grid_url(self, task) -> str | None:
        grid = task.exemplar_set.grid if task.exemplar_set_id else None
        return grid.url if grid else None

    def get_grid_sha256(self, task) -> str | None:
        grid = task.exemplar_set.grid if task.exemplar_set_id else None
        return grid.sha256 if grid else None


class JudgmentSerializer(serializers.Serializer):
    """One judgment with its full provenance (see :mod:`annotation.expert.exports`)."""

    judgment = serializers.IntegerField()
    study = serializers.IntegerField()
    task = serializers.IntegerField()
    item = serializers.CharField()
    unit = serializers.IntegerField(allow_null=True)
    object_class = serializers.CharField(allow_null=True)
    exemplar_set = serializers.IntegerField(allow_null=True)
    grid_sha256 = serializers.CharField(allow_null=True)
    grid_style = serializers.CharField(allow_null=True)
    rater = serializers.CharField(help_text="The rater's name in the study.")
    rater_id = serializers.IntegerField()
    rater_kind = serializers.CharField()
    user = serializers.IntegerField(allow_null=True)
    adapter = serializers.CharField(
        help_text="How the judgment came in: web (the annotation page), simulated, imported."
    )
    answer = serializers.CharField()
    concept = serializers.CharField(allow_blank=True)
    started_at = serializers.DateTimeField(allow_null=True)
    submitted_at = serializers.DateTimeField()
    seconds = serializers.FloatField(allow_null=True)
    simulated = serializers.BooleanField()
    source_line = serializers.IntegerField(allow_null=True)
    revision_of = serializers.IntegerField(allow_null=True)
    revised_by = serializers.IntegerField(allow_null=True)
    version = serializers.IntegerField()
    chain_first = serializers.IntegerField()
    current = serializers.BooleanField()

    def to_representation(self, instance):
        return {field: instance[field] for field in JUDGMENT_FIELDS}


class JudgmentImportSerializer(serializers.Serializer):
    """A CSV of judgments (``item,rater,answer[,concept]``) as text or as an uploaded file."""

    study = serializers.CharField(max_length=200, help_text="The imported study's name (created if absent).")
    csv = serializers.CharField(
        required=False,
        allow_blank=False,
        max_length=JUDGMENT_IMPORT_MAX_BYTES,
        trim_whitespace=False,
        help_text="The CSV text.",
    )
    file = serializers.FileField(required=False, help_text="Or the CSV as a file upload (UTF-8, at most 5 MiB).")

    def validate_file(self, upload):
        name = (upload.name or "").lower()
        if not name.endswith(JUDGMENT_IMPORT_SUFFIXES):
            raise serializers.ValidationError("Upload a .csv (or .txt) file.")
        content_type = (getattr(upload, "content_type", "") or "").split(";")[0].strip().lower()
        if content_type and content_type not in JUDGMENT_IMPORT_TYPES:
            raise serializers.ValidationError(f"A CSV file is text/csv, not {content_type}.")
        if upload.size > JUDGMENT_IMPORT_MAX_BYTES:
            raise serializers.ValidationError(
                f"The file is larger than {JUDGMENT_IMPORT_MAX_BYTES // 1024 // 1024} MiB."
            )
        raw = upload.read(JUDGMENT_IMPORT_MAX_BYTES + 1)
        if b"\x00" in raw:
            raise serializers.ValidationError("This is a binary file, not CSV text.")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise serializers.ValidationError("The file is not UTF-8 text.") from None

    def validate(self, attrs):
        if bool(attrs.get("csv")) == bool(attrs.get("file")):
            raise serializers.ValidationError("Send the judgments either as csv text or as a file, not both.")
        attrs["text"] = attrs.pop("csv", None) or attrs.pop("file")
        if "\x00" in attrs["text"]:
            raise serializers.ValidationError({"csv": "NUL characters are not allowed."})
        return attrs


class ImportResultSerializer(serializers.Serializer):
    study = serializers.CharField()
    study_id = serializers.IntegerField()
    created_study = serializers.BooleanField()
    rows = serializers.IntegerField()
    items = serializers.IntegerField()
    raters = serializers.IntegerField()
    created = serializers.IntegerField()
    revised = serializers.IntegerField()
    unchanged = serializers.IntegerField()
