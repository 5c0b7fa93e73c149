"""Admin for the human side. Judgments are read-only here: they are never edited or deleted. A study and
everything in it is changed or deleted only by the researcher who created it (or a superuser), as on the site."""

from operator import attrgetter

from django.contrib import admin

from accounts.permissions import study_changeable_by

from .models import (
    Assignment,
    ConceptSynonym,
    CrowdAssignment,
    CrowdStudy,
    CrowdWorker,
    Hit,
    Judgment,
    Study,
    StudyRater,
    StudyTask,
)


class StudyOwnedAdmin(admin.ModelAdmin):
    """Change and delete rights on an object only for its study's creator (``study_path`` leads from the object
    to its study; empty: the object is the study)."""

    study_path = "study"

    def owner_allows(self, request, obj) -> bool:
        if obj is None:
            return True
        return study_changeable_by(request.user, attrgetter(self.study_path)(obj) if self.study_path else obj)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self.owner_allows(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self.owner_allows(request, obj)


class StudyRaterInline(admin.TabularInline):
    model = StudyRater
    extra = 0
    fields = ("name", "kind", "user", "params")
    readonly_fields = ("kind", "params")


@admin.register(Study)
class StudyAdmin(StudyOwnedAdmin):
    study_path = ""
    list_display = ("name", "kind", "layer", "plan", "created_at")
    list_filter = ("kind", "plan")
    search_fields = ("name",)
    readonly_fields = (
        "kind",
        "layer",
        "extraction",
        "plan",
        "raters_per_task",
        "overlap_class",
        "seed",
        "created_by",
        "created_at",
    )
    exclude = ("object_classes",)
    inlines = [StudyRaterInline]


@admin.register(StudyTask)
class StudyTaskAdmin(StudyOwnedAdmin):
    list_display = ("item", "study", "position", "owner", "capacity", "assigned_count")
    list_filter = ("study",)
    search_fields = ("item",)
    readonly_fields = (
        "study",
        "position",
        "item",
        "unit",
        "object_class",
        "exemplar_set",
        "owner",
        "capacity",
        "assigned_count",
    )

    def has_add_permission(self, request):
        return False  # tasks are made with their study (every field is read-only here)


@admin.register(Assignment)
class AssignmentAdmin(StudyOwnedAdmin):
    study_path = "rater.study"
    list_display = ("task", "rater", "assigned_at", "completed_at")
    list_filter = ("rater__study",)


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = (
        "task",
        "rater",
        "answer",
        "concept",
        "submitted_at",
        "seconds",
        "revision_of",
        "simulated",
        "origin",
    )
    list_filter = ("task__study", "answer", "simulated", "origin")
    search_fields = ("concept", "task__item", "rater__name")

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False


@admin.register(ConceptSynonym)
class ConceptSynonymAdmin(StudyOwnedAdmin):
    list_display = ("study", "name", "maps_to", "created_by", "created_at")
    search_fields = ("name", "maps_to", "study__name")


# -- crowd studies: read-only (answers are never edited; reviews go through the review page) -------------------------


class ReadOnlyAdmin(StudyOwnedAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(CrowdStudy)
class CrowdStudyAdmin(ReadOnlyAdmin):
    study_path = ""
    list_display = ("name", "kind", "assignments_per_hit", "is_open", "created_at")
    list_filter = ("kind", "is_open")
    search_fields = ("name",)


@admin.register(CrowdWorker)
class CrowdWorkerAdmin(ReadOnlyAdmin):
    list_display = ("external_id", "study", "adapter", "simulated", "qualified", "blocked", "created_at")
    list_filter = ("study", "adapter", "simulated", "blocked")
    search_fields = ("external_id",)
    exclude = ("code",)


@admin.register(Hit)
class HitAdmin(ReadOnlyAdmin):
    list_display = ("id", "study", "kind", "role", "unit", "label", "label_origin", "assigned_count", "max_assignments")
    list_filter = ("study", "kind", "role", "label_origin")


@admin.register(CrowdAssignment)
class CrowdAssignmentAdmin(ReadOnlyAdmin):
    study_path = "hit.study"
    list_display = ("id", "hit", "worker", "state", "answer", "description", "count", "seconds", "submitted_at")
    list_filter = ("state", "hit__study")
