"""Every URL pattern of the site and the API × every role, resolved programmatically (a URL added later is
covered, or fails until it is classified), with other users' objects; and CSRF on every form that posts.

Roles: anonymous, researcher, expert (an annotator of the study), another expert (not in it), crowd. Expected:
- pages with a role mixin (``accounts.permissions``): their roles get through (never 401/403/5xx), anonymous
  users are sent to log in (302), other roles get 403;
- the API (DRF) and its schema: researchers only; anonymous 401, other roles 403;
- the admin: staff (researchers) only; others are sent to the admin's login;
- crowd worker pages: public by capability — the random study token / worker code / assignment token in the
  URL is the credential (MTurk frames them cross-site, so they are CSRF-exempt); a wrong token is 404;
- the few public pages (login, logout, home, media) listed in PUBLIC.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.views import APIView

from accounts.permissions import RoleRequiredMixin
from accounts.roles import RESEARCHER_PERMISSION_APPS

pytestmark = pytest.mark.django_db

ANON, RESEARCHER, EXPERT, OTHER_EXPERT, CROWD = "anonymous", "researcher", "expert", "other-expert", "crowd"
ROLES = [ANON, RESEARCHER, EXPERT, OTHER_EXPERT, CROWD]
PUBLIC = {"accounts:login", "accounts:logout", "accounts:home", "media"}
"""Pages anyone may open (home sends each role to its own home, anonymous users to log in)."""
CAPABILITY = {
    "annotation:crowd_entry",
    "annotation:crowd_entry_adapter",
    "annotation:crowd_next",
    "annotation:crowd_qualification",
    "annotation:crowd_task",
    "annotation:crowd_after",
    "annotation:crowd_return",
    "annotation:crowd_image",
    "annotation:crowd_practice",
}
"""Crowd worker pages: the random token or code in the URL is the credential."""
EXPERT_STUDY_PAGES = {"annotation:expert_next", "annotation:annotate", "annotation:my_answers"}
"""Expert pages of one study: an expert who is not its annotator gets 404 (nothing is revealed)."""
MARKER = '<script>alert("x")</script>'
"""Stored in every free-text field of the world: it must reach no page unescaped."""
MAY_404 = {"analysis:dataset_image", "analysis:dataset_image_file"}
"""Allowed roles get 404 here: the test dataset's files do not exist on disk."""
GUESSED: set[str] = set()
"""URLs whose parameters this test had to guess (added after it): allowed roles may get 404 there."""
OBJECT_PAGES = {
    "analysis:run_detail",
    "analysis:run_status",
    "analysis:run_export",
    "analysis:dataset_detail",
    "analysis:dataset_images",
    "analysis:network_detail",
    "analysis:extraction_start",
    "analysis:layer_detail",
    "analysis:unit_detail",
    "analysis:network_dissection",
    "analysis:layer_dissection",
    "analysis:dissection_start",
    "analysis:rotation_test",
    "analysis:rotation_start",
    "analysis:layer_net2vec",
    "analysis:concept_detail",
    "annotation:expert_next",
    "annotation:annotate",
    "annotation:my_answers",
    "annotation:crowd_study_detail",
    "annotation:crowd_workers",
    "annotation:crowd_review",
    "annotation:study_detail",
    "annotation:study_report",
    "annotation:study_export",
    "annotation:study_export_file",
    "api:network-detail",
    "api:dataset-detail",
    "api:dataset-concepts",
    "api:layer-detail",
    "api:unit-detail",
    "api:study-detail",
    "api:study-agreement",
    "api:study-files",
    "api:study-results",
    "api:task-detail",
    "annotation:crowd_study_export",
    "api:crowd-study-detail",
    "api:crowd-study-files",
}
"""Pages of objects the world has: an allowed role must not get 404 there (elsewhere — pages of kinds of results
the world does not hold, such as part detection — 404 is the honest answer)."""


