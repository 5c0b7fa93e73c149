"""The main navigation marks the section a page declares (``nav_section`` on its view), not a guess from its URL
name: every page view of the site declares one, and the rendered menu marks exactly that link."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.views.generic.base import TemplateResponseMixin

from accounts.context_processors import NAV_SECTIONS

CURRENT = re.compile(r'<a href="([^"]+)" aria-current="page">')
SECTION_LINKS = {
    "overview": "analysis:dashboard",
    "runs": "analysis:run_list",
    "datasets": "analysis:dataset_list",
    "networks": "analysis:network_list",
    "studies": "annotation:study_list",
    "selfcheck": "analysis:selfcheck",
    "api": "api:token",
    "expert": "annotation:expert_home",
    "tasks": "annotation:crowd_home",
}


def page_views(resolver=None, namespace=""):
    """``(namespace:name, view class)`` of every template-rendering class-based view in the URLconf."""
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            yield from page_views(pattern, pattern.namespace or namespace)
        elif isinstance(pattern, URLPattern):
            view = getattr(pattern.callback, "view_class", None)
            if view is not None and issubclass(view, TemplateResponseMixin):
                yield f"{namespace}:{pattern.name}", view


def test_the_sections_and_their_links_agree():
    assert set(SECTION_LINKS) == set(NAV_SECTIONS)


def test_every_page_of_the_apps_declares_its_nav_section():
    views = [(name, view) for name, view in page_views() if name.split(":")[0] in ("analysis", "annotation", "api")]
    assert len(views) > 30
    assert [name for name, view in views if getattr(view, "nav_section", "") not in NAV_SECTIONS] == []


@pytest.mark.parametrize(
    ("url_name", "section"),
    [
        ("analysis:dashboard", "overview"),
        ("analysis:run_list", "runs"),
        ("analysis:dataset_list", "datasets"),
        ("analysis:probe_world_start", "datasets"),
        ("analysis:network_list", "networks"),
        ("analysis:demo_training_start", "networks"),
        ("annotation:study_list", "studies"),
        ("annotation:crowd_study_list", "studies"),
        ("annotation:crowd_study_create", "studies"),
        ("analysis:selfcheck", "selfcheck"),
        ("api:token", "api"),
    ],
)
def test_the_menu_marks_the_declared_section(researcher_client, url_name, section):
    response = researcher_client.get(reverse(url_name))
    assert response.status_code == 200
    assert CURRENT.findall(response.content.decode()) == [reverse(SECTION_LINKS[section])]


def test_an_expert_and_a_crowd_worker_see_their_own_section(client, expert, crowd_worker):
    client.force_login(expert)
    assert CURRENT.findall(client.get(reverse("annotation:expert_home")).content.decode()) == [
        reverse("annotation:expert_home")
    ]
    client.force_login(crowd_worker)
    assert CURRENT.findall(client.get(reverse("annotation:crowd_home")).content.decode()) == [
        reverse("annotation:crowd_home")
    ]
