"""Input refused at the door: control characters in a request's path or query string answer 400.

No URL of the site means a control character, and some reach the database verbatim (a study token, a worker
code, MTurk's ``workerId``/``assignmentId``, Prolific's ``PROLIFIC_PID``): PostgreSQL refuses NUL in text and
the request ended in a 500. Tab, newline and carriage return are allowed in query values (a pasted search),
never in the path. Form fields are guarded by Django's forms (``CharField`` refuses NUL).
"""

from __future__ import annotations

import re

from django.http import HttpResponseBadRequest

PATH_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
VALUE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def has_control_characters(request) -> bool:
    """Whether ``request``'s path, or a name or value of its query string, holds a control character."""
    if PATH_CONTROL.search(request.path_info):
        return True
    return any(
        VALUE_CONTROL.search(key) or any(VALUE_CONTROL.search(value) for value in values)
        for key, values in request.GET.lists()
    )


class ControlCharactersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if has_control_characters(request):
            return HttpResponseBadRequest(
                "Control characters are not allowed in a web address.", content_type="text/plain; charset=utf-8"
            )
        return self.get_response(request)
