from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


def cache_tables_ensure(*, using: str = "default", **kwargs) -> None:
    """``createcachetable`` after every ``migrate``: the database cache (the default one, which holds the rate
    limits' and the login throttle's counts) needs its table, and a deployment that only migrates gets it."""
    call_command("createcachetable", database=using, verbosity=0)


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Accounts and roles"

    def ready(self) -> None:
        from .services import role_groups_ensure

        # Permissions exist only after every app's post_migrate ran; this receiver runs for each app
        # and is idempotent, so the groups end up with the full set.
        post_migrate.connect(
            lambda **kwargs: role_groups_ensure(), dispatch_uid="accounts.role_groups_ensure", weak=False
        )
        post_migrate.connect(cache_tables_ensure, sender=self, dispatch_uid="accounts.cache_tables_ensure")