def iter_patterns(patterns=None, prefix: str = "", namespace: str | None = None):
    """Yield ``(name, route, callback, converters)`` for every URL pattern, recursively."""
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(pattern, URLResolver):
            space = pattern.namespace or namespace
            yield from iter_patterns(pattern.url_patterns, prefix + str(pattern.pattern), space)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else (pattern.name or "media")
            converters = getattr(pattern.pattern, "converters", {})
            keys = {key: type(converter).__name__ for key, converter in converters.items()} or {
                key: "regex" for key in re.compile(str(pattern.pattern)).groupindex
            }
            yield name, prefix + str(pattern.pattern), pattern.callback, keys


def view_class(callback):
    return getattr(callback, "view_class", None) or getattr(callback, "cls", None)


def access_rule(name: str, callback) -> str | frozenset:
    """``api``, ``admin``, ``public``, ``capability``, or the set of roles of a role-mixin page."""
    cls = view_class(callback)
    if cls is not None and issubclass(cls, APIView):
        return "api"
    if name.startswith("admin:"):
        return "admin"
    if cls is not None and issubclass(cls, RoleRequiredMixin):
        return frozenset(role.value for role in cls.allowed_roles)
    if name in PUBLIC:
        return "public"
    if name in CAPABILITY:
        return "capability"
    raise AssertionError(f"{name} is not classified: give its view a role mixin or list it here, with a reason")


@pytest.fixture
def world(make_user, researcher):
    from analysis.models import DatasetImage, Run
    from annotation.crowd.services import hit_next_for_worker
    from annotation.expert import services
    from tests.test_crowd_study import enter, validation_study
    from tests.test_expert_study import build_study_world, make_experts

    extraction = build_study_world(units=2)
    dataset = extraction.dataset
    DatasetImage.objects.create(
        dataset=dataset, index=0, path="none.png", split="train", height=8, width=8, seg_height=4, seg_width=4
    )
    expert, other_expert = make_experts(2)
    study = services.study_create(
        name="matrix", extraction=extraction, experts=[expert], plan="full", created_by=researcher
    )
    rater = study.raters.get(user=expert)
    task = services.task_next_for_rater(rater=rater)
    crowd_study = validation_study(name="mx", units=2, created_by=researcher)
    worker = enter(crowd_study, 1)
    assignment = hit_next_for_worker(worker=worker)
    run = Run.objects.create(kind="selfcheck", params={}, params_hash="m", status="failed", error=MARKER)
    # A <script> in every free-text field people type, for the escaping check.
    study.name, study.description = f"study {MARKER}", MARKER
    study.save()
    services.synonym_set(study=study, name=f"x{MARKER}", maps_to=MARKER)
    crowd_study.description = MARKER
    crowd_study.save()
    extraction.layer.network.description = MARKER
    extraction.layer.network.save()
    dataset.concepts.filter(category="part").update(name=MARKER)
    services.judgment_submit(rater=rater, task=task, answer="part", concept=MARKER)
    users = {RESEARCHER: researcher, EXPERT: expert, OTHER_EXPERT: other_expert, CROWD: make_user("cora", "crowd")}
    return {
        "extraction": extraction,
        "study": study,
        "task": task,
        "crowd_study": crowd_study,
        "worker": worker,
        "assignment": assignment,
        "run": run,
        "users": users,
    }


def url_kwargs(name: str, keys: list[str], world) -> dict:
    """Real objects for every URL parameter (the study and run are another user's: the researcher's)."""
    extraction = world["extraction"]
    network, dataset = extraction.layer.network, extraction.dataset
    values = {}
    for key in keys:
        if key == "pk":
            if "crowd" in name:
                values[key] = world["crowd_study"].pk
            elif name.startswith(("analysis:run", "api:run")):
                values[key] = world["run"].pk
            elif name.startswith("api:layer"):
                values[key] = extraction.layer.pk
            elif name.startswith("api:unit"):
                values[key] = extraction.layer.unit_set.first().pk
            elif name.startswith("api:task"):
                values[key] = world["task"].pk
            else:
                values[key] = world["study"].pk
        elif key == "task_pk":
            values[key] = world["task"].pk
        elif key == "name":
            if name == "annotation:crowd_study_export":
                values[key] = "answers.csv"
            elif name == "annotation:study_export_file":
                values[key] = "judgments.json"
            elif "dataset" in name or "concept" in name:
                values[key] = dataset.name
            else:
                values[key] = network.name
        elif key == "layer":
            values[key] = extraction.layer.name
        elif key == "index":
            values[key] = 0
        elif key == "number":
            values[key] = dataset.concepts.first().number
        elif key == "token":
            values[key] = world["crowd_study"].token
        elif key == "adapter":
            values[key] = "mturk"
        elif key == "code":
            values[key] = world["worker"].code
        elif key == "assignment":
            values[key] = world["assignment"].token
        elif key == "file":
            values[key] = "answers.json" if "crowd" in name else "judgments.csv"
        elif key == "path":
            values[key] = "nothing-here.png"
        elif key in ("object_id", "app_label", "content_type_id", "url"):
            return None  # admin object pages: the changelists and add pages cover the admin
        else:  # a parameter this test has no object for: roles are still checked, the page may say 404
            values[key] = world["run"].pk if keys[key] == "IntConverter" else "unknown"
            GUESSED.add(name)
    return values


