from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from .forms import LoginForm


class LoginView(auth_views.LoginView):
    """The site's login; a throttled login answers 429 with ``Retry-After`` (:mod:`accounts.throttle`)."""

    template_name = "accounts/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled_wait is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.throttled_wait)
        return response


@login_required
def home(request):
    """Send each user to the home page of their role."""
    role = request.user.primary_role
    if role is None:
        return render(request, "accounts/no_role.html", status=403)
    return redirect(role.home_url_name)
