"""Security: weights load without running code, crowd endpoints are rate-limited, worker codes are unguessable.
(Roles × URLs, CSRF and escaping of stored text on every page: tests/web/test_permission_matrix.py; uploads:
tests/test_api.py; ``check --deploy``: tests/test_settings.py; fuzzing: tests/test_fuzz.py.)"""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from tests.test_crowd_reports import layers  # noqa: F401 (fixture)


def test_weights_are_loaded_without_running_code(tmp_path):
    """``torch.load(weights_only=True)``: a pickle that would run code on load is refused, and the code never runs."""
    from analysis.engine.networks import NetworkLoadError, load_state_dict_file

    sentinel = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(sentinel),)

    for name, write in [
        ("plain.pkl", lambda path: path.write_bytes(pickle.dumps({"weight": Exploit()}, protocol=2))),
        ("checkpoint.pt", lambda path: torch.save({"state_dict": {"weight": torch.zeros(2)}, "hook": Exploit()}, path)),
    ]:
        path = tmp_path / name
        write(path)
        with pytest.raises(NetworkLoadError, match="weights_only=True"):
            load_state_dict_file(path)
        assert not sentinel.exists(), f"{name}: loading ran code"
    good = tmp_path / "good.pt"
    torch.save({"weight": torch.ones(3)}, good)
    assert torch.equal(load_state_dict_file(good)["weight"], torch.ones(3))


def test_every_torch_load_in_the_project_uses_weights_only():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [
        path
        for folder in ("accounts", "analysis", "annotation", "api", "unitscope", "benchmarks")
        for path in (root / folder).rglob("*.py")
    ]:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"torch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- rate limits ------------------------------------------------------------------------------------------


