"""How crowd workers arrive and how their work is handed back: one interface, three adapters (issue 8 item 3).

* :class:`LinkAdapter` — UnitScope's own links: ``/crowd/s/<study token>/`` makes a worker (a signed-in crowd
  account is always the same worker) and sends them to ``/crowd/w/<worker code>/``, their personal link.
* :class:`MTurkAdapter` — the Mechanical Turk ExternalQuestion protocol (REFERENCE.md): the page is opened in an
  iframe with ``assignmentId``, ``hitId``, ``workerId`` and ``turkSubmitTo``; a preview carries
  ``assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE`` and is shown but cannot be submitted; one external assignment is
  one UnitScope HIT, and the result is handed back as an HTML form POST to ``turkSubmitTo +
  "/mturk/externalSubmit"`` containing ``assignmentId`` (and the answers). ``turkSubmitTo`` must name one of the
  study's ``external_submit_hosts``.
* :class:`ProlificAdapter` — Prolific-style: ``PROLIFIC_PID``, ``STUDY_ID``, ``SESSION_ID``; once the session
  submitted ``hits_per_session`` HITs, the session's own completion code is shown (:func:`session_completion_code`).

External ids are not authentication (Prolific says so; anyone who learns a worker's id can type it into the entry
URL): they only name the worker, so a platform entry never hands over the worker's personal code. It gets a
*visit* credential instead (:func:`visit_dumps`): the worker's row and the platform's own visit key (MTurk's
``assignmentId``, Prolific's ``SESSION_ID``, both unknown to anyone but the worker) signed with ``SECRET_KEY``.
A visit sees only the assignments leased in it, and a visit whose gold answers fall below the study's bar gets
no more HITs without blocking the worker (someone else's answers under a known id cannot block the real
worker). Own links are different: the worker code is a secret the worker was given, their personal link.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from django.core import signing
from django.utils.crypto import salted_hmac

from ..models import (
    MTURK_PREVIEW_ASSIGNMENT,
    CrowdAdapter,
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdStudy,
    CrowdWorker,
)

VISIT_SALT = "annotation.crowd-visit"
VISIT_KEYS = ("external_assignment_id", "external_session")
"""The platform's key of one visit: an MTurk assignment, a Prolific session."""
HANDED_IN = (CrowdAssignmentState.SUBMITTED, CrowdAssignmentState.APPROVED, CrowdAssignmentState.REJECTED)
"""Assignments a visit handed in (a rejected answer was still work done in the session)."""
PROLIFIC_COMPLETE_URL = "https://app.prolific.com/submissions/complete?cc={code}"
MTURK_SUBMIT_PATH = "/mturk/externalSubmit"


@dataclass(frozen=True)
class Entry:
    """What an adapter read from an entry URL."""

    external_id: str | None = None
    preview: bool = False
    external: dict[str, str] = field(default_factory=dict)
    """Fields stored on the leased assignment: external_assignment_id, external_hit_id, submit_to,
    external_session."""
    error: str = ""


@dataclass(frozen=True)
class Handoff:
    """What the worker sees after a submission.

    ``kind``: ``continue`` (next HIT), ``form`` (an HTML form POSTed to ``url`` with ``fields``: MTurk), ``code``
    (a completion ``code`` and a ``url`` to return to the platform: Prolific), ``short`` (the visit ended before
    the work a code needs), ``done`` (nothing more to do)."""

    kind: str
    url: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    code: str = ""
    submitted: int = 0
    """``short``: how many HITs the visit submitted."""


class Adapter(ABC):
    """The interface: read an entry, decide what follows a submission."""

    name: ClassVar[str]
    label: ClassVar[str]
    context_keys: ClassVar[tuple[str, ...]] = ()
    """Hand-off context a worker's next-HIT request must carry (their platform assignment or session)."""

    @abstractmethod
    def entry(self, params: Mapping[str, str], *, study: CrowdStudy, user=None) -> Entry:
        """Who enters, from the platform's query parameters (or the logged-in crowd account)."""

    def session_done(self, *, worker: CrowdWorker, context: Mapping[str, str]) -> bool:
        """Whether the worker's visit is complete (no further HIT should be handed out in it)."""
        return False

    def after_submit(self, *, assignment: CrowdAssignment) -> Handoff:
        return Handoff("continue")

    def finished(self, *, worker: CrowdWorker, context: Mapping[str, str]) -> Handoff:
        """What to show when the visit is over (or no HIT is left)."""
        return Handoff("done")

    @abstractmethod
    def entry_url_template(self, study: CrowdStudy, base: str) -> str:
        """The URL a researcher gives the platform (with its placeholders)."""


class LinkAdapter(Adapter):
    name, label = CrowdAdapter.LINK, "Own link"

    def entry(self, params, *, study, user=None):
        return Entry(external_id=None)

    def entry_url_template(self, study, base):
        return f"{base}/crowd/s/{study.token}/"


def submit_to_allowed(*, study: CrowdStudy, submit_to: str) -> bool:
    """Whether ``turkSubmitTo`` names one of the study's allowed hosts over http(s) (answers are posted there)."""
    try:
        parts = urlsplit(submit_to)
    except ValueError:
        return False
    hosts = set(study.external_submit_hosts.split())
    host = parts.hostname or ""
    port_host = f"{host}:{parts.port}" if parts.port else host
    return parts.scheme in ("https", "http") and (host in hosts or port_host in hosts)


