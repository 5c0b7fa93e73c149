"""Production settings refuse unsafe configurations, and `check --deploy` is clean when configured."""

import os
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
GOOD_SECRET = "k3J9-vQx_2mLr8ZtP4wYb7NcE1uHs6DgAf0oRiTq5XyWnMzKpBjVl"


def run_manage(*args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    env.update(DJANGO_SETTINGS_MODULE="unitscope.settings.production", **env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_secret_key():
    completed = run_manage("check", ALLOWED_HOSTS="unitscope.example.org")
    assert completed.returncode != 0
    assert "SECRET_KEY must be set" in completed.stderr


def test_production_refuses_debug():
    completed = run_manage("check", SECRET_KEY=GOOD_SECRET, DEBUG="1", ALLOWED_HOSTS="unitscope.example.org")
    assert completed.returncode != 0
    assert "DEBUG must be off" in completed.stderr


def test_production_check_deploy_is_clean():
    completed = run_manage(
        "check", "--deploy", "--fail-level", "WARNING", SECRET_KEY=GOOD_SECRET, ALLOWED_HOSTS="unitscope.example.org"
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "no issues" in completed.stdout


def test_embedded_defaults(settings):
    from unitscope.settings import base

    assert base.CELERY_BROKER_URL.startswith(("filesystem://", "redis://"))
    assert settings.UNITSCOPE_DEVICE in {"auto", "cpu", "cuda"} or settings.UNITSCOPE_DEVICE.startswith("cuda:")
    if not os.environ.get("DATABASE_URL"):
        assert base.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
        assert Path(base.DATABASES["default"]["NAME"]).parent == base.UNITSCOPE_DATA_DIR
