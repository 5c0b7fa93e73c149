"""Pages of crowd studies: worker entry (own link, MTurk ExternalQuestion, Prolific), the qualification test, HIT
pages (phone-friendly), gold feedback and hand-back; the crowd worker's home; researchers' study list, creation,
HITs, workers, review and export files.

Worker pages never name a label's origin, and their URLs carry only random tokens (study token, worker code,
assignment token). MTurk shows them in a cross-site iframe, where cookies are unreliable: they are CSRF-exempt and
know the worker by the code in the URL (the code is random and only the worker's own pages carry it).
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views import View
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt
from django.views.generic import FormView, TemplateView

from accounts.permissions import CrowdRequiredMixin, ResearcherRequiredMixin, study_write_check
from accounts.roles import Role
from unitscope.queries import query_id
from unitscope.ratelimit import rate_limited

from ..common import attachment_response, simulated_choice
from ..models import (
    DESCRIPTION_QUESTION,
    PURITY_QUESTION,
    REVIEWABLE_STATES,
    VALIDATION_QUESTION,
    CrowdAdapter,
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdStudy,
    CrowdTaskKind,
    CrowdWorker,
    Hit,
    HitRole,
    LabelOrigin,
)
from ..naming import label_text
from . import exports, forced_choice, forced_choice_report, hits, selectors, services
from .adapters import ADAPTERS, adapter_for, visit_dumps, visit_filter, visit_loads
from .aggregation import PURITY_COUNT_TOLERANCE
from .forms import BlockForm, BonusForm, CrowdStudyCreateForm, HitAnswerForm, ReviewForm
from .images import hit_picture
from .truth import count_tolerance, gold_check

QUESTIONS = {
    CrowdTaskKind.VALIDATION: VALIDATION_QUESTION,
    CrowdTaskKind.DESCRIPTION: DESCRIPTION_QUESTION,
    CrowdTaskKind.PURITY: PURITY_QUESTION,
}
INSTRUCTIONS = {
    CrowdTaskKind.VALIDATION: "Each image shows in full brightness the region one detector responds to; the rest "
    "is dimmed. Read the phrase in quotes and answer yes if it describes what most of the "
    "bright patches show, no otherwise.",
    CrowdTaskKind.DESCRIPTION: "Each image shows in full brightness the region one detector responds to. Write a "
    "word or short phrase for what most bright patches have in common (a colour, a "
    "texture, a material, an object part, an object or a scene), then say how sure you "
    "are: 1 is a guess, 5 is certain. Type it yourself.",
    CrowdTaskKind.PURITY: "Each image marks the strongest response of one detector with a green square and keeps "
    "the region it responds to bright. Count the images whose marked region shows the same "
    "object part as most of the others.",
    CrowdTaskKind.FORCED_CHOICE: forced_choice.INSTRUCTIONS,
}
worker_page = [csrf_exempt, xframe_options_exempt, rate_limited("crowd_worker")]
entry_page = [csrf_exempt, xframe_options_exempt, rate_limited("crowd_entry")]
"""Worker pages: CSRF-exempt and framable (see above), rate-limited per worker code (entry: per address)."""


def study_instructions(study: CrowdStudy) -> str:
    return study.instructions or INSTRUCTIONS[study.kind]


def hit_context(hit: Hit, worker: CrowdWorker | None = None) -> dict:
    """What a HIT page shows, for any kind (never the label's origin; for forced choice never which query is
    strong: previews show the natural condition)."""
    if hit.kind == CrowdTaskKind.FORCED_CHOICE:
        condition = (
            forced_choice.condition_for(worker=worker, hit=hit, trial=hit.fc_trial) if worker is not None else "natural"
        )
        return forced_choice.trial_context(hit=hit, condition=condition)
    grid = hit.grid
    return {
        "hit_kind": hit.kind,
        "question": QUESTIONS[hit.kind],
        "label": hit.label,
        "grid": grid,
        "shown": hit.purity_shown,
        "count_range": range(0, (hit.purity_shown or 0) + 1),
        "alt": {
            CrowdTaskKind.VALIDATION: "Fifteen images; in each, the patch the detector responds to is bright "
            "and the rest dimmed.",
            CrowdTaskKind.DESCRIPTION: "Fifteen images; in each, the patch the detector responds to is bright "
            "and the rest dimmed.",
            CrowdTaskKind.PURITY: f"{hit.purity_shown} images; in each, a green square marks the detector's "
            "strongest response.",
        }[hit.kind],
    }


# -- entry ------------------------------------------------------------------------------------------------------


@method_decorator(entry_page, name="dispatch")
class CrowdEntryView(View):
    """``/crowd/s/<token>/[mturk/|prolific/]``: read the adapter's parameters, find or make the worker, go on."""

    def get(self, request, token, adapter=CrowdAdapter.LINK):
        study = get_object_or_404(CrowdStudy, token=token)
        if adapter not in ADAPTERS:
            raise Http404("No such entry.")
        handler = adapter_for(adapter)
        entry = handler.entry(request.GET, study=study, user=request.user)
        if entry.error:
            return render(
                request,
                "annotation/crowd/message.html",
                {"title": "This link is incomplete", "text": entry.error},
                status=400,
            )
        if entry.preview:
            hit = selectors.preview_hit(study)
            return render(
                request,
                "annotation/crowd/task.html",
                {
                    "study": study,
                    "preview": True,
                    "instructions": study_instructions(study),
                    "form": HitAnswerForm(hit=hit) if hit else None,
                    **(hit_context(hit) if hit else {}),
                },
            )
        if adapter == CrowdAdapter.LINK:
            user = request.user if request.user.is_authenticated and request.user.has_role(Role.CROWD) else None
            if user is None:
                return render(
                    request, "annotation/crowd/start.html", {"study": study, "instructions": study_instructions(study)}
                )
            worker, _ = services.worker_enter(study=study, adapter=adapter, user=user)
            return redirect("annotation:crowd_next", code=worker.code)
        # A platform id names the worker but proves nothing: the visit gets its own credential (see adapters.py),
        # never the worker's personal code, so nobody reaches another visit's HITs by typing a known id.
        worker, _ = services.worker_enter(study=study, adapter=adapter, external_id=entry.external_id)
        visit = visit_dumps(worker, entry.external)
        held = None
        if entry.external.get("external_assignment_id"):
            held = CrowdAssignment.objects.filter(
                worker=worker, external_assignment_id=entry.external["external_assignment_id"]
            ).first()
        if held is not None:
            return redirect("annotation:crowd_task", code=visit, assignment=held.token)
        return redirect("annotation:crowd_next", code=visit)

    def post(self, request, token, adapter=CrowdAdapter.LINK):
        """Own link: "Start" makes a new worker whose personal link is their URL from now on."""
        study = get_object_or_404(CrowdStudy, token=token)
        if adapter != CrowdAdapter.LINK:
            return HttpResponseBadRequest("Start from the platform's link.")
        user = request.user if request.user.is_authenticated and request.user.has_role(Role.CROWD) else None
        worker, _ = services.worker_enter(study=study, adapter=CrowdAdapter.LINK, user=user)
        return redirect("annotation:crowd_next", code=worker.code)


