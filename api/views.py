"""The researchers' REST API: thin views over the selectors, exports and services the site uses."""

from __future__ import annotations

from django.db.models import Count
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from analysis import selectors as analysis_selectors
from analysis.jobs import job_kind
from analysis.models import Layer, Unit
from analysis.services.runs import RunInputError, run_cancel, run_check_references, run_start, runs_reconcile
from annotation.common import SIMULATED_CHOICES, attachment_response
from annotation.crowd import exports as crowd_exports
from annotation.crowd import forced_choice_report
from annotation.expert import exports as study_exports
from annotation.expert.services import StudyInputError, judgments_import
from annotation.models import CrowdStudy, CrowdTaskKind, Judgment, StudyTask

from . import serializers as s
from .permissions import StudyObjectPermission, studies_visible_to, study_writable_by

SIMULATED_PARAMETER = OpenApiParameter(
    "simulated",
    str,
    enum=list(SIMULATED_CHOICES),
    default="exclude",
    description="Simulated raters: left out (exclude), added (include), or alone (only).",
)


def _simulated(request) -> str:
    value = request.query_params.get("simulated", "exclude")
    if value not in SIMULATED_CHOICES:
        raise ValidationError({"simulated": f"One of {', '.join(SIMULATED_CHOICES)}."})
    return value


