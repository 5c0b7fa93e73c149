"""How crowd workers arrive and how their work is handed back: one interface, three adapters (issue 8 item 3).

* :class:`LinkAdapter` — UnitScope's own links: ``/crowd/s/<study token>/`` makes a worker (a signed-in crowd
  account is always the same worker) and sends them to ``/crowd/w/<worker code>/``, their personal link.
* :class:`MTurkAdapter` — the Mechanical Turk ExternalQuestion protocol (REFERENCE.md): the page is opened in an
  iframe with ``assignmentId``, ``hitId``, ``workerId`` and ``turkSubmitTo``; a preview carries
  ``assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE`` and is shown but cannot be submitted; one external assignment is
  one UnitScope HIT, and the result is handed back as an HTML form POST to ``turkSubmitTo +
  "/mturk/externalSubmit"`` containing ``assignmentId`` (and the answers). ``turkSubmitTo`` must name one of the
  study's ``external_submit_hosts``.
* :class:`ProlificAdapter` — Prolific-style: ``PROLIFIC_PID``, ``STUDY_ID``, ``SESSION_ID``; after the session's
  HITs (``hits_per_session``, or none left) the completion code is shown — only once something was submitted.

External ids are not authentication: they only name the worker. The hand-off context that must survive the
qualification test (MTurk's assignment, Prolific's session) travels as a signed ``ctx`` value.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from django.core import signing

from ..models import MTURK_PREVIEW_ASSIGNMENT, AssignmentState, CrowdAdapter, CrowdAssignment, CrowdStudy, CrowdWorker

CONTEXT_SALT = "annotation.crowd-context"
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
    (a completion ``code`` and a ``url`` to return to the platform: Prolific), ``done`` (nothing more to do)."""

    kind: str
    url: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    code: str = ""


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
        return Entry(external_id=worker_id, external={"external_assignment_id": assignment_id[:128],
                                                      "external_hit_id": hit_id[:128], "submit_to": submit_to})

    def session_done(self, *, worker, context):
        """One UnitScope HIT per MTurk assignment: done once that assignment was submitted."""
        assignment_id = context.get("external_assignment_id")
        return bool(assignment_id) and CrowdAssignment.objects.filter(
            worker=worker, external_assignment_id=assignment_id, state__in=[
                AssignmentState.SUBMITTED, AssignmentState.APPROVED, AssignmentState.REJECTED]).exists()

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
        pid, study_id, session = (params.get(key, "").strip() for key in ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID"))
        if not pid or not session:
            return Entry(error="This link lacks PROLIFIC_PID or SESSION_ID: open it from Prolific.")
        return Entry(external_id=pid, external={"external_session": session[:128]})

    def _submitted(self, worker, context) -> int:
        return CrowdAssignment.objects.filter(worker=worker, external_session=context.get("external_session", ""),
                                              state__in=[AssignmentState.SUBMITTED, AssignmentState.APPROVED,
                                                         AssignmentState.REJECTED]).count()

    def session_done(self, *, worker, context):
        return self._submitted(worker, context) >= worker.study.hits_per_session

    def finished(self, *, worker, context):
        if self._submitted(worker, context) == 0:  # the code is earned by submitting, never before
            return Handoff("done")
        code = worker.study.completion_code
        return Handoff("code", url=PROLIFIC_COMPLETE_URL.format(code=code), code=code)

    def entry_url_template(self, study, base):
        return (f"{base}/crowd/s/{study.token}/prolific/?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}"
                f"&STUDY_ID={{{{%STUDY_ID%}}}}&SESSION_ID={{{{%SESSION_ID%}}}}")


ADAPTERS: dict[str, Adapter] = {adapter.name: adapter for adapter in (LinkAdapter(), MTurkAdapter(), ProlificAdapter())}


def adapter_for(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown crowd adapter {name!r}") from None


def context_dumps(context: Mapping[str, Any]) -> str:
    """Sign the hand-off context (it rides in URLs through the qualification test)."""
    return signing.dumps(dict(context), salt=CONTEXT_SALT, compress=True)


def context_loads(value: str | None, *, worker: CrowdWorker) -> dict[str, str]:
    """The signed context of ``worker`` (empty when absent, tampered with, or another worker's)."""
    if not value:
        return {}
    try:
        data = signing.loads(value, salt=CONTEXT_SALT)
    except signing.BadSignature:
        return {}
    if data.get("worker") != worker.code:
        return {}
    return {key: str(val) for key, val in data.items() if key != "worker"}


def crowd_links(study: CrowdStudy, *, base: str = "") -> dict[str, str]:
    """Entry URLs per adapter (``base`` is the site's address, e.g. ``http://127.0.0.1:8000``)."""
    return {name: adapter.entry_url_template(study, base.rstrip("/")) for name, adapter in ADAPTERS.items()}
