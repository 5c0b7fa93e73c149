"""Property-based fuzzing (hypothesis): no form of the site and no API endpoint answers a 5xx, whatever is sent.

Forms are found on the pages themselves: every ``<form method="post">`` a role can open (researcher, expert,
crowd worker pages) is posted with random values for its own field names, plus stray fields. The API gets random
run starts (kinds and parameters), judgment imports (CSV-like text) and query parameters.
"""

from __future__ import annotations

import re
import string

import pytest
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_api import token_client
from tests.web.test_permission_matrix import collect_urls, login_client, world  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
FORM_RE = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.S | re.I)
NAME_RE = re.compile(r"""<(?:input|select|textarea)\b[^>]*\bname=["']([^"']+)["']""", re.I)
ACTION_RE = re.compile(r"""action=["']([^"']*)["']""", re.I)

values = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.digits + "-.,e ", max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "0", "1", "yes", "no", "part", "on", "nan", "inf", "-1", "1e309"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=300),
)


def post_forms(world, role: str) -> list[tuple[str, list[str]]]:
    """``(action URL, field names)`` of every POST form on the pages ``role`` opens (logout excluded)."""
    client = login_client(world, role)
    found = {}
    for name, url, _callback in collect_urls(world):
        if name.startswith(("admin:", "accounts:")):
            continue
        response = client.get(url)
        if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
            continue
        for attributes, body in FORM_RE.findall(response.content.decode()):
            if not re.search(r"method=[\"']?post", attributes, re.I):
                continue
            action = ACTION_RE.search(attributes)
            target = (action.group(1) if action and action.group(1) else url).replace("&amp;", "&")
            if target.startswith(("http", "//")) or "logout" in target:
                continue
            names = sorted(set(NAME_RE.findall(body)) - {"csrfmiddlewaretoken"})
            found[target.split("#")[0]] = names
    return sorted(found.items())


@pytest.mark.parametrize("role", ["researcher", "expert"])
def test_no_form_answers_5xx(world, role):
    forms = post_forms(world, role)
    assert len(forms) >= (8 if role == "researcher" else 1), forms
    client = login_client(world, role)

    @FUZZ
    @given(data=st.data())
    def post_random(data):
        url, names = data.draw(st.sampled_from(forms))
        payload = {name: data.draw(values) for name in names if data.draw(st.booleans()) or len(names) < 3}
        payload.update(data.draw(st.dictionaries(st.text(min_size=1, max_size=10), values, max_size=2)))
        response = client.post(url, payload)
        assert response.status_code < 500, (url, payload, response.status_code)

    post_random()


def test_no_crowd_worker_page_answers_5xx(world):
    worker, assignment = world["worker"], world["assignment"]
    pages = [
        reverse("annotation:crowd_task", args=[worker.code, assignment.token]),
        reverse("annotation:crowd_qualification", args=[worker.code]),
        reverse("annotation:crowd_return", args=[worker.code, assignment.token]),
        reverse("annotation:crowd_entry", args=[world["crowd_study"].token]),
    ]
    fields = [
        "answer",
        "description",
        "confidence",
        "count",
        "pasted",
        "ctx",
        "assignmentId",
        "workerId",
        "hitId",
        "turkSubmitTo",
        "PROLIFIC_PID",
        "STUDY_ID",
        "SESSION_ID",
    ]
    client = Client(raise_request_exception=False)

    @FUZZ
    @given(
        url=st.sampled_from(pages),
        payload=st.dictionaries(st.sampled_from(fields), values, max_size=5),
        get=st.booleans(),
    )
    def hit(url, payload, get):
        response = client.get(url, payload) if get else client.post(url, payload)
        assert response.status_code < 500, (url, payload, response.status_code)

    hit()


