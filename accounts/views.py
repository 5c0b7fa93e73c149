from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


@login_required
def home(request):
    """Send each user to the home page of their role."""
    role = request.user.primary_role
    if role is None:
        return render(request, "accounts/no_role.html", status=403)
    return redirect(role.home_url_name)