def collect_urls(world) -> list[tuple[str, str, object]]:
    rows = []
    admin_apps = set(RESEARCHER_PERMISSION_APPS) | {"authtoken", "auth"}
    for name, route, callback, keys in iter_patterns():
        if name.startswith("admin:") and not (name == "admin:index" or name.endswith(("_changelist", "_add"))):
            continue
        if name.startswith("admin:") and name != "admin:index" and name.split(":")[1].split("_")[0] not in admin_apps:
            continue
        kwargs = url_kwargs(name, keys, world)
        if kwargs is None:
            continue
        url = "/" + route.replace("<path:path>", kwargs["path"]) if name == "media" else reverse(name, kwargs=kwargs)
        rows.append((name, url, callback))
    return rows


def login_client(world, role: str, **client_kwargs) -> Client:
    client = Client(raise_request_exception=False, **client_kwargs)
    if role != ANON:
        client.force_login(world["users"][role])
    return client


def check(name: str, rule, role: str, response, method: str) -> str | None:
    """A problem description, or None when the response is what the rule says."""
    status = response.status_code
    if status >= 500:
        return f"{status} server error"
    if rule == "public":
        return None
    if rule == "capability":
        return "refused a capability URL" if status in (401, 403) else None
    if rule == "api":
        expected = 200 if role == RESEARCHER else (401 if role == ANON else 403)
        if role == RESEARCHER:
            return f"researcher refused ({status})" if status in (401, 403) else None
        return None if status == expected else f"expected {expected}, got {status}"
    if rule == "admin":
        if role == RESEARCHER:  # staff: in (read-only admins refuse "add" with 403; other apps' admins too)
            app = name.split(":")[1].split("_")[0]
            if name == "admin:index" or (app in RESEARCHER_PERMISSION_APPS and name.endswith("_changelist")):
                return None if status == 200 else f"researcher refused ({status})"
            if status == 302 and "/login/" in response["Location"]:
                return "researcher sent to log in"
            return None if status in (200, 302, 403) else f"expected 200, 302 or 403, got {status}"
        return None if status == 302 and "/admin/login/" in response["Location"] else f"expected admin login, {status}"
    allowed = rule
    role_name = EXPERT if role == OTHER_EXPERT else role
    if role == ANON:
        return (
            None
            if status == 302 and response["Location"].startswith(reverse("accounts:login"))
            else f"anonymous: expected login redirect, got {status}"
        )
    if role_name not in allowed:
        return None if status == 403 else f"expected 403, got {status}"
    if role == OTHER_EXPERT and name in EXPERT_STUDY_PAGES:
        return None if status == 404 else f"another expert's study: expected 404, got {status}"
    if status in (401, 403):
        return f"allowed role refused ({status})"
    if status == 404 and name in OBJECT_PAGES - MAY_404 - GUESSED:
        return "allowed role got 404"
    return None


