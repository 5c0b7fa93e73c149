"""Login forms of the site and of the admin, both throttled (:mod:`accounts.throttle`)."""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from unitscope.ratelimit import client_address

from .throttle import login_failed, login_succeeded, login_wait


class ThrottledLoginMixin:
    """Refuses a login while its account or address is throttled (before any password is checked), counts
    failures, clears the account's count on success."""

    throttled_wait: int | None = None

    def clean(self):
        username = self.data.get("username", "") if hasattr(self.data, "get") else ""
        address = client_address(self.request) if self.request is not None else ""
        self.throttled_wait = login_wait(username=username, address=address)
        if self.throttled_wait is not None:
            minutes = max(1, round(self.throttled_wait / 60))
            raise forms.ValidationError(
                f"Too many failed logins. Try again in about {minutes} minute{'s' if minutes != 1 else ''}.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            login_failed(username=username, address=address)
            raise
        login_succeeded(username=username)
        return cleaned


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass
