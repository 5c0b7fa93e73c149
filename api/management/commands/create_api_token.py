"""``python manage.py create_api_token NAME [--regenerate]``: print a researcher's API token."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api.services import TokenRefused, api_token_create


class Command(BaseCommand):
    help = "Print (creating it if needed) the API token of a researcher; --regenerate replaces it."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--regenerate", action="store_true", help="replace the existing token with a new one")

    def handle(self, *args, username, regenerate, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        try:
            token, _ = api_token_create(user=user, regenerate=regenerate)
        except TokenRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(token.key)
