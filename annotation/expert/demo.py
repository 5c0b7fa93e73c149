"""The demo's expert side: two expert accounts and a GG'18-plan study of one layer, already answered by a
simulated pair of raters so that its report is populated while the experts start."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from accounts.models import User
from accounts.roles import Role
from accounts.services import user_ensure

from ..common import demo_passwords_ensure, study_extraction_for
from ..models import Study, StudyPlan
from .services import simulated_raters_run, study_create

DEMO_STUDY = "demo-conv5"
DEMO_EXPERTS = ("expert1", "expert2")


def demo_expert_study_ensure(
    *,
    network: str = "demo-net",
    layer: str = "conv5",
    dataset: str = "probe-world",
    study_name: str = DEMO_STUDY,
    experts: Sequence[str] = DEMO_EXPERTS,
    overlap_class: str | None = "car",
    units: Sequence[int] | None = None,
    simulated_raters: int = 2,
    error_rate: float = 0.15,
    seed: int = 0,
    researcher: str = "researcher",
) -> dict[str, Any]:
    """The demo's expert study (idempotent): two expert accounts, a GG'18-plan study of ``layer`` and a
    simulated pair that has answered every task, so the report is populated while the experts start.

    Returns ``{"study": name, "study_id": pk, "credentials": {username: password}, "created": bool,
    "simulated": {...}}``. Passwords are kept in the data dir's ``demo-credentials.txt``.
    """
    credentials = demo_passwords_ensure(experts)
    users = []
    for username in experts:
        user, created = user_ensure(username=username, password=credentials[username], role=Role.EXPERT)
        if not created and not user.check_password(credentials[username]):
            credentials[username] = "(unchanged: set before the demo stored it)"
        users.append(user)
    study = Study.objects.filter(name=study_name).first()
    created = study is None
    if study is None:
        extraction = study_extraction_for(network=network, layer=layer, dataset=dataset)
        classes = list(extraction.class_names)
        study = study_create(
            name=study_name,
            extraction=extraction,
            experts=users,
            plan=StudyPlan.PAPER,
            object_classes=classes,
            overlap_class=overlap_class if overlap_class in classes else None,
            units=units,
            seed=seed,
            description="The demo's GG'18 expert study: two experts split the classes and share one; a simulated "
            "pair answers everything from the probe world's truth.",
            created_by=User.objects.filter(username=researcher).first(),
        )
    simulated = simulated_raters_run(study=study, raters=simulated_raters, error_rate=error_rate, seed=seed)
    return {
        "study": study.name,
        "study_id": study.pk,
        "credentials": credentials,
        "created": created,
        "simulated": simulated,
    }