class WorkerMixin:
    """Resolves ``self.worker`` from the credential in the URL (404 if unknown): an own-link worker's code, or a
    platform visit (:func:`annotation.crowd.adapters.visit_dumps`), whose platform fields become the context."""

    nav_section = "tasks"

    def dispatch(self, request, *args, **kwargs):
        visit = visit_loads(kwargs["code"])
        if visit is not None:
            self.worker = CrowdWorker.objects.select_related("study").filter(pk=visit[0]).first()
            self.context = visit[1]
        else:
            self.worker = selectors.worker_by_code(kwargs["code"])
            if self.worker is not None and self.worker.adapter != CrowdAdapter.LINK:
                self.worker = None  # a platform worker is reached through a visit only
            self.context = {}
        if self.worker is None:
            raise Http404("Unknown worker link.")
        self.study = self.worker.study
        self.adapter = adapter_for(self.worker.adapter)
        return super().dispatch(request, *args, **kwargs)

    def visit_assignments(self):
        """The worker's assignments this credential may see: a platform visit's own, an own-link worker's all."""
        return CrowdAssignment.objects.filter(worker=self.worker, **visit_filter(self.context))

    def base_context(self) -> dict:
        return {
            "study": self.study,
            "worker": self.worker,
            "credential": self.kwargs["code"],
            "progress": selectors.worker_progress(self.worker),
            "instructions": study_instructions(self.study),
        }

    def finished(self, request):
        handoff = self.adapter.finished(worker=self.worker, context=self.context)
        return render(request, "annotation/crowd/done.html", {**self.base_context(), "handoff": handoff})


