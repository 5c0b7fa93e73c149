"""Settings shared by every environment. Every machine-specific value comes from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: list[str]) -> list[str]:
    value = env(name)
    return default if value is None else [item.strip() for item in value.split(",") if item.strip()]


# Bulk arrays (activation caches, tallies), generated datasets and trained weights live here.
UNITSCOPE_DATA_DIR = Path(env("UNITSCOPE_DATA_DIR", str(BASE_DIR / "var"))).resolve()
# "auto" uses CUDA when a GPU is visible to the worker, else the CPU.
UNITSCOPE_DEVICE = env("UNITSCOPE_DEVICE", "auto")
if UNITSCOPE_DEVICE not in {"auto", "cpu", "cuda"} and not UNITSCOPE_DEVICE.startswith("cuda:"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"UNITSCOPE_DEVICE must be auto, cpu, cuda or cuda:N, not {UNITSCOPE_DEVICE!r}")

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "accounts",
    "analysis",
    "annotation",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "unitscope.csp.ContentSecurityPolicyMiddleware",
    "unitscope.boundary.ControlCharactersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# Content-Security-Policy (unitscope/csp.py): empty → scripts and everything else from our own origin only.
UNITSCOPE_CSP = env("UNITSCOPE_CSP", "")

ROOT_URLCONF = "unitscope.urls"
WSGI_APPLICATION = "unitscope.wsgi.application"
ASGI_APPLICATION = "unitscope.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.media",
                "accounts.context_processors.roles",
                "accounts.context_processors.nav_section",
            ],
        },
    },
]

# SQLite under var/ unless DATABASE_URL names another database (PostgreSQL in production and CI).
DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", f"sqlite:///{UNITSCOPE_DATA_DIR / 'unitscope.sqlite3'}"),
        conn_max_age=int(env("CONN_MAX_AGE", "0")),
        # A persistent connection broken by a database restart is noticed before a request uses it.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Several processes (web server, worker) share the file: wait for locks instead of failing,
    # take the write lock at BEGIN so read-then-write transactions cannot deadlock, and use WAL.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "accounts:home"
LOGOUT_REDIRECT_URL = "accounts:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(UNITSCOPE_DATA_DIR / "media")))
# Django serves rendered grids itself unless a web server in front does (production sets this off).
UNITSCOPE_SERVE_MEDIA = env_bool("UNITSCOPE_SERVE_MEDIA", True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# The artifact store (analysis.storage): unset, the data dir above is the store (nothing to start). In production
# an S3-compatible object store, s3://bucket/prefix, shared by the web and every worker (each keeps its own scratch
# copy under its UNITSCOPE_DATA_DIR); the endpoint for MinIO/Ceph/moto, credentials the usual boto way
# (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an instance role). Rendered grids then go to <prefix>/media through
# django-storages and are served from the store: signed URLs, or public ones under UNITSCOPE_MEDIA_PUBLIC_URL
# (a CDN or public-read bucket domain, e.g. media.example.org).
UNITSCOPE_STORAGE_URL = env("UNITSCOPE_STORAGE_URL", "")
UNITSCOPE_STORAGE_ENDPOINT_URL = env("UNITSCOPE_STORAGE_ENDPOINT_URL", "")
UNITSCOPE_STORAGE_REGION = env("UNITSCOPE_STORAGE_REGION", "")
UNITSCOPE_MEDIA_PUBLIC_URL = env("UNITSCOPE_MEDIA_PUBLIC_URL", "")
UNITSCOPE_MEDIA_URL_EXPIRY = int(env("UNITSCOPE_MEDIA_URL_EXPIRY", str(7 * 24 * 3600)))


def object_store_media(url: str) -> dict:
    """``STORAGES["default"]`` for grids in the object store at ``url`` (``s3://bucket/prefix``)."""
    from django.core.exceptions import ImproperlyConfigured

    if not url.startswith("s3://") or not url[5:].split("/")[0]:
        raise ImproperlyConfigured(f"UNITSCOPE_STORAGE_URL must look like s3://bucket/prefix, not {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "location": "/".join(p for p in (prefix.strip("/"), "media") if p),
            "endpoint_url": UNITSCOPE_STORAGE_ENDPOINT_URL or None,
            "region_name": UNITSCOPE_STORAGE_REGION or None,
            # names are content hashes: the same name is the same bytes, so overwriting is harmless
            "file_overwrite": True,
            "custom_domain": UNITSCOPE_MEDIA_PUBLIC_URL or None,
            "querystring_auth": not UNITSCOPE_MEDIA_PUBLIC_URL,
            "querystring_expire": UNITSCOPE_MEDIA_URL_EXPIRY,
            "object_parameters": {"CacheControl": "public, max-age=31536000, immutable"},
        },
    }


