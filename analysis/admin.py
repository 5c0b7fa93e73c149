from django.contrib import admin

from .models import Run


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "phase", "progress_done", "progress_total", "device", "created_at")
    list_filter = ("kind", "status", "queue")
    search_fields = ("id", "kind", "error")
    readonly_fields = [field.name for field in Run._meta.fields]