@method_decorator(worker_page, name="dispatch")
class CrowdNextView(WorkerMixin, View):
    """Qualification first, then the worker's next HIT (claimed atomically), or the end of the visit."""

    def get(self, request, code):
        worker = self.worker
        if worker.blocked:
            return render(
                request,
                "annotation/crowd/message.html",
                {
                    **self.base_context(),
                    "title": "No more HITs for you in this study",
                    "text": "Your answers to the check questions were too often wrong, so this study hands you no further "  # noqa: E501
                    "HITs. Work already submitted stays on record.",
                },
            )
        if services.worker_needs_qualification(worker):
            if services.qualification_failed(worker=worker, visit=services.visit_key(self.context)):
                return render(
                    request,
                    "annotation/crowd/message.html",
                    {
                        **self.base_context(),
                        "title": "Qualification not passed",
                        "text": "You did not pass the qualification test, so this study has no HITs for you. Thank you "
                        "for trying.",
                    },
                )
            practice = self.study.kind == CrowdTaskKind.FORCED_CHOICE  # practice trials with feedback, not a test
            return redirect(
                reverse(
                    "annotation:crowd_practice" if practice else "annotation:crowd_qualification", kwargs={"code": code}
                )
            )
        if self.adapter.context_keys and not all(self.context.get(key) for key in self.adapter.context_keys):
            return render(
                request,
                "annotation/crowd/message.html",
                {
                    **self.base_context(),
                    "title": "Open this study from the platform",
                    "text": "This page needs the link the platform gave you (it names your HIT or session).",
                },
                status=400,
            )
        if self.adapter.session_done(worker=worker, context=self.context):
            return self.finished(request)
        if visit_filter(self.context) and services.visit_gold_failed(worker=worker, visit=visit_filter(self.context)):
            return render(
                request,
                "annotation/crowd/message.html",
                {
                    **self.base_context(),
                    "title": "No more HITs in this visit",
                    "text": "The answers to the check questions in this visit were too often wrong, so it hands out no "
                    "further HITs. Work already submitted stays on record.",
                },
            )
        external = {
            key: self.context[key]
            for key in ("external_assignment_id", "external_hit_id", "submit_to", "external_session")
            if key in self.context
        }
        assignment = services.hit_next_for_worker(worker=worker, external=external)
        if assignment is None:
            return self.finished(request)
        return redirect(reverse("annotation:crowd_task", kwargs={"code": code, "assignment": assignment.token}))


