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


def demo_expert_study(size, *, site_url: str = "") -> dict[str, str]:
    """The demo's expert study on conv5, built once the grids exist; prints its pages as full URLs and returns
    the experts' credentials."""
    from django.urls import reverse  # local: URLs are not loaded while apps register

    from annotation.expert.demo import demo_expert_study_ensure  # local: models are not loaded while apps register

    result = demo_expert_study_ensure(network=size.network, dataset=size.dataset)
    print(
        f"Expert study {result['study']}: {site_url}{reverse('annotation:study_detail', args=[result['study_id']])}"
        f" · experts answer at {site_url}{reverse('annotation:expert_home')}"
    )
    return result["credentials"]


def demo_crowd_studies(size, *, site_url: str = "") -> dict[str, str]:
    """The demo's crowd studies over conv3–conv5 with a finished simulated crowd; prints every study's page and
    worker links as full URLs and returns the crowd account's credentials."""
    from annotation.crowd.demo import demo_crowd_studies_ensure  # local: models are not loaded while apps register

    result = demo_crowd_studies_ensure(network=size.network, dataset=size.dataset)
    for line in demo_crowd_lines(result["studies"], site_url=site_url):
        print(line)
    return result["credentials"]


def demo_crowd_lines(studies: dict[str, int], *, site_url: str) -> list[str]:
    """For each crowd study ``{name: id}``: its researcher page and, per adapter, the link workers follow, as
    full URLs under ``site_url``."""
    from django.urls import reverse  # local: URLs are not loaded while apps register

    from annotation.crowd.adapters import crowd_links  # local: models are not loaded while apps register
    from annotation.models import CrowdStudy  # local: as above

    lines = []
    for study in CrowdStudy.objects.filter(pk__in=studies.values()).order_by("pk"):
        state = "open to people" if study.is_open else "closed"
        lines.append(
            f"Crowd study {study.name} ({study.get_kind_display()}, {state}): "
            f"{site_url}{reverse('annotation:crowd_study_detail', args=[study.pk])}"
        )
        lines += [f"  worker link ({adapter}): {link}" for adapter, link in crowd_links(study, base=site_url).items()]
    return lines