class MTurkAdapter(Adapter):
    name, label = CrowdAdapter.MTURK, "MTurk ExternalQuestion"
    context_keys = ("external_assignment_id", "submit_to")

    def entry(self, params, *, study, user=None):
        assignment_id = (params.get("assignmentId") or "").strip()
        if not assignment_id or assignment_id == MTURK_PREVIEW_ASSIGNMENT:
            return Entry(preview=True)
        worker_id, hit_id = (params.get("workerId") or "").strip(), (params.get("hitId") or "").strip()
        submit_to = (params.get("turkSubmitTo") or "").strip().rstrip("/")
        if not worker_id or not submit_to:
            return Entry(error="This link lacks workerId or turkSubmitTo: open it from the HIT.")
        if not submit_to_allowed(study=study, submit_to=submit_to):
            return Entry(error="This HIT's turkSubmitTo is not a host this study hands work back to.")
        return Entry(
            external_id=worker_id,
            external={
                "external_assignment_id": assignment_id[:128],
                "external_hit_id": hit_id[:128],
                "submit_to": submit_to,
            },
        )

    def session_done(self, *, worker, context):
        """One UnitScope HIT per MTurk assignment: done once that assignment was submitted."""
        assignment_id = context.get("external_assignment_id")
        return (
            bool(assignment_id)
            and CrowdAssignment.objects.filter(
                worker=worker, external_assignment_id=assignment_id, state__in=HANDED_IN
            ).exists()
        )

    def after_submit(self, *, assignment):
        fields = [("assignmentId", assignment.external_assignment_id), ("hitId", assignment.external_hit_id)]
        if assignment.answer:
            fields.append(("answer", assignment.answer))
        if assignment.description:
            fields += [("description", assignment.description), ("confidence", str(assignment.confidence))]
        if assignment.count is not None:
            fields.append(("count", str(assignment.count)))
        fields.append(("unitscope_assignment", assignment.token))
        return Handoff("form", url=assignment.submit_to + MTURK_SUBMIT_PATH, fields=tuple(fields))

    def finished(self, *, worker, context):
        return Handoff("done")

    def entry_url_template(self, study, base):
        return f"{base}/crowd/s/{study.token}/mturk/"


class ProlificAdapter(Adapter):
    name, label = CrowdAdapter.PROLIFIC, "Prolific"
    context_keys = ("external_session",)

    def entry(self, params, *, study, user=None):
        pid, _study_id, session = (params.get(key, "").strip() for key in ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID"))
        if not pid or not session:
            return Entry(error="This link lacks PROLIFIC_PID or SESSION_ID: open it from Prolific.")
        return Entry(external_id=pid, external={"external_session": session[:128]})

    def _submitted(self, worker, context) -> int:
        return CrowdAssignment.objects.filter(
            worker=worker, external_session=context.get("external_session", ""), state__in=HANDED_IN
        ).count()

    def session_done(self, *, worker, context):
        return self._submitted(worker, context) >= worker.study.hits_per_session

    def finished(self, *, worker, context):
        """The session's own completion code, once the session submitted the study's ``hits_per_session`` HITs
        (returned or expired HITs do not count): never a fixed code for the study, never before the work."""
        submitted = self._submitted(worker, context)
        if submitted < worker.study.hits_per_session:
            return Handoff("short", submitted=submitted)
        code = session_completion_code(worker.study, context["external_session"])
        return Handoff("code", url=PROLIFIC_COMPLETE_URL.format(code=code), code=code)

    def entry_url_template(self, study, base):
        return (
            f"{base}/crowd/s/{study.token}/prolific/?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}"
            f"&STUDY_ID={{{{%STUDY_ID%}}}}&SESSION_ID={{{{%SESSION_ID%}}}}"
        )


def session_completion_code(study: CrowdStudy, session: str) -> str:
    """Prolific completion code of one session: the study's code and an HMAC (``SECRET_KEY``) of the session id, so
    a code passed around works for no other session. Researchers match it against Prolific's submissions (the
    answers export lists each earning session's code)."""
    digest = salted_hmac("annotation.crowd.completion-code", f"{study.pk}:{session}").hexdigest()
    return f"{study.completion_code}-{digest[:10].upper()}"


ADAPTERS: dict[str, Adapter] = {adapter.name: adapter for adapter in (LinkAdapter(), MTurkAdapter(), ProlificAdapter())}


def adapter_for(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown crowd adapter {name!r}") from None


def crowd_links(study: CrowdStudy, *, base: str = "") -> dict[str, str]:
    """Entry URLs per adapter (``base`` is the site's address, e.g. ``http://127.0.0.1:8000``)."""
    return {name: adapter.entry_url_template(study, base.rstrip("/")) for name, adapter in ADAPTERS.items()}


def visit_dumps(worker: CrowdWorker, external: Mapping[str, str]) -> str:
    """A platform visit's credential for URLs (``/crowd/w/<visit>/``): the worker's row id and the visit's platform
    fields, signed (not encrypted: it names no secret, and the worker code is not in it)."""
    return signing.dumps({"w": worker.pk, **external}, salt=VISIT_SALT, compress=True)


def visit_loads(value: str) -> tuple[int, dict[str, str]] | None:
    """``(worker id, platform fields)`` of a visit credential; None for anything else (a worker code, a forgery)."""
    if ":" not in value:
        return None
    try:
        data = signing.loads(value, salt=VISIT_SALT)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("w"), int) or not any(data.get(k) for k in VISIT_KEYS):
        return None
    return data["w"], {key: str(val) for key, val in data.items() if key != "w"}


def visit_filter(context: Mapping[str, str]) -> dict[str, str]:
    """The assignment filter of a visit (its platform key), empty for own-link workers."""
    return {key: context[key] for key in VISIT_KEYS if context.get(key)}
