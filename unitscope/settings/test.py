"""Settings for the test suite: the embedded defaults unless DATABASE_URL/CELERY_BROKER_URL say otherwise.

Every test session gets its own data directory (SQLite file, filesystem broker folders, generated
data), shared with the worker processes the tests start through the environment.
"""

import os
import tempfile

os.environ.setdefault("UNITSCOPE_DATA_DIR", tempfile.mkdtemp(prefix="unitscope-test-"))

from .base import *  # noqa: F403
from .base import DATABASES, UNITSCOPE_DATA_DIR, UNITSCOPE_STORAGE_URL, env, env_bool, object_store_media

DEBUG = False
SECRET_KEY = env("SECRET_KEY", "unitscope-test-key")
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": (
        object_store_media(UNITSCOPE_STORAGE_URL)
        if UNITSCOPE_STORAGE_URL
        else {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    ),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so that worker and server processes started by tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(UNITSCOPE_DATA_DIR / "test.sqlite3")}
# Serve static files straight from the app and project folders: tests never run collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
# Rate limits count in a process-wide cache that outlives each test: off here, switched on by the tests of them.
UNITSCOPE_RATE_LIMIT_ENABLED = env_bool("UNITSCOPE_RATE_LIMIT_ENABLED", False)