def test_no_api_endpoint_answers_5xx(world, researcher):
    api = token_client(researcher)
    api.raise_request_exception = False
    kinds = [
        "selfcheck",
        "probe_world",
        "train_demo_network",
        "extract",
        "render_grids",
        "dissect",
        "dissect_rotation",
        "net2vec",
        "score_parts",
        "ablate",
        "explanatory_graph",
    ]
    keys = [
        "network",
        "dataset",
        "layer",
        "layers",
        "shards",
        "upsample",
        "baseline",
        "quantile",
        "iou_threshold",
        "top_k",
        "batch_size",
        "alphas",
        "seeds",
        "n_images",
        "size",
        "seed",
        "name",
        "epochs",
        "matmul_size",
        "repeats",
        "extraction_run",
        "concepts",
        "lr",
        "momentum",
        "top_f",
        "strict_threshold",
        "population",
        "generations",
        "inputs",
        "split",
        "context",
        "max_images",
        "score",
        "nodes_per_filter",
        "iterations",
        "tau",
        "landmarks",
        "min_sigma",
    ]
    json_values = st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=20),
            st.sampled_from(["w-net", "w-data", "conv5", "anchored", "shuffled"]),
        ),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    study = world["study"]
    lists = [
        reverse("api:network-list"),
        reverse("api:layer-list"),
        reverse("api:unit-list"),
        reverse("api:run-list"),
        reverse("api:study-list"),
        reverse("api:task-list"),
        reverse("api:judgment-list"),
        reverse("api:study-agreement", args=[study.pk]),
        reverse("api:study-results", args=[study.pk]),
        reverse("api:dataset-concepts", args=["w-data"]),
    ]
    query_keys = [
        "network",
        "layer",
        "study",
        "kind",
        "status",
        "simulated",
        "limit",
        "offset",
        "current",
        "category",
        "format",
    ]
    csv_cell = st.one_of(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12),
        st.sampled_from(["part", "no", "not_sure", "item", "rater", "answer"]),
    )
    csv_text = st.lists(st.lists(csv_cell, min_size=1, max_size=5).map(",".join), max_size=6).map(
        lambda lines: "\n".join(["item,rater,answer,concept", *lines])
    )

    @FUZZ
    @given(
        action=st.sampled_from(["start", "import", "list"]),
        kind=st.one_of(st.sampled_from(kinds), st.text()),
        params=st.one_of(st.dictionaries(st.sampled_from(keys), json_values, max_size=6), json_values),
        text=csv_text,
        study_name=st.text(max_size=30),
        url=st.sampled_from(lists),
        query=st.dictionaries(st.sampled_from(query_keys), st.text(max_size=12), max_size=4),
    )
    def call(action, kind, params, text, study_name, url, query):
        if action == "start":
            response = api.post(reverse("api:run-list"), {"kind": kind, "params": params}, format="json")
        elif action == "import":
            response = api.post(reverse("api:judgment-import"), {"study": study_name, "csv": text}, format="json")
        else:
            response = api.get(url, query)
        assert response.status_code < 500, (action, kind, params, text, url, query, response.content[:300])

    call()


def query_keys_in_views() -> list[str]:
    """Every query parameter a view reads (``request.GET.get("x")``, ``GET["x"]``, ``query_id(request.GET, "x")``,
    ``query_params``)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = set()
    for path in [*root.glob("*/**/*.py")]:
        if path.parts[len(root.parts)] in ("accounts", "analysis", "annotation", "api", "unitscope"):
            text = path.read_text()
            found |= set(re.findall(r"""(?:GET|query_params|\bquery)(?:\.get\(|\[|,)\s*["'](\w+)["']""", text))
            found |= set(re.findall(r"""query_id\([^,()]+,\s*["'](\w+)["']""", text))
    return sorted(found | {"limit", "offset", "format"})


HOSTILE_QUERY_VALUES = ["abc", "-1", "1e309", "99999999999999999999999", "²", "", "\x00", "$x^{$"]


def test_no_page_answers_5xx_on_hostile_query_parameters(world):
    """Malformed ids and numbers in every query parameter any view reads, on every page a researcher opens (the
    site; the API as JSON and in a browser): 4xx or a page, never a 5xx. Then the API's lists in a browser with
    a valid study, where the browsable API draws its filter form."""
    keys = query_keys_in_views()
    assert {"worker", "limit", "simulated", "state"} <= set(keys), keys
    client = login_client(world, "researcher")
    problems = []
    for name, url, _callback in collect_urls(world):
        if name.startswith("admin:") or name == "accounts:logout":
            continue
        for value in HOSTILE_QUERY_VALUES:
            for accept in ("text/html", "application/json") if name.startswith("api:") else ("text/html",):
                response = client.get(url, {key: value for key in keys}, HTTP_ACCEPT=accept)
                if response.status_code >= 500:
                    problems.append(f"{url} ({accept}) ?*={value!r}: {response.status_code}")
    study = world["study"].pk
    for url in (reverse("api:judgment-list"), reverse("api:task-list")):
        for query in ({"study": study}, {"study": study, "limit": "99999999999999999999999", "offset": "1e9"}):
            response = client.get(url, query, HTTP_ACCEPT="text/html")
            if response.status_code != 200:
                problems.append(f"{url} in a browser, {query}: {response.status_code}")
    assert not problems, "\n".join(problems[:40])