def test_rate_parsing():
    from unitscope.ratelimit import parse_rate

    assert parse_rate("120/m") == (120, 60) and parse_rate("5/s") == (5, 1) and parse_rate("1/h") == (1, 3600)
    assert parse_rate("off") is None and parse_rate("") is None and parse_rate(None) is None
    for bad in ("120", "x/m", "0/m", "5/d", "-1/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)


@pytest.mark.django_db  # the counters live in the database cache
def test_fixed_windows_count_per_client(settings):
    from unitscope.ratelimit import rate_limit_hit

    settings.UNITSCOPE_RATE_LIMIT_ENABLED = True
    settings.UNITSCOPE_RATE_LIMITS = {"g": "3/m"}
    cache.clear()
    start = 6000.0  # the start of a window
    assert [rate_limit_hit("g", "a", now=start + i) for i in range(3)] == [None, None, None]
    assert rate_limit_hit("g", "a", now=start + 10) == 50  # wait to the end of the window
    assert rate_limit_hit("g", "b", now=start + 10) is None  # another client has its own budget
    assert rate_limit_hit("g", "a", now=start + 60) is None  # the next window
    settings.UNITSCOPE_RATE_LIMITS = {"g": "off"}
    assert all(rate_limit_hit("g", "a", now=start + 61) is None for _ in range(10))
    settings.UNITSCOPE_RATE_LIMITS = {"g": "1/m"}
    settings.UNITSCOPE_RATE_LIMIT_ENABLED = False
    assert all(rate_limit_hit("g", "c", now=start) is None for _ in range(5))


@pytest.mark.django_db
def test_crowd_pages_are_rate_limited(settings, client):
    from tests.test_crowd_study import enter, validation_study

    settings.UNITSCOPE_RATE_LIMIT_ENABLED = True
    settings.UNITSCOPE_RATE_LIMITS = {"crowd_worker": "4/m", "crowd_entry": "2/m"}
    cache.clear()
    study = validation_study(name="rl", units=2)
    first, second = enter(study, 1), enter(study, 2)
    url = reverse("annotation:crowd_next", args=[first.code])
    statuses = [client.get(url).status_code for _ in range(5)]
    assert statuses[:4] == [302] * 4 or all(status != 429 for status in statuses[:4])
    limited = client.get(url)
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1
    assert b"Too many requests" in limited.content
    assert client.get(reverse("annotation:crowd_next", args=[second.code])).status_code != 429
    entry = reverse("annotation:crowd_entry", args=[study.token])
    assert [client.get(entry).status_code for _ in range(3)][-1] == 429
    assert client.get(entry, REMOTE_ADDR="127.0.0.9").status_code != 429  # per address


# -- unguessable names ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_worker_codes_and_tokens_come_from_secrets(monkeypatch):
    import secrets

    from annotation import common
    from tests.test_crowd_study import enter, validation_study

    study = validation_study(name="codes", units=2)
    workers = [enter(study, number) for number in range(40)]
    codes = [worker.code for worker in workers]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[0-9a-f]{32}", code) for code in codes)  # 128 random bits
    assert all(
        re.fullmatch(r"[0-9a-f]{16,}", token) for token in [study.token, *study.hits.values_list("token", flat=True)]
    )
    calls = []
    monkeypatch.setattr(common.secrets, "token_hex", lambda n: calls.append(n) or secrets.token_bytes(n).hex())
    worker = enter(study, 999)
    assert calls and sum(calls) * 8 >= 128 and len(worker.code) == 32


# -- login throttling (issue 20, item 7) ----------------------------------------------------------------------


@pytest.fixture
def throttle(settings, db):
    settings.UNITSCOPE_LOGIN_THROTTLE = {"account": "3/15m", "address": "5/15m"}
    cache.clear()
    yield
    cache.clear()


def test_logins_are_throttled_by_account_and_by_address(throttle, client, researcher, expert, monkeypatch):
    """Three wrong passwords lock the account (even the right password is refused, from any address, without the
    password being checked); five failures from one address lock that address for every account."""
    from django.contrib.auth import forms as auth_forms

    from tests.conftest import PASSWORD

    url = reverse("accounts:login")
    checked = []
    real_authenticate = auth_forms.authenticate
    monkeypatch.setattr(auth_forms, "authenticate", lambda *a, **k: checked.append(1) or real_authenticate(*a, **k))
    for _ in range(3):
        assert client.post(url, {"username": "rita", "password": "wrong"}).status_code == 200
    assert len(checked) == 3
    refused = client.post(url, {"username": "RITA", "password": PASSWORD})
    assert (
        refused.status_code == 429 and int(refused["Retry-After"]) >= 1 and b"Too many failed logins" in refused.content
    )
    elsewhere = Client(REMOTE_ADDR="10.0.0.7")
    assert elsewhere.post(url, {"username": "rita", "password": PASSWORD}).status_code == 429  # the account
    assert len(checked) == 3 and "_auth_user_id" not in client.session  # no password was checked
    # The address: two more failures (on any names) and it is locked for everyone, ed included.
    for name in ("nobody", "someone"):
        client.post(url, {"username": name, "password": "wrong"})
    assert client.post(url, {"username": "ed", "password": PASSWORD}).status_code == 429
    assert elsewhere.post(url, {"username": "ed", "password": PASSWORD}).status_code == 302  # another address
    # The admin's login counts and refuses the same way.
    admin_refused = Client(REMOTE_ADDR="10.0.0.8").post(
        reverse("admin:login"), {"username": "rita", "password": PASSWORD}
    )
    assert b"Too many failed logins" in admin_refused.content and "_auth_user_id" not in admin_refused.client.session


def test_a_correct_login_clears_the_account_but_not_the_address(throttle, client, researcher):
    from tests.conftest import PASSWORD

    url = reverse("accounts:login")
    for _ in range(2):
        client.post(url, {"username": "rita", "password": "wrong"})
    assert client.post(url, {"username": "rita", "password": PASSWORD}).status_code == 302
    client.logout()
    for _ in range(2):  # two more: the account starts again from zero
        client.post(url, {"username": "rita", "password": "wrong"})
    assert client.post(url, {"username": "rita", "password": PASSWORD}).status_code == 302
    client.logout()
    client.post(url, {"username": "rita", "password": "wrong"})  # the address's fifth failure
    assert client.post(url, {"username": "rita", "password": PASSWORD}).status_code == 429


# -- a shared cache by default (rate limits and login counts hold across web processes) ---------------------------


def test_the_default_cache_is_the_database_and_migrate_makes_its_table(transactional_db):
    """Without ``CACHE_URL`` the counters live in the database cache, which every web process shares (a
    per-process cache let 250 of 250 requests through a 120/min limit); ``migrate`` makes its table."""
    import subprocess
    import sys

    from django.core.management import call_command
    from django.db import connection

    env = {key: value for key, value in os.environ.items() if key != "CACHE_URL"}
    for module in ("unitscope.settings.local", "unitscope.settings.test"):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import django; django.setup(); from django.conf import settings; "
                "print(settings.CACHES['default']['BACKEND'])",
            ],
            env={**env, "DJANGO_SETTINGS_MODULE": module, "SECRET_KEY": "x"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "django.core.cache.backends.db.DatabaseCache", (module, out)
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE unitscope_cache")
    assert "unitscope_cache" not in connection.introspection.table_names()
    call_command("migrate", verbosity=0, interactive=False)
    assert "unitscope_cache" in connection.introspection.table_names()
    cache.set("shared", 7)
    assert cache.get("shared") == 7


# -- Content-Security-Policy and no inline scripts ---------------------------------------------------------


def test_every_response_carries_a_content_security_policy(client, researcher_client):
    for response in (
        client.get(reverse("accounts:login")),
        researcher_client.get(reverse("analysis:dashboard")),
        researcher_client.get("/api/", HTTP_ACCEPT="application/json"),
    ):
        policy = response["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
        assert directives["object-src"] == "'none'" and directives["base-uri"] == "'self'"
        assert "unsafe" not in directives["script-src"] and "form-action" not in directives  # MTurk's hand-back


def test_templates_have_no_inline_scripts_or_event_handlers():
    """The policy allows scripts from our own files only: an inline ``<script>`` or an ``on…=`` attribute in a
    template would not run (and would be a place for injected code to hide)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in (root / "templates").rglob("*.html"):
        text = path.read_text()
        for match in re.finditer(r"<script\b([^>]*)>", text, re.I):
            if "src=" not in match.group(1) and "application/json" not in match.group(1):
                offenders.append(f"{path.relative_to(root)}: inline <script>")
        for match in re.finditer(r"<[a-z][^>]*\s(on[a-z]+)\s*=", text, re.I):
            offenders.append(f"{path.relative_to(root)}: {match.group(1)}= handler")
    assert not offenders, "\n".join(offenders)


# -- researchers administer studies, not accounts (issue 20, item 8) ---------------------------------------------


def test_only_superusers_administer_users_and_groups(researcher_client, researcher, make_user):
    from django.contrib.auth.models import Group

    from accounts.models import User

    other = make_user("rob", "researcher")
    group = Group.objects.get(name="researcher")
    assert not group.permissions.filter(content_type__app_label__in=["accounts", "auth"]).exists()
    pages = [
        reverse("admin:accounts_user_changelist"),
        reverse("admin:accounts_user_add"),
        reverse("admin:accounts_user_change", args=[researcher.pk]),
        reverse("admin:auth_user_password_change", args=[other.pk]),
        reverse("admin:auth_group_changelist"),
        reverse("admin:auth_group_change", args=[group.pk]),
    ]
    for url in pages:
        assert researcher_client.get(url).status_code == 403, url
    # Making oneself superuser, or setting another researcher's password, through the admin's forms: refused.
    response = researcher_client.post(
        reverse("admin:accounts_user_change", args=[researcher.pk]),
        {"username": "rita", "is_superuser": "on", "is_staff": "on", "is_active": "on"},
    )
    assert response.status_code == 403
    response = researcher_client.post(
        reverse("admin:auth_user_password_change", args=[other.pk]),
        {"password1": "N3w-secret-pass!", "password2": "N3w-secret-pass!"},
    )
    assert response.status_code == 403
    researcher.refresh_from_db()
    other.refresh_from_db()
    assert not researcher.is_superuser and not other.check_password("N3w-secret-pass!")
    index = researcher_client.get(reverse("admin:index")).content.decode()
    assert "/admin/accounts/user/" not in index and "/admin/auth/group/" not in index
    boss = User.objects.create_superuser("boss", password="a-test-password-9")
    researcher_client.force_login(boss)
    assert all(researcher_client.get(url).status_code == 200 for url in pages)


def test_studies_are_changed_by_their_creator_only(client, researcher, make_user):
    """Closing a crowd study, blocking or paying its workers, reviewing its work, editing an expert study's
    synonyms, or changing either in the admin: another researcher gets 403 (reading stays open to all)."""
    from annotation.expert import services
    from annotation.models import ConceptSynonym, CrowdAssignment
    from tests.test_crowd_study import answer_everything, enter, validation_study
    from tests.test_expert_study import build_study_world, make_experts

    crowd = validation_study(name="own", units=2, created_by=researcher)
    worker = enter(crowd, 1)
    answer_everything(worker)
    expert_study = services.study_create(
        name="own-x", extraction=build_study_world(units=2), experts=make_experts(1), plan="full", created_by=researcher
    )
    other = make_user("rob", "researcher")
    client.force_login(other)
    assignment = CrowdAssignment.objects.filter(worker=worker).first()
    writes = [
        (reverse("annotation:crowd_study_detail", args=[crowd.pk]), {"open": "0"}),
        (
            reverse("annotation:crowd_workers", args=[crowd.pk]),
            {"form": "block", "worker": worker.pk, "action": "block", "reason": "x"},
        ),
        (
            reverse("annotation:crowd_review", args=[crowd.pk]),
            {"assignments": str(assignment.pk), "decision": "reject", "reason": "x"},
        ),
        (reverse("annotation:study_synonyms", args=[expert_study.pk]), {"name": "auto", "maps_to": "car"}),
        (reverse("admin:annotation_study_change", args=[expert_study.pk]), {"name": "taken"}),
        (reverse("admin:annotation_study_delete", args=[expert_study.pk]), {"post": "yes"}),
        (reverse("admin:annotation_crowdstudy_delete", args=[crowd.pk]), {"post": "yes"}),
    ]
    for url, data in writes:
        assert client.get(url).status_code in (200, 403, 405), url  # reading: the site's pages stay open
        assert client.post(url, data).status_code == 403, url
    crowd.refresh_from_db()
    worker.refresh_from_db()
    assignment.refresh_from_db()
    expert_study.refresh_from_db()
    assert crowd.is_open and not worker.blocked and assignment.state != "rejected"
    assert expert_study.name == "own-x" and not ConceptSynonym.objects.exists()
    client.force_login(researcher)  # the creator may
    assert client.post(*writes[0]).status_code == 302
    assert client.post(*writes[1]).status_code == 302
    crowd.refresh_from_db()
    worker.refresh_from_db()
    assert not crowd.is_open and worker.blocked


def test_the_review_page_sends_back_to_this_site_only(researcher_client, researcher):
    from tests.test_crowd_study import validation_study

    study = validation_study(name="redir", units=2, created_by=researcher)
    url = reverse("annotation:crowd_review", args=[study.pk])
    for back in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        response = researcher_client.post(url, {"back": back, "decision": "approve", "assignments": ""})
        assert response.status_code == 302 and response["Location"] == url, (back, response["Location"])
    assert researcher_client.post(url, {"back": url + "?state=rejected"})["Location"] == url + "?state=rejected"


# -- control characters refused at the door (issue 20, item 9) -------------------------------------------------


@pytest.mark.django_db
def test_control_characters_in_ids_are_refused_with_400(client):
    """NUL (and other control characters) in PROLIFIC_PID, workerId, assignmentId, the study token or the worker
    code: 400 before any view or query runs (PostgreSQL refused NUL in text and the request was a 500)."""
    from annotation.crowd.services import hit_next_for_worker
    from tests.test_crowd_study import enter, validation_study

    study = validation_study(name="nul", units=2, external_submit_hosts=["https://workersandbox.mturk.com"])
    worker = enter(study, 1)
    assignment = hit_next_for_worker(worker=worker)
    prolific = reverse("annotation:crowd_entry_adapter", args=[study.token, "prolific"])
    mturk = reverse("annotation:crowd_entry_adapter", args=[study.token, "mturk"])
    good_prolific = {"PROLIFIC_PID": "p1", "STUDY_ID": "s", "SESSION_ID": "x1"}
    good_mturk = {
        "workerId": "W1",
        "assignmentId": "A1",
        "hitId": "H1",
        "turkSubmitTo": "https://workersandbox.mturk.com",
    }
    assert client.get(prolific, good_prolific).status_code == 302
    cases = [(prolific, {**good_prolific, key: f"a{bad}b"}) for key in good_prolific for bad in ("\x00", "\x1b")]
    cases += [(mturk, {**good_mturk, key: f"a{bad}b"}) for key in good_mturk for bad in ("\x00", "\x7f")]
    for url, params in cases:
        response = client.get(url, params)
        assert response.status_code == 400, (url, params, response.status_code)
        assert b"Control characters" in response.content
    for path in (
        f"/crowd/s/{study.token}%00/",
        f"/crowd/s/{study.token}%00/prolific/?PROLIFIC_PID=p",
        f"/crowd/w/{worker.code}%00/",
        f"/crowd/w/{worker.code}/a/{assignment.token}%00/",
        f"/crowd/w/{worker.code}/a/{assignment.token}/done/?ctx=%00",
        "/research/crowd/1%0a/",
    ):
        assert client.get(path).status_code == 400, path
        assert client.post(path, {"answer": "yes"}).status_code == 400, path
    # Tab and newline are fine in a query value; not a reason to refuse an ordinary page.
    assert client.get(reverse("accounts:login"), {"next": "/a\tb"}).status_code == 200


# -- spreadsheet formula injection (issue 20, item 5) -----------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://x","y")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tindented", "\r=x"]


def _formula_cells(text: str) -> list[str]:
    import csv
    import io

    from unitscope.spreadsheets import FORMULA_STARTS, PLAIN_NUMBER

    return [
        cell
        for row in csv.reader(io.StringIO(text, newline=""))
        for cell in row
        if cell.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(cell)
    ]


@pytest.mark.django_db
def test_every_csv_export_neutralises_formulas(researcher_client, researcher):
    """Descriptions, worker ids, labels, rater names, items and concept names that start like a formula reach
    ``judgments.csv``, ``results.csv`` (expert and crowd), ``answers.csv``: every such cell is written with a
    leading ``'``, and the text is otherwise kept; numbers stay numbers."""
    import csv
    import io

    from annotation.crowd import exports as crowd_exports
    from annotation.crowd import hits as crowd_hits
    from annotation.crowd.services import assignment_submit, hit_next_for_worker, worker_enter
    from annotation.expert import exports, services
    from annotation.models import CrowdTaskKind, Judgment, Study
    from tests.test_crowd_study import build_crowd_world

    # Crowd: a description study, workers named like formulas describing units with formulas.
    crowd = crowd_hits.crowd_study_create(
        name="=crowd",
        kind=CrowdTaskKind.DESCRIPTION,
        extractions=build_crowd_world(name="f", units=2),
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
        created_by=researcher,
        description=FORMULAS[0],
    )
    for number, text in enumerate(FORMULAS):
        worker, _ = worker_enter(study=crowd, adapter="link", external_id=text)
        while (assignment := hit_next_for_worker(worker=worker)) is not None:
            assignment_submit(assignment=assignment, description=f"{text}{number}", confidence=3)
    crowd.hits.update(label=FORMULAS[3])
    # Expert: imported judgments with formula items, raters and concepts.
    buffer = io.StringIO()
    csv.writer(buffer).writerows(
        [
            ("item", "rater", "answer", "concept"),
            *[(f"{text.strip()}{n}", f"{text.strip()}{n}", "part", "car") for n, text in enumerate(FORMULAS)],
        ]
    )
    services.judgments_import(study_name="=expert", text=buffer.getvalue(), created_by=researcher)
    study = Study.objects.get(name="=expert")
    Judgment.objects.filter(task__study=study).update(concept=FORMULAS[1])
    checked = []
    for name in [name for name in exports.STUDY_EXPORT_FILES if name.endswith(".csv")]:
        response = researcher_client.get(reverse("annotation:study_export_file", args=[study.pk, name]))
        checked.append((name, response))
    for name in [name for name in crowd_exports.CROWD_EXPORT_FILES if name.endswith(".csv")]:
        response = researcher_client.get(reverse("annotation:crowd_study_export", args=[crowd.pk, name]))
        checked.append((f"crowd {name}", response))
    assert {name for name, _ in checked} >= {"judgments.csv", "results.csv", "crowd answers.csv", "crowd results.csv"}
    for name, response in checked:
        assert response.status_code == 200, name
        text = (b"".join(response.streaming_content) if response.streaming else response.content).decode()
        assert not _formula_cells(text), (name, _formula_cells(text)[:5])
        assert "'=HYPERLINK" in text or "'+1+cmd" in text or "'@SUM" in text, name  # kept, neutralised
    # Our own file reads back as written: the import undoes the quote.
    from annotation.expert.services import judgments_parse

    exported = "item,rater,answer,concept\n'=a,'-b,part,\n"
    assert [(row.item, row.rater) for row in judgments_parse(exported)] == [("=a", "-b")]


def test_csv_cells_are_neutralised_by_one_helper():
    from unitscope.spreadsheets import csv_field, spreadsheet_safe, spreadsheet_unquote

    for text in FORMULAS:
        assert spreadsheet_safe(text) == "'" + text and spreadsheet_unquote(spreadsheet_safe(text)) == text
    for value in (-0.25, 3, "-0.25", "+1e-3", "plain", "", None, "a=b"):
        assert spreadsheet_safe(value) == value
    assert csv_field("=a,b") == '"\'=a,b"' and csv_field("-1") == "-1"


def test_every_csv_writer_in_the_project_is_the_safe_one():
    """Exports (study, crowd, run archives) write CSV through ``unitscope.spreadsheets.csv_writer`` only; the
    engine's dataset writers (Broden files, read back by the importer) are data formats, not exports."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for folder in ("accounts", "analysis", "annotation", "api", "unitscope"):
        for path in (root / folder).rglob("*.py"):
            relative = path.relative_to(root)
            if relative.parts[:2] == ("analysis", "engine") or relative == Path("unitscope/spreadsheets.py"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if re.search(r"csv\.(writer|DictWriter)\(|\.to_csv\(", line):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- crowd identity: a platform id is not a credential (issue 20, items 2, 3 and 6) ------------------------------


def _prolific(study, pid: str, session: str) -> str:
    from urllib.parse import urlencode

    return (
        reverse("annotation:crowd_entry_adapter", args=[study.token, "prolific"])
        + "?"
        + urlencode({"PROLIFIC_PID": pid, "STUDY_ID": "S", "SESSION_ID": session})
    )


def _work_through(client, url: str, answer: str, limit: int = 40) -> str:
    """Follow a visit from ``url``, answering every HIT with ``answer``; the last page's text."""

    def visit(method, address, **data):
        response = getattr(client, method)(address, data, follow=True)
        # The page shown is at the last redirect's target, or at the address itself when none was followed.
        return response, (response.redirect_chain[-1][0] if response.redirect_chain else address)

    response, location = visit("get", url)
    for _ in range(limit):
        if location.endswith("/done/"):  # gold feedback: on to the visit's next HIT
            response, location = visit("get", location.rsplit("/a/", 1)[0] + "/")
            continue
        if "/a/" not in location:
            return response.content.decode()
        response, location = visit("post", location, answer=answer)
    raise AssertionError(f"the visit did not end within {limit} pages")


@pytest.mark.django_db
def test_a_known_platform_id_does_not_hand_over_the_workers_session():
    """Someone who types a Prolific or MTurk worker's id into the entry link gets a visit of their own: not the
    worker's code, not their leased HITs, and the answers they inject cannot block the worker."""
    from annotation.models import CrowdAssignment, CrowdWorker
    from tests.test_crowd_study import add_gold, validation_study

    study = validation_study(
        name="idp",
        units=6,
        gold_rate=0.8,
        block_below=0.6,
        block_min_gold=3,
        hits_per_session=20,
        external_submit_hosts="www.mturk.com",
    )
    add_gold(study, 12, answer="no")
    victim = Client()
    first = victim.get(_prolific(study, "VICTIM", "SESSION-V"), follow=True)
    victim_task = first.redirect_chain[-1][0]
    assert "/a/" in victim_task
    worker = CrowdWorker.objects.get(external_id="VICTIM")
    assert worker.code not in victim_task  # the personal code never reaches a platform worker's URL
    attacker = Client()
    entered = attacker.get(_prolific(study, "VICTIM", "GUESSED"), follow=True)
    assert all(worker.code not in url for url, _ in entered.redirect_chain)
    held = CrowdAssignment.objects.get(worker=worker, external_session="SESSION-V")
    credential = entered.redirect_chain[-1][0].split("/crowd/w/")[1].split("/")[0]
    for name in ("annotation:crowd_task", "annotation:crowd_after"):
        assert attacker.get(reverse(name, args=[credential, held.token])).status_code == 404
    assert attacker.post(reverse("annotation:crowd_return", args=[credential, held.token])).status_code == 404
    assert attacker.get(reverse("annotation:crowd_next", args=[worker.code])).status_code == 404
    # The attacker answers every gold item wrongly: their visit stops, the worker is not blocked.
    page = _work_through(attacker, entered.redirect_chain[-1][0], "yes")
    assert "No more HITs in this visit" in page
    worker.refresh_from_db()
    held.refresh_from_db()
    assert not worker.blocked and held.state == "leased"
    assert victim.get(victim_task).status_code == 200
    # MTurk: another assignmentId under a known workerId reaches nothing of the worker's.
    mturk = reverse("annotation:crowd_entry_adapter", args=[study.token, "mturk"])
    turk = {"workerId": "TURKER", "hitId": "H", "turkSubmitTo": "https://www.mturk.com"}
    own = Client().get(mturk, {**turk, "assignmentId": "A-REAL"}, follow=True).redirect_chain[-1][0]
    forged = Client().get(mturk, {**turk, "assignmentId": "A-FORGED"}, follow=True).redirect_chain[-1][0]
    assert "/a/" in own and own.split("/a/")[1] != forged.split("/a/")[-1]
    turker = CrowdWorker.objects.get(external_id="TURKER")
    assert turker.code not in own + forged
    # A visit credential is signed: changing its session or worker makes it unknown.
    assert Client().get(reverse("annotation:crowd_next", args=[credential[:-2] + "xx"])).status_code == 404


@pytest.mark.django_db
def test_gold_placement_comes_from_a_server_side_secret(settings):
    """Which of a worker's HITs are gold depends on SECRET_KEY and the worker's row, not on anything the worker
    sees (the code in their URL seeded it: 26 of 26 gold items were predicted)."""
    from annotation.crowd.services import _gold_due
    from tests.test_crowd_study import enter, validation_study

    worker = enter(validation_study(name="goldp", units=2), 1)
    draws = [_gold_due(worker, number, 0.3) for number in range(1, 201)]
    assert 30 < sum(draws) < 90  # about the rate
    worker.code = "0" * 32
    assert [_gold_due(worker, number, 0.3) for number in range(1, 201)] == draws  # the code plays no part
    settings.SECRET_KEY = "another-secret-key-for-this-test"
    assert [_gold_due(worker, number, 0.3) for number in range(1, 201)] != draws


@pytest.mark.django_db
def test_prolific_codes_are_per_session_and_need_the_sessions_work(researcher):
    """Returning HITs earns nothing: the code comes after ``hits_per_session`` submitted HITs, and it is the
    session's own (another session's code differs); the answers export lists each earning session's code."""
    from annotation.crowd.adapters import session_completion_code
    from annotation.crowd.exports import crowd_answer_rows
    from tests.test_crowd_study import validation_study

    study = validation_study(name="codes-p", units=4, hits_per_session=3, created_by=researcher)
    shirker = Client()
    response = shirker.get(_prolific(study, "P-LAZY", "S-LAZY"), follow=True)
    task = response.redirect_chain[-1][0]
    shirker.post(task, {"answer": "yes"})
    for _ in range(10):  # return every other HIT
        response = shirker.get(task.rsplit("/a/", 1)[0] + "/", follow=True)
        location = response.redirect_chain[-1][0] if response.redirect_chain else ""
        if "/a/" not in location:
            break
        shirker.post(location + "return/")
    text = response.content.decode()
    assert study.completion_code not in text and "1 of the 3 HITs" in text
    worker = Client()
    page = _work_through(worker, _prolific(study, "P-GOOD", "S-GOOD"), "no")
    code = session_completion_code(study, "S-GOOD")
    assert code in page and code != session_completion_code(study, "S-LAZY")
    assert code.startswith(study.completion_code + "-") and page.count(code) >= 1
    codes = {row["external_session"]: row["completion_code"] for row in crowd_answer_rows(study)}
    assert codes["S-GOOD"] == code and codes["S-LAZY"] is None


# -- a large judgment import fits in a request (issue 20, item 10) -----------------------------------------------


@pytest.mark.django_db
def test_a_ten_thousand_row_import_is_done_in_bulk(researcher, django_assert_max_num_queries):
    """10,000 rows (116 KiB, under the 5 MiB limit) used to be ~30,000 statements and outlived the request's 60 s;
    in bulk they are a few hundred at most (SQLite; a dozen on PostgreSQL), revisions included."""
    from annotation.expert.services import judgments_import
    from annotation.models import Judgment

    rows = [
        f"item-{n % 2500},rater-{n // 2500},{'part' if n % 3 else 'no'},{'wheel' if n % 3 else ''}"
        for n in range(10_000)
    ]
    text = "item,rater,answer,concept\n" + "\n".join(rows)
    with django_assert_max_num_queries(250):  # SQLite caps a statement at 999 variables: ~90 rows an INSERT
        counts = judgments_import(study_name="big", text=text, created_by=researcher)
    assert counts["created"] == 10_000 and counts["items"] == 2500 and counts["raters"] == 4
    assert Judgment.objects.filter(task__study__name="big").count() == 10_000
    revised = text.replace(",no,", ",other,")
    with django_assert_max_num_queries(250):  # SQLite caps a statement at 999 variables: ~90 rows an INSERT
        counts = judgments_import(study_name="big", text=revised, created_by=researcher)
    changed = sum(1 for n in range(10_000) if n % 3 == 0)
    assert counts["revised"] == changed and counts["unchanged"] == 10_000 - changed
    current = Judgment.objects.current().filter(task__study__name="big")
    assert current.count() == 10_000 and current.filter(answer="other").count() == changed
    assert Judgment.objects.filter(revision_of__isnull=False, answer="other").count() == changed


# -- blindness: pictures under each assignment's own URL, purity files alike (issue 20, item 4) --------------------


@pytest.mark.django_db
def test_each_hit_has_its_own_picture_url_without_file_dates(client, settings, tmp_path):
    """Every label of a unit used to load one media URL (the grid's); now each assignment has its own, served
    without Last-Modified or ETag."""
    from annotation.crowd.services import hit_next_for_worker
    from tests.test_crowd_study import enter, validation_study

    settings.MEDIA_ROOT = tmp_path
    study = validation_study(name="pics", units=2, assignments_per_hit=1)
    worker = enter(study, 1)
    urls, grids = [], []
    while (assignment := hit_next_for_worker(worker=worker)) is not None:
        page = client.get(reverse("annotation:crowd_task", args=[worker.code, assignment.token])).content.decode()
        src = re.search(r'<figure class="crowd-grid">\s*<img src="([^"]+)"', page).group(1)
        assert src == reverse("annotation:crowd_image", args=[worker.code, assignment.token])
        assert assignment.hit.grid.path not in page and "/media/" not in src
        picture = client.get(src)
        assert picture.status_code == 200 and picture["Content-Type"] == "image/png"
        assert "Last-Modified" not in picture and "ETag" not in picture
        assert picture.content == (tmp_path / assignment.hit.grid.path).read_bytes()
        urls.append(src)
        grids.append(assignment.hit.grid_id)
        last = assignment
        client.post(reverse("annotation:crowd_task", args=[worker.code, assignment.token]), {"answer": "yes"})
    assert len(urls) == len(set(urls)) == 4 and len(set(grids)) == 2  # two labels per unit, four URLs
    other = enter(study, 2)
    assert client.get(reverse("annotation:crowd_image", args=[other.code, last.token])).status_code == 404


@pytest.mark.django_db
def test_purity_pictures_are_padded_to_one_size(settings, tmp_path, layers):
    """Purity pictures of a study reach workers at one size (the pattern's source was guessed from file size),
    and still decode to the same pixels."""
    import io

    import numpy as np
    from PIL import Image

    from analysis.services.grids import store_grid
    from annotation.crowd.images import hit_picture
    from annotation.models import CrowdTaskKind
    from tests.test_crowd_reports import make_study, purity_hit

    settings.MEDIA_ROOT = tmp_path
    study = make_study(layers, kind=CrowdTaskKind.PURITY, name="pad")
    rng = np.random.default_rng(0)
    small = store_grid(Image.new("RGB", (40, 40), "white"), style="purity")
    large = store_grid(Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)), style="purity")
    hits = [purity_hit(study, layers, "conv5", unit, {}) for unit in (0, 1)]
    for hit, grid in zip(hits, (small, large)):
        hit.grid = grid
        hit.save()
    pictures = [hit_picture(hit) for hit in hits]
    assert len(pictures[0]) == len(pictures[1]) == (tmp_path / large.path).stat().st_size
    assert (tmp_path / small.path).stat().st_size < len(pictures[0])
    for picture, grid in zip(pictures, (small, large)):
        with Image.open(io.BytesIO(picture)) as decoded, Image.open(tmp_path / grid.path) as stored:
            assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(stored.convert("RGB")))


