"""Admin for accounts: users and groups are administered by superusers only.

Researchers use the admin for studies and runs (they are staff and hold our apps' model permissions), never for
accounts: whoever may edit users may make themselves superuser or set anyone's password.
"""

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group

from .forms import AdminLoginForm
from .models import User


class SuperuserOnlyAdmin:
    """Every right (seeing the module included) for superusers only, whatever the user's permissions say."""

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_add_permission(self, request):
        return self.has_module_permission(request)

    def has_change_permission(self, request, obj=None):
        return self.has_module_permission(request)

    def has_delete_permission(self, request, obj=None):
        return self.has_module_permission(request)


@admin.register(User)
class AccountUserAdmin(SuperuserOnlyAdmin, UserAdmin):
    pass


admin.site.unregister(Group)


@admin.register(Group)
class AccountGroupAdmin(SuperuserOnlyAdmin, GroupAdmin):
    pass


admin.site.site_header = "UnitScope administration"
admin.site.site_title = "UnitScope admin"
admin.site.login_form = AdminLoginForm
