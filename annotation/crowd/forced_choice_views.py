"""The worker's practice trials of a forced-choice study (issue 17): one trial at a time, each answered with
feedback (right or not, and which image was the strong one), before the real trials. Thin: the practice HITs are
the study's qualification HITs, asked through :func:`annotation.crowd.services.qualification_start` and recorded by
:func:`annotation.crowd.services.practice_answer`."""

from __future__ import annotations

from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View

from ..models import Hit
from . import forced_choice, services
from .views import WorkerMixin, worker_page


@method_decorator(worker_page, name="dispatch")
class CrowdPracticeView(WorkerMixin, View):
    template_name = "annotation/crowd/practice.html"

    def next_url(self) -> str:
        return reverse("annotation:crowd_next", kwargs={"code": self.kwargs["code"]})

    def page(self, request, attempt, token: str, *, feedback: dict | None = None, error: str = "", status=200):
        hit = Hit.objects.select_related("fc_trial__strong_grid", "fc_trial__weak_grid").get(
            study=self.study, token=token
        )
        number = attempt.questions.index(token) + 1
        return render(
            request,
            self.template_name,
            {
                **self.base_context(),
                "token": token,
                "number": number,
                "total": len(attempt.questions),
                "feedback": feedback,
                "error": error,
                "practice_url": reverse("annotation:crowd_practice", kwargs={"code": self.kwargs["code"]}),
                **forced_choice.trial_context(hit=hit, condition="natural"),
            },
            status=status,
        )

    def get(self, request, code):
        if not services.worker_needs_qualification(self.worker):
            return redirect(self.next_url())
        attempt = services.qualification_start(worker=self.worker, visit=services.visit_key(self.context))
        if attempt is None:
            return render(
                request,
                "annotation/crowd/message.html",
                {
                    **self.base_context(),
                    "title": "Practice is not available",
                    "text": "This study has no practice trials right now. Please try again later.",
                },
            )
        token = next(token for token in attempt.questions if token not in attempt.answers)
        return self.page(request, attempt, token)

    def post(self, request, code):
        attempt = services.qualification_start(worker=self.worker, visit=services.visit_key(self.context))
        token = request.POST.get("token", "")
        if attempt is None or token not in attempt.questions:
            return redirect(self.next_url())
        answer = request.POST.get("answer", "")
        try:
            right = services.practice_answer(attempt=attempt, token=token, answer=answer)
        except services.CrowdInputError as error:
            return self.page(request, attempt, token, error=str(error), status=400)
        strong = Hit.objects.get(study=self.study, token=token).gold_answer
        attempt.refresh_from_db()
        done = attempt.passed is not None
        return self.page(
            request,
            attempt,
            token,
            feedback={
                "right": right,
                "answer": answer,
                "strong": strong,
                "next": self.next_url() if done else reverse("annotation:crowd_practice", kwargs={"code": code}),
            },
        )