@method_decorator(worker_page, name="dispatch")
class CrowdQualificationView(WorkerMixin, View):
    """The qualification test before the first HIT, questions of the study's own kind with known answers: yes/no
    labels (validation), descriptions, or counts of marked images showing one part (purity); then feedback
    question by question (the answer given, the right one, why)."""

    template_name = "annotation/crowd/qualification.html"

    def questions(self, attempt):
        hits = {
            hit.token: hit
            for hit in Hit.objects.filter(study=self.study, token__in=attempt.questions).select_related("grid")
        }
        return [
            {"hit": hits[token], "number": number, **hit_context(hits[token])}
            for number, token in enumerate(attempt.questions, start=1)
            if token in hits
        ]

    def feedback(self, attempt) -> list[dict]:
        """Per question of a scored attempt: the question, the worker's answer, the right one, the explanation."""
        rows = []
        for question in self.questions(attempt):
            hit = question["hit"]
            given = attempt.answers.get(hit.token) or ""
            fields = services.qualification_fields(hit, given)
            row = {
                **question,
                "given": given,
                "explanation": hit.gold_explanation,
                "right": hit.gold_answer,
                "correct": fields is not None and gold_check(hit, fields),
            }
            if hit.kind == CrowdTaskKind.DESCRIPTION:
                row["right"] = " or ".join(label_text(name) for name in hit.gold_answer.split("|"))
            elif hit.kind == CrowdTaskKind.PURITY:  # counts: the known one and the range judged right
                known, tolerance = int(hit.gold_answer), count_tolerance(hit)
                row["accepted"] = (max(known - tolerance, 0), min(known + tolerance, hit.purity_shown or known))
            rows.append(row)
        return rows

    def get(self, request, code, error: str = "", answers: dict | None = None):
        visit = services.visit_key(self.context)
        scored = (
            self.worker.qualification_attempts.filter(pk=query_id(request.GET, "done"), visit=visit)
            .exclude(passed=None)
            .first()
            if query_id(request.GET, "done")
            else None
        )
        if scored is not None:  # the feedback on the attempt just submitted, question by question
            self.worker.refresh_from_db()
            return render(
                request,
                "annotation/crowd/qualification_result.html",
                {
                    **self.base_context(),
                    "attempt": scored,
                    "feedback": self.feedback(scored),
                    "again": services.worker_needs_qualification(self.worker)
                    and not services.qualification_failed(worker=self.worker, visit=visit),
                    "pass_needed": self.study.qualification_pass_rate,
                },
            )
        if not services.worker_needs_qualification(self.worker):
            return redirect(reverse("annotation:crowd_next", kwargs={"code": code}))
        if self.study.kind == CrowdTaskKind.FORCED_CHOICE:  # its qualification HITs are practice trials
            return redirect(reverse("annotation:crowd_practice", kwargs={"code": code}))
        attempt = services.qualification_start(worker=self.worker, visit=services.visit_key(self.context))
        if attempt is None:  # no questions to ask (the study's set-up changed): never loop back to "next"
            return render(
                request,
                "annotation/crowd/message.html",
                {
                    **self.base_context(),
                    "title": "The qualification test is not available",
                    "text": "This study asks for a qualification test but has no questions for it right now. Please "
                    "try again later.",
                },
            )
        previous = (
            self.worker.qualification_attempts.filter(visit=attempt.visit)
            .exclude(pk=attempt.pk)
            .filter(passed=False)
            .last()
        )
        return render(
            request,
            self.template_name,
            {
                **self.base_context(),
                "instructions": INSTRUCTIONS[self.study.kind],
                "attempt": attempt,
                "questions": self.questions(attempt),
                "error": error,
                "answers": answers or {},
                "previous": previous,
                "pass_needed": self.study.qualification_pass_rate,
            },
        )

    def post(self, request, code):
        attempt = services.qualification_start(worker=self.worker, visit=services.visit_key(self.context))
        if attempt is None or self.study.kind == CrowdTaskKind.FORCED_CHOICE:
            return redirect(reverse("annotation:crowd_next", kwargs={"code": code}))
        answers = {token: request.POST.get(f"q-{token}", "") for token in attempt.questions}
        try:
            attempt = services.qualification_submit(attempt=attempt, answers=answers)
        except services.CrowdInputError as error:
            return self.get(request, code, error=str(error), answers=answers)
        url = reverse("annotation:crowd_qualification", kwargs={"code": code})
        return redirect(f"{url}?done={attempt.pk}")


