from .roles import Role

NAV_SECTIONS = ("overview", "runs", "datasets", "networks", "studies", "selfcheck", "api", "expert", "tasks")
"""The main navigation's sections (``templates/base.html``); a page view names its own with ``nav_section``."""


def roles(request):
    """Expose the user's roles to templates for the per-role navigation."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"user_roles": []}
    names = [role.value for role in user.roles]
    return {
        "user_roles": names,
        "is_researcher": Role.RESEARCHER.value in names,
        "is_expert": Role.EXPERT.value in names,
        "is_crowd": Role.CROWD.value in names,
    }


def nav_section(request):
    """The navigation section the current page belongs to, as its view declares it (``nav_section`` on the view
    class, or on the view function); ``""`` for pages outside the main navigation."""
    match = getattr(request, "resolver_match", None)
    view = getattr(match, "func", None)
    view = getattr(view, "view_class", None) or getattr(view, "cls", None) or view
    section = getattr(view, "nav_section", "")
    return {"nav_section": section if section in NAV_SECTIONS else ""}
