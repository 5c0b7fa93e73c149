import secrets

from django.core.management.base import BaseCommand, CommandError

from accounts.roles import Role
from accounts.services import user_create


class Command(BaseCommand):
    help = "Create a user with a role (researcher, expert or crowd). Prints the password if generated."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=[role.value for role in Role])
        parser.add_argument("--password", help="default: a random password, printed")
        parser.add_argument("--email", default="")

    def handle(self, *args, username, role, password, email, **options):
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        try:
            user_create(username=username, password=password, role=Role(role), email=email)
        except Exception as error:  # ValidationError / IntegrityError: say it plainly
            raise CommandError(f"could not create {username!r}: {error}") from error
        self.stdout.write(f"created {role} {username}" + (f" with password {password}" if generated else ""))
