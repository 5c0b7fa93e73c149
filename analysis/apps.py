from django.apps import AppConfig


class AnalysisConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "analysis"
    verbose_name = "Analysis (machine side)"

    def ready(self):
        # Each services module registers its job kinds (analysis.jobs) when imported; importing them here, once
        # the models are loaded, fills the registry before anything asks it.
        from . import services  # noqa: F401
