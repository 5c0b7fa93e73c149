"""Local use on one machine: the embedded defaults (SQLite, filesystem broker), debug on."""

from .base import *  # noqa: F403
from .base import env, env_bool

DEBUG = env_bool("DEBUG", True)
# A fixed key is acceptable only here: local settings never serve the public.
SECRET_KEY = env("SECRET_KEY", "unitscope-local-development-key-not-for-production")
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