@pytest.mark.django_db
def test_failing_the_qualification_under_a_known_id_does_not_lock_the_worker_out():
    """Someone who enters with a worker's Prolific id and fails the qualification test on purpose uses up their
    own visit's attempts, not the worker's: the worker's own session still gets the test and can pass it."""
    from annotation.models import CrowdWorker, HitRole
    from tests.test_crowd_study import add_gold, validation_study

    study = validation_study(name="qual-id", units=3)
    add_gold(study, 4, answer="yes", role=HitRole.QUALIFICATION)
    add_gold(study, 4, answer="no", role=HitRole.QUALIFICATION)
    study.qualification_required, study.qualification_size, study.qualification_pass_rate = True, 4, 1.0
    study.save()
    truth = dict(study.hits.filter(role=HitRole.QUALIFICATION).values_list("token", "gold_answer"))
    attacker = Client()
    qualification = attacker.get(_prolific(study, "VICTIM", "GUESSED"), follow=True).redirect_chain[-1][0]
    assert qualification.endswith("/qualification/")
    for _ in range(study.qualification_max_attempts):
        tokens = set(re.findall(r'name="q-([0-9a-f]+)"', attacker.get(qualification).content.decode()))
        attacker.post(qualification, {f"q-{token}": "no" if truth[token] == "yes" else "yes" for token in tokens})
    visit_home = qualification.split("qualification/")[0]
    assert "Qualification not passed" in attacker.get(visit_home).content.decode()
    worker = CrowdWorker.objects.get(external_id="VICTIM")
    assert worker.qualified is not False
    victim = Client()
    page = victim.get(_prolific(study, "VICTIM", "REAL-SESSION"), follow=True)
    tokens = set(re.findall(r'name="q-([0-9a-f]+)"', page.content.decode()))
    assert "/qualification/" in page.redirect_chain[-1][0] and len(tokens) == 4
    victim.post(page.redirect_chain[-1][0], {f"q-{token}": truth[token] for token in tokens})
    started = victim.get(page.redirect_chain[-1][0].split("qualification/")[0], follow=True)
    assert "/a/" in started.redirect_chain[-1][0]
    worker.refresh_from_db()
    assert worker.qualified is True


