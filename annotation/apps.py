from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotation"
    verbose_name = "Annotation (human side)"

    def ready(self) -> None:
        from analysis.services.demo import register_demo_hook  # local: ready() runs while the app registry loads

        register_demo_hook(demo_expert_study)
        register_demo_hook(demo_crowd_studies)


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