@pytest.mark.parametrize("role", ROLES)
def test_every_url_for_every_role(world, role):
    problems = []
    urls = collect_urls(world)
    assert len(urls) > 60  # the site, the API, the crowd pages and the admin are all here
    client = login_client(world, role)
    for name, url, callback in urls:
        rule = access_rule(name, callback)
        response = client.get(url)
        problem = check(name, rule, role, response, "GET")
        if problem:
            problems.append(f"GET {url} ({name}): {problem}")
        cls = view_class(callback)
        posts = (cls is not None and (hasattr(cls, "post") or hasattr(cls, "create"))) or name.endswith("_add")
        if posts and name not in ("accounts:logout", "accounts:login") and rule not in ("public",):
            response = client.post(url, {})
            problem = check(name, rule, role, response, "POST")
            if problem and not (rule == "api" and role == RESEARCHER and response.status_code == 405):
                problems.append(f"POST {url} ({name}): {problem}")
    assert not problems, "\n".join(problems)


def test_wrong_capability_tokens_are_404(world, client):
    from tests.test_crowd_study import enter

    worker, assignment = world["worker"], world["assignment"]
    other = enter(world["crowd_study"], 2)
    assert client.get(reverse("annotation:crowd_entry", args=["0" * 16])).status_code == 404
    assert client.get(reverse("annotation:crowd_next", args=["f" * 32])).status_code == 404
    # Another worker's assignment, reached with one's own code: not theirs.
    for name in ("annotation:crowd_task", "annotation:crowd_after"):
        assert client.get(reverse(name, args=[other.code, assignment.token])).status_code == 404
    assert (
        client.post(
            reverse("annotation:crowd_task", args=[other.code, assignment.token]), {"answer": "yes"}
        ).status_code
        == 404
    )
    assert client.post(reverse("annotation:crowd_return", args=[other.code, assignment.token])).status_code == 404
    assignment.refresh_from_db()
    assert assignment.state == "leased" and worker.assignments.count() == 1


def test_every_post_needs_a_csrf_token(world):
    """With CSRF checks on, a POST without a token is refused (403) on every view that takes POSTs, except the
    crowd worker pages (exempt by design: cross-site iframe, code in the URL) and token-authenticated API calls."""
    problems, exempt = [], set()
    for name, url, callback in collect_urls(world):
        cls = view_class(callback)
        if cls is None or not (hasattr(cls, "post") or hasattr(cls, "create")) or name.startswith("admin:"):
            continue
        rule = access_rule(name, callback)
        role = RESEARCHER if rule in ("api", "capability", "public") else sorted(rule)[0]
        client = (
            login_client(world, role, enforce_csrf_checks=True)
            if name != "accounts:login"
            else Client(enforce_csrf_checks=True)
        )
        response = client.post(url, {})
        if response.status_code == 403 and (b"CSRF" in response.content or rule == "api"):
            continue
        if rule == "capability":
            exempt.add(name)
            continue
        problems.append(f"{name}: {response.status_code} without a CSRF token")
    assert not problems, "\n".join(problems)
    assert exempt <= CAPABILITY


def test_every_page_escapes_stored_text_and_protects_its_forms(world):
    """On every HTML page each role can open: the ``<script>`` stored in every free-text field (study name and
    description, concept names experts gave, synonyms, crowd study and network descriptions, dataset concept
    names, run errors) renders inert; and each ``<form method="post">`` carries ``csrfmiddlewaretoken`` — except
    forms on crowd worker pages (exempt, see above) and forms that post to another site (MTurk's hand-back)."""
    form_re = re.compile(r"<form\b[^>]*>.*?</form>", re.S | re.I)
    problems, forms, pages, escaped = [], 0, 0, 0
    for role in (RESEARCHER, EXPERT, CROWD):
        client = login_client(world, role)
        for name, url, callback in collect_urls(world):
            response = client.get(url)
            if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
                continue
            text = b"".join(response.streaming_content).decode() if response.streaming else response.content.decode()
            pages += 1
            if MARKER in text:
                problems.append(f"{role} {url}: a stored <script> is rendered")
            escaped += "&lt;script&gt;" in text
            if name.startswith("admin:") or access_rule(name, callback) == "capability":
                continue
            for form in form_re.findall(text):
                opening = form[: form.index(">")]
                if not re.search(r"method=[\"']?post", opening, re.I):
                    continue
                forms += 1
                if "csrfmiddlewaretoken" not in form:
                    problems.append(f"{role} {url}: {opening[:120]}")
    assert not problems, "\n".join(problems)
    assert forms >= 5 and pages > 40 and escaped >= 8, (forms, pages, escaped)
