"""Pages of expert studies: the expert's home, the annotation page, an expert's answers; researchers' studies, their
reports, synonyms and export files."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views import View
from django.views.generic import FormView, TemplateView

from accounts.permissions import ExpertRequiredMixin, ResearcherRequiredMixin, study_write_check

from ..common import attachment_response, simulated_choice
from ..models import ANSWER_KEYS, RULE, YES_ANSWERS, Answer, Study, StudyTask
from . import exports, selectors, services
from .forms import AnswerForm, StudyCreateForm, SynonymForm

GRID_DISPLAY_WIDTH = 1180
"""The annotation page shows a grid at the largest whole multiple of its size up to this width (sharp)."""


class ExpertHomeView(ExpertRequiredMixin, TemplateView):
    nav_section = "expert"
    template_name = "annotation/expert_home.html"

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "rows": selectors.expert_study_rows(self.request.user)}


# -- experts ---------------------------------------------------------------------------------------------


class ExpertStudyMixin(ExpertRequiredMixin):
    """Resolves ``self.rater`` (the user's rater in study ``pk``); 404 if they are not in it."""

    nav_section = "expert"

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            self.rater = selectors.expert_rater(request.user, kwargs["pk"])
        return super().dispatch(request, *args, **kwargs)

    def get_rater(self):
        if getattr(self, "rater", None) is None:
            raise Http404("You are not an annotator of this study.")
        return self.rater


class ExpertNextTaskView(ExpertStudyMixin, TemplateView):
    """Claims (atomically) or resumes the expert's next task and sends them to it; says when all are done."""

    template_name = "annotation/expert_done.html"

    def get(self, request, *args, **kwargs):
        rater = self.get_rater()
        task = services.task_next_for_rater(rater=rater)
        if task is not None:
            return redirect("annotation:annotate", pk=rater.study_id, task_pk=task.pk)
        return self.render_to_response({"study": rater.study, "progress": selectors.rater_progress(rater)})


class TaskReleased(Exception):
    """The task of an answer went back to the pool and could not be taken back (see AnnotateView)."""


class AnnotateView(ExpertStudyMixin, FormView):
    """One task: the grid, GG'18's question and rule, five answers on keys 1–5, a concept name, Enter."""

    template_name = "annotation/annotate.html"
    form_class = AnswerForm

    def setup(self, request, *args, **kwargs):
        super().setup(request, *args, **kwargs)
        self.task = None

    def get_task(self) -> StudyTask:
        if self.task is None:
            rater = self.get_rater()
            tasks = StudyTask.objects.select_related("object_class", "exemplar_set__grid").filter(
                pk=self.kwargs["task_pk"], study_id=rater.study_id
            )
            self.task = tasks.filter(assignments__rater=rater).first()
            if self.task is None and self.request.method == "POST":
                self.task = self.released_task(tasks.first())
            if self.task is None:
                raise Http404("This task is not assigned to you.")
            self.current = selectors.current_judgment(rater, self.task)
        return self.task

    def released_task(self, task: StudyTask | None) -> StudyTask | None:
        """An answer from a page shown to this expert (its signed token says so) for a task that went back to the
        pool meanwhile (``Study.claim_hours``): the task, if it could be taken back, else :class:`TaskReleased`."""
        if (
            task is None
            or services.task_shown_at(token=self.request.POST.get("shown"), task=task, rater=self.rater) is None
        ):
            return None
        if services.task_reclaim(rater=self.rater, task=task):
            return task
        raise TaskReleased

    def post(self, request, *args, **kwargs):
        try:
            self.get_task()
        except TaskReleased:
            return render(request, "annotation/task_released.html", {"study": self.rater.study}, status=409)
        return super().post(request, *args, **kwargs)

    def get_initial(self):
        self.get_task()
        initial = {"shown": services.task_shown_token(task=self.task, rater=self.rater)}
        if self.current is not None:
            initial.update(answer=self.current.answer, concept=self.current.concept)
        return initial

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        task, rater = self.get_task(), self.rater
        grid = task.exemplar_set.grid if task.exemplar_set_id else None
        scale = max(1, GRID_DISPLAY_WIDTH // grid.width) if grid else 1
        form = context["form"]
        chosen = form["answer"].value()
        context.update(
            study=rater.study,
            task=task,
            grid=grid,
            grid_width=grid.width * scale if grid else 0,
            grid_height=grid.height * scale if grid else 0,
            current=self.current,
            number=selectors.task_number(task, rater),
            progress=selectors.rater_progress(rater),
            rule=RULE,
            answers=[
                {
                    "key": key,
                    "value": value,
                    "label": Answer(value).label,
                    "yes": value in YES_ANSWERS,
                    "checked": chosen == value,
                }
                for key, value in ANSWER_KEYS.items()
            ],
            needs_concept=chosen in YES_ANSWERS,
            suggestions=selectors.concept_suggestions(rater.study, rater=rater),
        )
        return context

    def form_valid(self, form):
        task, rater = self.get_task(), self.rater
        revising = self.current is not None
        try:
            judgment = services.judgment_submit(
                rater=rater,
                task=task,
                answer=form.cleaned_data["answer"],
                concept=form.cleaned_data["concept"],
                started_at=services.task_shown_at(token=form.cleaned_data.get("shown"), task=task, rater=rater),
            )
        except services.StudyInputError as error:
            form.add_error(None, str(error))
            return self.form_invalid(form)
        if revising:
            if judgment.revision_of_id:
                messages.success(self.request, f"Task {selectors.task_number(task, rater)}: answer revised.")
            return redirect("annotation:my_answers", pk=rater.study_id)
        return redirect("annotation:expert_next", pk=rater.study_id)


class MyAnswersView(ExpertStudyMixin, TemplateView):
    """The expert's own answers, latest first, each with a link to revise it."""

    template_name = "annotation/my_answers.html"

    def get_context_data(self, **kwargs):
        rater = self.get_rater()
        answers = selectors.rater_answers(rater)
        numbers = {
            assignment.task_id: position
            for position, assignment in enumerate(rater.assignments.order_by("task__position", "task_id"), start=1)
        }
        for judgment in answers:
            judgment.number = numbers.get(judgment.task_id)
        return {
            **super().get_context_data(**kwargs),
            "study": rater.study,
            "answers": answers,
            "progress": selectors.rater_progress(rater),
        }


# -- researchers -------------------------------------------------------------------------------------------


class StudyListView(ResearcherRequiredMixin, TemplateView):
    nav_section = "studies"
    template_name = "annotation/study_list.html"

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "rows": selectors.study_rows()}


class StudyCreateView(ResearcherRequiredMixin, FormView):
    nav_section = "studies"
    template_name = "annotation/study_create.html"
    form_class = StudyCreateForm

    def form_valid(self, form):
        data = form.cleaned_data
        try:
            study = services.study_create(
                name=data["name"],
                extraction=data["extraction"],
                experts=list(data["experts"]),
                plan=data["plan"],
                object_classes=data["object_classes"] or None,
                overlap_class=data["overlap_class"] or None,
                raters_per_task=data["raters_per_task"],
                instructions=data["instructions"],
                units=data["units"],
                seed=data["seed"],
                claim_hours=data["claim_hours"],
                suggest_given_names=data["suggest_given_names"],
                include_dead_units=data["include_dead_units"],
                created_by=self.request.user,
            )
        except services.StudyInputError as error:
            form.add_error(None, str(error))
            return self.form_invalid(form)
        messages.success(self.request, f"Study {study.name} created with {study.tasks.count()} tasks.")
        return redirect(study)


class StudyMixin(ResearcherRequiredMixin):
    nav_section = "studies"

    def get_study(self) -> Study:
        """The study of the URL; a write request on it must come from its creator (403 otherwise)."""
        study = get_object_or_404(
            Study.objects.select_related("layer__network", "extraction__dataset", "created_by", "overlap_class"),
            pk=self.kwargs["pk"],
        )
        study_write_check(self.request, study)
        return study


class StudyDetailView(StudyMixin, TemplateView):
    template_name = "annotation/study_detail.html"

    def get_context_data(self, **kwargs):
        study = self.get_study()
        return {
            **super().get_context_data(**kwargs),
            "study": study,
            "classes": list(study.object_classes.values_list("name", flat=True)),
            "rater_rows": selectors.study_rater_rows(study),
            "task_progress": selectors.study_task_progress(study),
        }


class StudyReportView(StudyMixin, TemplateView):
    """Agreement with bootstrap intervals ("not sure" rejected, and kept), GG'18 Fig. 9 distributions."""

    template_name = "annotation/study_report.html"

    def get_context_data(self, **kwargs):
        study = self.get_study()
        simulated = simulated_choice(self.request.GET.get("simulated"))
        context = {**super().get_context_data(**kwargs), **exports.study_report_context(study, simulated=simulated)}
        context.update(self.comparison_context(study, simulated))
        return context

    def comparison_context(self, study: Study, simulated: str) -> dict:
        """Issue 7 item 4: human names vs the dataset's part vocabulary and vs dissection labels, the synonym
        table and its form."""
        context = {
            "names_vs_vocabulary": selectors.study_names_vs_vocabulary(study, simulated=simulated),
            "dissection_agreement": selectors.study_dissection_agreement(study, simulated=simulated),
            "synonyms": list(study.synonyms.all()),
            "synonym_form": SynonymForm(),
        }
        if study.layer_id:
            context["unit_grids"] = selectors.study_unit_grids(study)
            context["layer_dissection_url"] = reverse(
                "analysis:layer_dissection", args=[study.layer.network.name, study.layer.name]
            )
        return context


class StudySynonymsView(StudyMixin, View):
    """Adds (or replaces) an entry of the study's synonym table, or deletes one; back to the report."""

    def post(self, request, *args, **kwargs):
        study = self.get_study()
        back = reverse("annotation:study_report", args=[study.pk]) + "#names"
        if "delete" in request.POST:
            try:
                deleted = services.synonym_delete(study=study, synonym_id=int(request.POST["delete"]))
            except ValueError:
                deleted = False
            if deleted:
                messages.success(request, "Synonym removed.")
            else:
                messages.error(request, "No such synonym.")
            return redirect(back)
        form = SynonymForm(request.POST)
        if not form.is_valid():
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
            messages.error(request, f"Synonym not saved — {problems}")
            return redirect(back)
        try:
            synonym = services.synonym_set(
                study=study, name=form.cleaned_data["name"], maps_to=form.cleaned_data["maps_to"], user=request.user
            )
        except services.StudyInputError as error:
            messages.error(request, f"Synonym not saved — {error}")
            return redirect(back)
        messages.success(request, f"Synonym saved: “{synonym.name}” counts as “{synonym.maps_to}”.")
        return redirect(back)


class StudyExportView(StudyMixin, View):
    """A study export file (:data:`annotation.expert.exports.STUDY_EXPORT_FILES`): raw judgments with full provenance
    (CSV/JSON), aggregated results, the agreement report, the one-page HTML report; ``?simulated=`` as on the
    report page."""

    def get(self, request, *args, **kwargs):
        study = self.get_study()
        name = kwargs.get("name", "judgments.csv")
        if name not in exports.STUDY_EXPORT_FILES:
            raise Http404("No such export.")
        simulated = simulated_choice(request.GET.get("simulated"))
        return attachment_response(*exports.study_export_file(study, name, simulated=simulated))


def unit_expert_panel(*, unit, request) -> str | None:
    """The unit page's expert panel (registered in ``AnnotationConfig.ready``): every expert study's answers
    about the unit, with links to the studies; None when no expert answered about it."""
    studies = selectors.unit_expert_answers(unit)
    if not studies:
        return None
    return render_to_string("annotation/_unit_expert_panel.html", {"studies": studies, "unit": unit}, request=request)