if UNITSCOPE_STORAGE_URL:
    STORAGES["default"] = object_store_media(UNITSCOPE_STORAGE_URL)

# Celery. The embedded default needs no server: the filesystem transport keeps messages in folders
# under the data dir, and a real worker process consumes them. It runs through unitscope.broker's transport
# (atomic writes, a corrupt message set aside instead of killing the worker; README "The embedded broker"),
# with the worker's remote control off: it broadcasts through exchange files and nothing here needs it
# (cancelling a run goes through the run's row). CELERY_BROKER_URL=redis://... in production and CI.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://")
# With acks_late, Redis hands a task that was not acknowledged within visibility_timeout to another worker: it
# must exceed the longest hard time limit of any job kind (12 h 5 min; analysis.jobs.longest_time_limit, which a
# test compares with this), or a long dissection would run twice. The registry cannot be read here (settings load
# before the apps), hence the constant.
CELERY_VISIBILITY_TIMEOUT = 13 * 3600
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
# The embedded broker's folders: under the data dir unless UNITSCOPE_BROKER_DIR says where (processes on one machine
# that keep separate data dirs, e.g. workers with their own scratch, share the broker through it).
UNITSCOPE_BROKER_DIR = Path(env("UNITSCOPE_BROKER_DIR", str(UNITSCOPE_DATA_DIR / "celery"))).resolve()
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = UNITSCOPE_BROKER_DIR / "queue"
    _processed_dir = UNITSCOPE_BROKER_DIR / "processed"
    CELERY_BROKER_TRANSPORT = "unitscope.broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_processed_dir),
        "control_folder": str(UNITSCOPE_BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
# Run rows hold every job's state and results: no result backend is needed.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Workers write a heartbeat row every UNITSCOPE_WORKER_HEARTBEAT_SECONDS; a queue whose workers were all last
# seen longer than UNITSCOPE_WORKER_ALIVE_SECONDS ago has no worker, and its waiting runs say so on the pages
# and in the API. A queued run whose broker message has been missing for UNITSCOPE_ORPHAN_AFTER_SECONDS is
# sent again once, then failed with the reason. UNITSCOPE_WORKER_COMMAND is what the pages tell people to run
# to start a worker ({queue} is replaced; empty: the celery command of this installation).
UNITSCOPE_WORKER_HEARTBEAT_SECONDS = float(env("UNITSCOPE_WORKER_HEARTBEAT_SECONDS", "10"))
UNITSCOPE_WORKER_ALIVE_SECONDS = float(env("UNITSCOPE_WORKER_ALIVE_SECONDS", "45"))
UNITSCOPE_ORPHAN_AFTER_SECONDS = float(env("UNITSCOPE_ORPHAN_AFTER_SECONDS", "60"))
UNITSCOPE_WORKER_COMMAND = env("UNITSCOPE_WORKER_COMMAND", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The filesystem broker has no host; kombu warns about that on every connection.
        "kombu.connection": {"level": "ERROR"},
    },
}

# The researchers' REST API (api/): token or session auth, researchers only, OpenAPI 3 at /api/schema/.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.IsResearcher"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "UnitScope API",
    "DESCRIPTION": "Networks, datasets, units, runs, studies, judgments and agreement, for researchers' scripts.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["api.permissions.IsResearcher"],
    "COMPONENT_SPLIT_REQUEST": True,
}

# Rate limits on the crowd's public pages (unitscope/ratelimit.py): "<count>/<s|m|h>" per worker code (or per
# address on entry pages); "off" disables one.
UNITSCOPE_RATE_LIMIT_ENABLED = env_bool("UNITSCOPE_RATE_LIMIT_ENABLED", True)
UNITSCOPE_RATE_LIMITS = {
    "crowd_entry": env("UNITSCOPE_RATE_LIMIT_CROWD_ENTRY", "60/m"),
    "crowd_worker": env("UNITSCOPE_RATE_LIMIT_CROWD_WORKER", "120/m"),
}
# Failed logins (accounts/throttle.py), on the site and the admin: per username from anywhere, per address on
# any usernames; once reached, logins are refused until the window ends.
UNITSCOPE_LOGIN_THROTTLE = {
    "account": env("UNITSCOPE_LOGIN_THROTTLE_ACCOUNT", "10/15m"),
    "address": env("UNITSCOPE_LOGIN_THROTTLE_ADDRESS", "30/15m"),
}
# Rate-limit and login counters live in the default cache, which every web process must share: the database
# cache by default (no server; `migrate` makes its table), Redis with CACHE_URL=redis://… (faster, atomic counts).
_cache_url = env("CACHE_URL")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url}
    if _cache_url
    else {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "unitscope_cache"}
}
