from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts and roles"

    def ready(self) -> None:
        from .services import role_groups_ensure

        # Permissions exist only after every app's post_migrate ran; this receiver runs for each app
        # and is idempotent, so the groups end up with the full set.
        post_migrate.connect(lambda **kwargs: role_groups_ensure(), dispatch_uid="accounts.role_groups_ensure",
                             weak=False)