@method_decorator(worker_page, name="dispatch")
class CrowdTaskView(WorkerMixin, View):
    """One HIT: the grid, the question, big touch-friendly answers; POST submits (gold: immediate feedback)."""

    template_name = "annotation/crowd/task.html"

    def get_assignment(self, token) -> CrowdAssignment:
        try:
            return self.visit_assignments().select_related("hit__grid").get(token=token)
        except CrowdAssignment.DoesNotExist:
            raise Http404("This HIT is not yours.") from None

    def render_task(self, request, assignment, form, status=200):
        return render(
            request,
            self.template_name,
            {
                **self.base_context(),
                "assignment": assignment,
                "form": form,
                "preview": False,
                "image_url": reverse(
                    "annotation:crowd_image", kwargs={"code": self.kwargs["code"], "assignment": assignment.token}
                ),
                "lease_minutes": max(1, self.study.lease_seconds // 60),
                **hit_context(assignment.hit, self.worker),
            },
            status=status,
        )

    def get(self, request, code, assignment):
        assignment = self.get_assignment(assignment)
        if assignment.state != CrowdAssignmentState.LEASED:
            if assignment.state in REVIEWABLE_STATES:
                return redirect(
                    reverse("annotation:crowd_after", kwargs={"code": code, "assignment": assignment.token})
                )
            return render(
                request,
                "annotation/crowd/message.html",
                {
                    **self.base_context(),
                    "title": "This HIT is closed",
                    "text": "Its time ran out or it was returned.",
                    "next_url": reverse("annotation:crowd_next", kwargs={"code": code}),
                },
            )
        services.assignment_mark_shown(assignment=assignment)
        return self.render_task(request, assignment, HitAnswerForm(hit=assignment.hit))

    def post(self, request, code, assignment):
        assignment = self.get_assignment(assignment)
        form = HitAnswerForm(request.POST, hit=assignment.hit)
        if not form.is_valid():
            return self.render_task(request, assignment, form, status=400)
        try:
            result = services.assignment_submit(
                assignment=assignment, pasted=form.cleaned_data.get("pasted", False), **form.cleaned_data["fields"]
            )
        except services.CrowdInputError as error:
            form.add_error(None, str(error))
            return self.render_task(request, assignment, form, status=409)
        if result.gold or self.worker.adapter == CrowdAdapter.MTURK:
            return redirect(reverse("annotation:crowd_after", kwargs={"code": code, "assignment": assignment.token}))
        return redirect(reverse("annotation:crowd_next", kwargs={"code": code}))


@method_decorator(worker_page, name="dispatch")
class CrowdAfterView(WorkerMixin, View):
    """After a submission: gold feedback, and the hand-back (MTurk form) or the way on."""

    def get(self, request, code, assignment):
        assignment = self.visit_assignments().select_related("hit").filter(token=assignment).first()
        if assignment is None or assignment.state not in REVIEWABLE_STATES:
            raise Http404("Nothing submitted here.")
        handoff = self.adapter.after_submit(assignment=assignment)
        return render(
            request,
            "annotation/crowd/after.html",
            {
                **self.base_context(),
                "assignment": assignment,
                "handoff": handoff,
                "gold": assignment.gold_correct is not None,
                "correct": assignment.gold_correct,
                "explanation": assignment.hit.gold_explanation if assignment.gold_correct is not None else "",
                "next_url": reverse("annotation:crowd_next", kwargs={"code": code}),
            },
        )


@method_decorator(worker_page, name="dispatch")
class CrowdImageView(WorkerMixin, View):
    """The picture of one of the visit's assignments, under the assignment's own URL (see ``images.py``)."""

    def get(self, request, code, assignment):
        assignment = get_object_or_404(self.visit_assignments().select_related("hit__grid"), token=assignment)
        data = hit_picture(assignment.hit)
        if data is None:
            raise Http404("No picture.")
        response = HttpResponse(data, content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response


@method_decorator(worker_page, name="dispatch")
class CrowdReturnView(WorkerMixin, View):
    """The worker gives the HIT back; they will not see it again."""

    def post(self, request, code, assignment):
        assignment = get_object_or_404(self.visit_assignments(), token=assignment)
        services.assignment_return(assignment=assignment)
        if self.worker.adapter == CrowdAdapter.MTURK:
            return render(
                request,
                "annotation/crowd/message.html",
                {
                    **self.base_context(),
                    "title": "HIT returned",
                    "text": "Return the HIT on the platform too, so that someone else can take it.",
                },
            )
        return redirect(reverse("annotation:crowd_next", kwargs={"code": code}))


# -- researchers -------------------------------------------------------------------------------------------------


class CrowdStudyListView(ResearcherRequiredMixin, TemplateView):
    nav_section = "studies"
    template_name = "annotation/crowd/study_list.html"

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "rows": selectors.crowd_study_rows()}


class CrowdStudyCreateView(ResearcherRequiredMixin, FormView):
    nav_section = "studies"
    template_name = "annotation/crowd/study_create.html"
    form_class = CrowdStudyCreateForm

    def form_valid(self, form):
        data = form.cleaned_data
        if data["kind"] == CrowdTaskKind.FORCED_CHOICE:
            return self.forced_choice_valid(form)
        try:
            study = hits.crowd_study_create(
                name=data["name"],
                kind=data["kind"],
                extractions=list(data["extractions"]),
                units=data["units"],
                assignments_per_hit=data["assignments_per_hit"],
                controls=data["controls"],
                include_human=data["include_human"],
                description_study=data["description_study"],
                selection_round=data["selection_round"],
                include_dead_units=data["include_dead_units"],
                detectors_only=data["detectors_only"],
                gold_rate=data["gold_rate"],
                qualification_required=data["qualification_required"],
                lease_seconds=data["lease_seconds"],
                overlap_rule=data["overlap_rule"],
                purity_mass=data["purity_mass"],
                graph=data["graph"],
                external_submit_hosts=data["external_submit_hosts"],
                seed=data["seed"],
                created_by=self.request.user,
            )
        except services.CrowdInputError as error:
            form.add_error(None, str(error))
            return self.form_invalid(form)
        messages.success(
            self.request, f"Crowd study {study.name} created with {study.hits.filter(role=HitRole.TASK).count()} HITs."
        )
        return redirect(study)

    def forced_choice_valid(self, form):
        from .forced_choice_plan import forced_choice_study_create  # local: planning loads torch; pages never do

        data = form.cleaned_data
        try:
            study = forced_choice_study_create(
                name=data["name"],
                extractions=list(data["extractions"]),
                units=data["units"],
                conditions=data["conditions"] or ["natural"],
                condition_assignment=data["condition_assignment"] or "trials",
                trials_per_unit=data["trials_per_unit"] or 2,
                catch_rate=data["gold_rate"],
                practice_trials=3 if data["qualification_required"] else 0,
                assignments_per_hit=data["assignments_per_hit"],
                lease_seconds=data["lease_seconds"],
                external_submit_hosts=data["external_submit_hosts"],
                seed=data["seed"],
                created_by=self.request.user,
            )
        except services.CrowdInputError as error:
            form.add_error(None, str(error))
            return self.form_invalid(form)
        messages.success(
            self.request,
            f"Forced-choice study {study.name} created with {study.hits.filter(role=HitRole.TASK).count()} trials.",
        )
        return redirect(study)


class CrowdStudyMixin(ResearcherRequiredMixin):
    nav_section = "studies"

    def get_study(self) -> CrowdStudy:
        """The study of the URL; a write request on it must come from its creator (403 otherwise)."""
        study = get_object_or_404(CrowdStudy, pk=self.kwargs["pk"])
        study_write_check(self.request, study)
        return study


def study_links(request, study: CrowdStudy) -> list[dict]:
    base = request.build_absolute_uri("/").rstrip("/")
    return [{"adapter": adapter, "url": adapter.entry_url_template(study, base)} for adapter in ADAPTERS.values()]


def query_percent(query, name: str) -> float | None:
    """``query[name]`` read as a whole percentage 0–100 and returned as a fraction; None when absent or malformed
    (a filter left out, never an error)."""
    value = query_id(query, name)
    return value / 100 if value is not None and value <= 100 else None


class CrowdStudyDetailView(CrowdStudyMixin, TemplateView):
    template_name = "annotation/crowd/study_detail.html"

    def get_context_data(self, **kwargs):
        study = self.get_study()
        query = self.request.GET
        role = query.get("role", HitRole.TASK)
        if role not in HitRole.values:
            role = HitRole.TASK
        filters = {
            "layer": query.get("layer", ""),
            "unit": query_id(query, "unit"),
            "origin": query.get("origin", "") if query.get("origin") in LabelOrigin.values else "",
            "state": query.get("state", "") if query.get("state") in selectors.HIT_STATES else "",
            "label": query.get("label", "").strip()[:100],
            "agreement": query.get("agreement", "") if query.get("agreement") in selectors.HIT_AGREEMENT else "",
            "agreement_min": query_percent(query, "agreement_min"),
            "agreement_max": query_percent(query, "agreement_max"),
        }
        page = Paginator(
            selectors.crowd_hits_for_list(study, role=role, **filters), selectors.CROWD_PAGE_SIZE
        ).get_page(query.get("page"))
        return {
            **super().get_context_data(**kwargs),
            "study": study,
            "links": study_links(self.request, study),
            "progress": selectors.crowd_study_progress(study),
            "role": role,
            "roles": HitRole.choices,
            "hit_rows": selectors.crowd_hit_rows(page.object_list),
            "page_obj": page,
            "filters": filters,
            "filtered": any(value not in ("", None) for value in filters.values()),
            "origins": LabelOrigin.choices,
            "hit_states": selectors.HIT_STATES,
            "agreement_levels": selectors.HIT_AGREEMENT,
            "agreement_percent": {
                end: round(100 * filters[f"agreement_{end}"]) if filters[f"agreement_{end}"] is not None else ""
                for end in ("min", "max")
            },
            "count_tolerance": PURITY_COUNT_TOLERANCE,
            "layers": study.extractions.select_related("layer__network", "dataset"),
        }

    def post(self, request, *args, **kwargs):
        study = self.get_study()
        hits.study_open_set(study=study, is_open=request.POST.get("open") == "1")
        messages.success(request, f"{study.name} is {'open' if study.is_open else 'closed'} for new HITs.")
        return redirect(study)


class CrowdWorkersView(CrowdStudyMixin, TemplateView):
    """Workers with gold accuracy, times and careless/automated signals; block, unblock, bonus."""

    template_name = "annotation/crowd/workers.html"

    def get_context_data(self, **kwargs):
        study = self.get_study()
        return {
            **super().get_context_data(**kwargs),
            "study": study,
            "rows": selectors.crowd_worker_rows(study),
            "fast_fraction": selectors.FAST_FRACTION,
            "streak_min": selectors.STREAK_MIN,
            "streak_p": selectors.STREAK_P,
            "streak_reliability": selectors.STREAK_RELIABILITY_MIN,
        }

    def post(self, request, *args, **kwargs):
        study = self.get_study()
        back = reverse("annotation:crowd_workers", args=[study.pk])
        if request.POST.get("form") == "bonus":
            form = BonusForm(request.POST)
        else:
            form = BlockForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Not saved — " + "; ".join(" ".join(e) for e in form.errors.values()))
            return redirect(back)
        worker = get_object_or_404(CrowdWorker, pk=form.cleaned_data["worker"], study=study)
        try:
            if isinstance(form, BonusForm):
                services.bonus_grant(
                    worker=worker,
                    amount_cents=form.cleaned_data["amount_cents"],
                    reason=form.cleaned_data["reason"],
                    created_by=request.user,
                )
                messages.success(
                    request, f"Bonus of {form.cleaned_data['amount_cents']} cents recorded for {worker.external_id}."
                )
            else:
                blocked = form.cleaned_data["action"] == "block"
                services.worker_block(worker=worker, reason=form.cleaned_data["reason"], blocked=blocked)
                messages.success(request, f"{worker.external_id} {'blocked' if blocked else 'unblocked'}.")
        except services.CrowdInputError as error:
            messages.error(request, str(error))
        return redirect(back)


class CrowdReviewView(CrowdStudyMixin, TemplateView):
    """Submitted work: approve, or reject with a reason (one, several, or all of a worker's)."""

    template_name = "annotation/crowd/review.html"

    def get_context_data(self, **kwargs):
        study = self.get_study()
        state = self.request.GET.get("state", CrowdAssignmentState.SUBMITTED)
        if state not in CrowdAssignmentState.values:
            state = ""
        query = self.request.GET
        worker = None
        if query_id(query, "worker"):
            worker = study.workers.filter(pk=query_id(query, "worker")).first()
        filters = {
            "layer": query.get("layer", ""),
            "unit": query_id(query, "unit"),
            "role": query.get("role", "") if query.get("role") in HitRole.values else "",
        }
        page = Paginator(
            selectors.crowd_assignment_rows(study, state=state or None, worker=worker, **filters),
            selectors.CROWD_PAGE_SIZE,
        ).get_page(query.get("page"))
        return {
            **super().get_context_data(**kwargs),
            "study": study,
            "state": state,
            "worker": worker,
            "states": CrowdAssignmentState.choices,
            "filters": filters,
            "roles": HitRole.choices,
            "layers": study.extractions.select_related("layer"),
            "page_obj": page,
            "assignments": page.object_list,
        }

    def post(self, request, *args, **kwargs):
        study = self.get_study()
        form = ReviewForm(request.POST)
        back = request.POST.get("back")
        if not back or not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            back = reverse("annotation:crowd_review", args=[study.pk])  # never off-site (``//evil.example``)
        if not form.is_valid():
            messages.error(request, "Nothing reviewed — choose approve or reject.")
            return redirect(back)
        assignments = CrowdAssignment.objects.filter(hit__study=study, pk__in=form.cleaned_data["assignments"])
        try:
            done = services.assignments_review(
                assignments=assignments,
                reviewer=request.user,
                approve=form.cleaned_data["decision"] == "approve",
                reason=form.cleaned_data["reason"],
            )
        except services.CrowdInputError as error:
            messages.error(request, str(error))
            return redirect(back)
        messages.success(
            request,
            f"{done} assignment{'s' if done != 1 else ''} "
            f"{'approved' if form.cleaned_data['decision'] == 'approve' else 'rejected'}.",
        )
        return redirect(back)


class CrowdHomeView(CrowdRequiredMixin, TemplateView):
    nav_section = "tasks"
    template_name = "annotation/crowd_home.html"

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "rows": selectors.crowd_open_study_rows(self.request.user)}