def _int_param(request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValidationError({name: "An integer id."}) from None
    if not 0 < number < 2**63:
        raise ValidationError({name: "An integer id."})
    return number


# -- the machine side -----------------------------------------------------------------------------------


class NetworkViewSet(viewsets.ReadOnlyModelViewSet):
    """Registered networks (by name)."""

    serializer_class = s.NetworkSerializer
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"
    queryset = analysis_selectors.networks_for_list().order_by("name")


class DatasetViewSet(viewsets.ReadOnlyModelViewSet):
    """Probe datasets (by name); ``/concepts/`` lists a dataset's concepts."""

    serializer_class = s.DatasetSerializer
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"
    queryset = analysis_selectors.datasets_for_list().order_by("name")

    @extend_schema(
        responses=s.ConceptSerializer(many=True),
        parameters=[OpenApiParameter("category", str, description="Only this primary category.")],
    )
    @action(detail=True, methods=["get"])
    def concepts(self, request, name=None):
        dataset = self.get_object()
        concepts = dataset.concepts.order_by("number")
        if request.query_params.get("category"):
            concepts = concepts.filter(category=request.query_params["category"])
        page = self.paginate_queryset(concepts)
        return self.get_paginated_response(s.ConceptSerializer(page, many=True).data)


@extend_schema(parameters=[OpenApiParameter("network", str, description="Only this network's layers (by name).")])
class LayerViewSet(viewsets.ReadOnlyModelViewSet):
    """Layers of registered networks, in network order."""

    serializer_class = s.LayerSerializer

    def get_queryset(self):
        layers = Layer.objects.select_related("network").order_by("network__name", "order")
        if self.request.query_params.get("network"):
            layers = layers.filter(network__name=self.request.query_params["network"])
        return layers


@extend_schema(
    parameters=[
        OpenApiParameter("layer", int, description="Only this layer's units (layer id)."),
        OpenApiParameter("network", str, description="Only this network's units (by name)."),
    ]
)
class UnitViewSet(viewsets.ReadOnlyModelViewSet):
    """Units; one unit carries its activation figures, exemplar grids and newest dissection result."""

    def get_serializer_class(self):
        return s.UnitDetailSerializer if self.action == "retrieve" else s.UnitSerializer

    def get_queryset(self):
        units = Unit.objects.select_related("layer__network").order_by("layer__network__name", "layer__order", "index")
        layer = _int_param(self.request, "layer")
        if layer is not None:
            units = units.filter(layer_id=layer)
        if self.request.query_params.get("network"):
            units = units.filter(layer__network__name=self.request.query_params["network"])
        return units


def run_start_description() -> str:
    """The documentation of ``POST /api/runs/``: every kind the API starts, with its parameters, from the job
    registry (each kind's schema)."""
    lines = [
        "Start a run (or get the identical one already queued, running or finished: 200 instead of 201). "
        "`kind` is one of the kinds below; `params` are that kind's parameters, the same as on its start page "
        "and command. Missing required parameters, unknown parameters, values of the wrong type, out of range "
        "or not among the choices are refused with 400 naming the parameter (`params.<name>`), as are networks, "
        "datasets, layers and extraction runs that do not exist."
    ]
    for kind in s.api_startable_kinds():
        lines.append(f"\n**{kind.name}**: {kind.label}. {kind.description}\n")
        lines += [f"- {line}" for line in kind.params.describe().splitlines()]
    return "\n".join(lines)


@extend_schema(parameters=[OpenApiParameter("kind", str), OpenApiParameter("status", str)])
class RunViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Runs (jobs): list, status and results, start, cancel, export."""

    serializer_class = s.RunSerializer

    def get_queryset(self):
        return analysis_selectors.runs_for_list(
            kind=self.request.query_params.get("kind") or None, status=self.request.query_params.get("status") or None
        )

    def list(self, request, *args, **kwargs):
        runs_reconcile()  # runs whose worker died end failed, lost messages are sent again, before anyone reads them
        return super().list(request, *args, **kwargs)

    def retrieve(self, request, *args, **kwargs):
        runs_reconcile()
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        request=s.RunStartSerializer,
        responses={201: s.RunSerializer, 200: s.RunSerializer},
        description=run_start_description(),
    )
    def create(self, request, *args, **kwargs):
        start = s.RunStartSerializer(data=request.data)
        start.is_valid(raise_exception=True)
        kind = job_kind(start.validated_data["kind"])
        try:
            params = kind.params.validate(start.validated_data["params"])
            run_check_references(params=params)
            run, created = run_start(kind=kind.name, params=params, created_by=request.user)
        except RunInputError as error:
            raise ValidationError({"params": error.errors or [str(error)]}) from None
        return Response(s.RunSerializer(run).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=None, responses=s.RunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a queued or running run (409 when it had already finished)."""
        run = self.get_object()
        cancelled = run_cancel(run=run)
        run.refresh_from_db()
        return Response(s.RunSerializer(run).data, status=status.HTTP_200_OK if cancelled else status.HTTP_409_CONFLICT)

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def export(self, request, pk=None):
        """The run's export (``export_run``) as a zip file; 409 when the run has nothing to export."""
        from analysis.services.exports import run_export_archive

        run = self.get_object()
        try:
            archive = run_export_archive(run=run)
        except RunInputError as error:
            return Response({"detail": str(error)}, status=status.HTTP_409_CONFLICT)
        return FileResponse(
            archive, as_attachment=True, filename=f"run-{run.pk}-{run.kind}.zip", content_type="application/zip"
        )


# -- the human side -------------------------------------------------------------------------------------


class StudyViewSet(viewsets.ReadOnlyModelViewSet):
    """Studies, with their agreement report, aggregated results and export files."""

    serializer_class = s.StudySerializer
    permission_classes = [StudyObjectPermission]

    def get_queryset(self):
        return (
            studies_visible_to(self.request.user)
            .select_related("layer__network", "extraction__dataset", "overlap_class", "created_by")
            .prefetch_related("object_classes")
            .annotate(task_count=Count("tasks", distinct=True), rater_count=Count("raters", distinct=True))
            .order_by("-created_at", "-id")
        )

    @extend_schema(parameters=[SIMULATED_PARAMETER], responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def agreement(self, request, pk=None):
        """Agreement (percent, Cohen's κ, Fleiss' κ, Krippendorff's α with bootstrap intervals; "not sure"
        rejected and kept), filter types per class, answers per rater, names vs vocabulary and dissection."""
        return Response(study_exports.study_agreement_report(self.get_object(), simulated=_simulated(request)))

    @extend_schema(parameters=[SIMULATED_PARAMETER], responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def results(self, request, pk=None):
        """Per task: answer counts, majority answer ("not sure" rejected) and the names given."""
        study = self.get_object()
        return Response(
            {
                "study": study.name,
                "study_id": study.pk,
                "simulated": _simulated(request),
                "results": study_exports.study_results(study, simulated=_simulated(request)),
            }
        )

    @extend_schema(
        parameters=[
            SIMULATED_PARAMETER,
            OpenApiParameter("file", str, OpenApiParameter.PATH, enum=list(study_exports.STUDY_EXPORT_FILES)),
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    @action(detail=True, methods=["get"], url_path=r"files/(?P<file>[a-z]+\.[a-z]+)")
    def files(self, request, pk=None, file=None):
        """A study export file: judgments.csv/json (raw, full provenance), results.csv/json, agreement.json,
        report.html (the one-page report, self-contained)."""
        study = self.get_object()
        if file not in study_exports.STUDY_EXPORT_FILES:
            raise NotFound(f"No export named {file}.")
        return attachment_response(*study_exports.study_export_file(study, file, simulated=_simulated(request)))


class CrowdStudyViewSet(viewsets.ReadOnlyModelViewSet):
    """Crowd studies (label validation, descriptions, purity), with their export files."""

    serializer_class = s.CrowdStudySerializer

    def get_queryset(self):
        return (
            CrowdStudy.objects.select_related("created_by")
            .annotate(hit_count=Count("hits", distinct=True), worker_count=Count("workers", distinct=True))
            .order_by("-created_at", "-id")
        )

    @extend_schema(
        parameters=[
            SIMULATED_PARAMETER,
            OpenApiParameter(
                "file",
                str,
                OpenApiParameter.PATH,
                enum=[*crowd_exports.CROWD_EXPORT_FILES, *forced_choice_report.FORCED_CHOICE_EXPORT_FILES],
            ),
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    @action(detail=True, methods=["get"], url_path=r"files/(?P<file>[a-z]+\.[a-z]+)")
    def files(self, request, pk=None, file=None):
        """answers.csv/json (every assignment, full provenance) or results.csv/json (aggregated per HIT); forced-choice
        studies also trials, units and comparison .csv/.json (:mod:`annotation.crowd.forced_choice_report`)."""
        study = self.get_object()
        if study.kind == CrowdTaskKind.FORCED_CHOICE and file in forced_choice_report.FORCED_CHOICE_EXPORT_FILES:
            return attachment_response(
                *forced_choice_report.forced_choice_export_file(study, file, simulated=_simulated(request))
            )
        if file not in crowd_exports.CROWD_EXPORT_FILES:
            raise NotFound(f"No export named {file}.")
        return attachment_response(*crowd_exports.crowd_export_file(study, file, simulated=_simulated(request)))


def _study_param(request):
    study_id = _int_param(request, "study")
    if study_id is None:
        raise ValidationError({"study": "Name the study (its id)."})
    study = studies_visible_to(request.user).filter(pk=study_id).first()
    if study is None:
        raise NotFound("No such study.")
    return study


@extend_schema(parameters=[OpenApiParameter("study", int, required=True)])
class TaskViewSet(viewsets.ReadOnlyModelViewSet):
    """A study's tasks (``?study=ID``), in study order."""

    serializer_class = s.TaskSerializer
    permission_classes = [StudyObjectPermission]

    def get_queryset(self):
        tasks = StudyTask.objects.select_related("unit", "object_class", "owner", "exemplar_set__grid")
        if self.action == "list":
            return tasks.filter(study=_study_param(self.request)).order_by("position", "id")
        return tasks.filter(study__in=studies_visible_to(self.request.user))


class JudgmentViewSet(viewsets.GenericViewSet):
    """Judgments with full provenance (read), and imports of judgments collected elsewhere (write)."""

    serializer_class = s.JudgmentSerializer
    permission_classes = [StudyObjectPermission]

    def get_queryset(self):
        """The judgments of the studies the user may read (the browsable API asks for it to draw its filter
        form; the list itself is built from :func:`study_judgment_rows`)."""
        return Judgment.objects.filter(task__study__in=studies_visible_to(self.request.user))

    @extend_schema(
        parameters=[
            OpenApiParameter("study", int, required=True),
            OpenApiParameter("current", bool, description="Only judgments no revision replaced."),
        ]
    )
    def list(self, request):
        rows = study_exports.study_judgment_rows(_study_param(request))
        if request.query_params.get("current") in ("1", "true", "True"):
            rows = [row for row in rows if row["current"]]
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(s.JudgmentSerializer(page, many=True).data)

    @extend_schema(
        request={"application/json": s.JudgmentImportSerializer, "multipart/form-data": s.JudgmentImportSerializer},
        responses={201: s.ImportResultSerializer},
    )
    @action(detail=False, methods=["post"], url_path="import", url_name="import")
    def import_(self, request):
        """Import ``item,rater,answer[,concept]`` rows into a study of imported judgments (created if absent;
        only its creator may add to an existing one). Nothing is imported when any row is bad (400 lists them)."""
        payload = s.JudgmentImportSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        name = payload.validated_data["study"]
        existing = studies_visible_to(request.user).filter(name=name.strip()).first()
        if existing is not None and not study_writable_by(request.user, existing):
            raise PermissionDenied(StudyObjectPermission.message)
        try:
            counts = judgments_import(study_name=name, text=payload.validated_data["text"], created_by=request.user)
        except StudyInputError as error:
            problems = getattr(error, "problems", None)
            detail = [{"line": line, "problem": message} for line, message in problems] if problems else [str(error)]
            return Response({"problems": detail}, status=status.HTTP_400_BAD_REQUEST)
        return Response(counts, status=status.HTTP_201_CREATED)


class ApiRootView(APIView):
    """Where the API's parts are."""

    @extend_schema(responses=inline_serializer("ApiRoot", {"endpoints": serializers.DictField()}))
    def get(self, request):
        from django.urls import reverse

        names = [
            "network-list",
            "dataset-list",
            "layer-list",
            "unit-list",
            "run-list",
            "study-list",
            "task-list",
            "judgment-list",
            "judgment-import",
            "crowd-study-list",
        ]
        endpoints = {name: request.build_absolute_uri(reverse(f"api:{name}")) for name in names}
        endpoints["schema"] = request.build_absolute_uri(reverse("api:schema"))
        return Response({"endpoints": endpoints})
