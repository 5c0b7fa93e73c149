"""A small mixin for pages whose form starts a run: validate, call the service, show the run."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect

from analysis.services.runs import RunInputError


class StartRunFormMixin:
    """``form_valid`` calls :meth:`start_run` (a service call returning a Run) and redirects to the run.

    An expected user error from the service becomes a form error instead of a failed run, shown at the fields
    it names (the job kind's schema names every parameter at fault) or above the form.
    """

    run_label = "Run"

    def start_run(self, form):
        raise TypeError(f"{type(self).__name__} must define start_run")

    def form_valid(self, form):
        try:
            run = self.start_run(form)
        except RunInputError as error:
            for field, message in (error.errors or {"": str(error)}).items():
                if field in form.fields:
                    form.add_error(field, message)
                else:
                    form.add_error(None, f"{field}: {message}" if field else message)
            return self.form_invalid(form)
        messages.success(self.request, f"{self.run_label} run {run.pk} queued.")
        return redirect(run)