class CrowdStudyExportView(ResearcherRequiredMixin, View):
    """A crowd study export file (:data:`annotation.crowd.exports.CROWD_EXPORT_FILES`): every assignment with full
    provenance, or the aggregated results per HIT (``?simulated=`` as on the expert study pages)."""

    def get(self, request, *args, **kwargs):
        study = get_object_or_404(CrowdStudy, pk=kwargs["pk"])
        name = kwargs["name"]
        simulated = simulated_choice(request.GET.get("simulated"))
        if study.kind == CrowdTaskKind.FORCED_CHOICE and name in forced_choice_report.FORCED_CHOICE_EXPORT_FILES:
            return attachment_response(
                *forced_choice_report.forced_choice_export_file(study, name, simulated=simulated)
            )
        if name not in exports.CROWD_EXPORT_FILES:
            raise Http404("No such export.")
        return attachment_response(*exports.crowd_export_file(study, name, simulated=simulated))


def unit_crowd_panel(*, unit, request) -> str | None:
    """The unit page's crowd panel (registered in ``AnnotationConfig.ready``): every crowd study's votes,
    descriptions and purity counts about the unit, with links to the studies; None when there are none."""
    studies = selectors.unit_crowd_answers(unit)
    if not studies:
        return None
    return render_to_string("annotation/crowd/_unit_panel.html", {"studies": studies, "unit": unit}, request=request)
