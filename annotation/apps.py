from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotation"
    verbose_name = "Annotation (human side)"

    def ready(self) -> None:
        from analysis.services.demo import register_demo_hook  # local: ready() runs while the app registry loads

        register_demo_hook(demo_expert_study)
        register_demo_hook(demo_crowd_studies)
        register_unit_panels()


def register_unit_panels() -> None:
    """The unit page's humans-vs-machine panel shows what experts and the crowd said about the unit: each wing
    renders its part; ``analysis`` only knows the registry (it never imports annotation)."""
    from analysis.panels import register_unit_panel  # local: ready() runs while the app registry loads
    from annotation.crowd.views import unit_crowd_panel  # local: views import models, not loaded at import time
    from annotation.expert.views import unit_expert_panel  # local: as above

    register_unit_panel("experts", unit_expert_panel)
    register_unit_panel("crowd", unit_crowd_panel)


def demo_expert_study(size) -> dict[str, str]:
    """The demo's expert study on conv5, built once the grids exist; returns the experts' credentials."""
    from annotation.expert.demo import demo_expert_study_ensure  # local: models are not loaded while apps register

    return demo_expert_study_ensure(network=size.network, dataset=size.dataset)["credentials"]


def demo_crowd_studies(size) -> dict[str, str]:
    """The demo's crowd studies over conv3–conv5 with a finished simulated crowd; prints the crowd links and
    returns the crowd account's credentials."""
    from annotation.crowd.demo import demo_crowd_studies_ensure  # local: models are not loaded while apps register

    result = demo_crowd_studies_ensure(network=size.network, dataset=size.dataset)
    for adapter, link in result["links"].items():
        print(f"Crowd link ({adapter}, on the demo site): {link}")
    return result["credentials"]
