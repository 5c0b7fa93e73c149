from .roles import Role


def roles(request):
    """Expose the user's roles to templates for the per-role navigation."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"user_roles": []}
    names = [role.value for role in user.roles]
    return {"user_roles": names, "is_researcher": Role.RESEARCHER.value in names,
            "is_expert": Role.EXPERT.value in names, "is_crowd": Role.CROWD.value in names}