@pytest.mark.django_db
def test_a_label_that_is_both_human_and_dissection_is_one_hit_credited_to_both():
    """When a unit's canonical description is its dissection label, the worker saw one question twice and knew
    the third was the control: now one HIT, whose answers count for both origins in ND'18 Table 3."""
    from annotation.crowd import hits as crowd_hits
    from annotation.crowd import reports
    from annotation.crowd.services import assignment_submit, hit_next_for_worker
    from annotation.models import CrowdTaskKind, LabelOrigin, ValidationRound
    from tests.test_crowd_study import answer_everything, build_crowd_world, enter

    extractions = build_crowd_world(name="dup", units=2)  # dissection: unit 0 "car", unit 1 "wheel"
    describe = crowd_hits.crowd_study_create(
        name="d-dup",
        kind=CrowdTaskKind.DESCRIPTION,
        extractions=extractions,
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
    )
    for number in range(3):
        worker = enter(describe, number)
        while (assignment := hit_next_for_worker(worker=worker)) is not None:
            text = "car" if assignment.hit.unit.index == 0 else "blue sky"
            assignment_submit(assignment=assignment, description=text, confidence=4)
    validate = crowd_hits.crowd_study_create(
        name="v-dup",
        kind=CrowdTaskKind.VALIDATION,
        extractions=extractions,
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
        assignments_per_hit=1,
    )
    by_unit = {}
    for hit in validate.hits.exclude(validation_round=ValidationRound.SELECTION).select_related("unit"):
        by_unit.setdefault(hit.unit.index, []).append(hit)
    labels = [hit.label for hit in by_unit[0]]
    assert len(labels) == len(set(labels)) == 2  # "car" once (dissection + human), and a control
    shared = next(hit for hit in by_unit[0] if hit.label == "car")
    assert shared.source["also_origins"] == [LabelOrigin.HUMAN] and shared.label_origin == LabelOrigin.DISSECTION
    assert {hit.label_origin for hit in by_unit[1]} == {LabelOrigin.DISSECTION, LabelOrigin.HUMAN, LabelOrigin.CONTROL}
    answer_everything(enter(validate, 9), answer="yes")
    votes = {(vote.unit, vote.origin) for vote in reports.study_validation_votes(validate)}
    assert {(0, LabelOrigin.DISSECTION), (0, LabelOrigin.HUMAN)} <= votes
