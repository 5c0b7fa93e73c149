"""The engine is pure: it imports with no Django settings and pulls in neither Django nor Celery."""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_every_engine_module_imports_without_django():
    import analysis.engine

    modules = [f"analysis.engine.{info.name}" for info in pkgutil.iter_modules(analysis.engine.__path__)]
    assert "analysis.engine.selfcheck" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'celery', 'annotation', 'accounts', 'unitscope'})\n"  # noqa: E501
        "assert not bad, bad\n"
        "assert not any(m.startswith('analysis.') and not m.startswith('analysis.engine') for m in sys.modules)\n"
        "print('ok', len(sys.argv))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ok")
