"""Each role × each page: who may open it (200), who is sent to log in (302), who is refused (403)."""

import pytest
from django.urls import reverse

ANON, RESEARCHER, EXPERT, CROWD = "anonymous", "researcher", "expert", "crowd"

# (url name, args, roles allowed)
PAGES = [
    ("analysis:dashboard", [], {RESEARCHER}),
    ("analysis:run_list", [], {RESEARCHER}),
    ("analysis:selfcheck", [], {RESEARCHER}),
    ("analysis:run_detail", ["RUN"], {RESEARCHER}),
    ("analysis:run_status", ["RUN"], {RESEARCHER}),
    ("annotation:expert_home", [], {EXPERT}),
    ("annotation:crowd_home", [], {CROWD}),
]


@pytest.fixture
def run(db):
    from analysis.models import Run

    return Run.objects.create(kind="selfcheck", params={}, params_hash="x")


@pytest.mark.parametrize("role", [ANON, RESEARCHER, EXPERT, CROWD])
@pytest.mark.parametrize("name,args,allowed", PAGES)
def test_page_access_by_role(client, make_user, run, role, name, args, allowed):
    if role != ANON:
        client.force_login(make_user(f"user-{role}", role))
    url = reverse(name, args=[run.pk if arg == "RUN" else arg for arg in args])
    response = client.get(url)
    if role in allowed:
        assert response.status_code == 200
    elif role == ANON:
        assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login"))
    else:
        assert response.status_code == 403


@pytest.mark.parametrize(
    "role,expected",
    [(RESEARCHER, "analysis:dashboard"), (EXPERT, "annotation:expert_home"), (CROWD, "annotation:crowd_home")],
)
def test_each_role_lands_on_its_home(client, make_user, role, expected):
    client.force_login(make_user(f"user-{role}", role))
    response = client.get(reverse("accounts:home"))
    assert response.status_code == 302 and response["Location"] == reverse(expected)


def test_user_without_role_is_told_so(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password="x"))
    response = client.get(reverse("accounts:home"))
    assert response.status_code == 403 and b"No role yet" in response.content


@pytest.mark.parametrize("role,allowed", [(RESEARCHER, True), (EXPERT, False), (CROWD, False)])
def test_admin_is_for_researchers(client, make_user, role, allowed):
    client.force_login(make_user(f"user-{role}", role))
    response = client.get(reverse("admin:analysis_run_changelist"))
    assert (response.status_code == 200) is allowed
    if not allowed:
        assert response.status_code == 302


@pytest.mark.parametrize("role,status", [(RESEARCHER, 302), (EXPERT, 403), (CROWD, 403)])
def test_only_researchers_cancel_runs(client, make_user, run, role, status):
    client.force_login(make_user(f"user-{role}", role))
    response = client.post(reverse("analysis:run_cancel", args=[run.pk]))
    assert response.status_code == status
    run.refresh_from_db()
    assert (run.status == "cancelled") is (role == RESEARCHER)


def test_login_and_logout(client, researcher):
    from tests.conftest import PASSWORD

    response = client.post(reverse("accounts:login"), {"username": "rita", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("analysis:dashboard")).status_code == 200
    assert client.post(reverse("accounts:logout")).status_code == 302
    assert client.get(reverse("analysis:dashboard")).status_code == 302


def test_selfcheck_form_rejects_bad_input(researcher_client):
    from analysis.models import Run

    response = researcher_client.post(
        reverse("analysis:selfcheck"), {"matmul_size": 0, "conv_batch": 2, "conv_image_size": 32, "repeats": 1}
    )
    assert response.status_code == 200 and b"greater than or equal to 16" in response.content
    assert not Run.objects.exists()
