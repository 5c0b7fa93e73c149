"""The serving process's warm-up (``unitscope.warmup``, run by ``gunicorn.conf.py`` before forking)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.template import engines

from unitscope.warmup import LAZY_IMPORTS, template_names, warm


def test_warm_up_compiles_every_template_of_the_project():
    names = template_names()
    ours = sorted(
        path.relative_to(settings.BASE_DIR / "templates").as_posix()
        for path in (settings.BASE_DIR / "templates").rglob("*.html")
    )
    assert set(ours) <= set(names) and "annotation/annotate.html" in names
    assert not any(name.startswith("admin/") or name.startswith("rest_framework/") for name in names)
    assert warm() == len(names)  # a template that does not compile raises here
    loader = engines["django"].engine.template_loaders[0]
    assert len(getattr(loader, "get_template_cache", {})) >= len(names)  # kept: forked workers inherit them


def test_gunicorn_settings_are_sync_workers_one_per_core_plus_one(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    config = runpy.run_path(str(Path(settings.BASE_DIR) / "gunicorn.conf.py"))
    assert config["worker_class"] == "sync" and config["threads"] == 1 and config["preload_app"] is True
    assert config["workers"] == (os.cpu_count() or 1) + 1
    monkeypatch.setenv("WEB_CONCURRENCY", "7")
    assert runpy.run_path(str(Path(settings.BASE_DIR) / "gunicorn.conf.py"))["workers"] == 7


def test_warm_up_imports_what_pages_import_lazily():
    """In a fresh process (this one may have imported them already): absent after setup, present after warm()."""
    script = (
        "import sys, django; django.setup(); from unitscope.warmup import LAZY_IMPORTS, warm; "
        "before = [m in sys.modules for m in LAZY_IMPORTS]; warm(); "
        "print(before, [m in sys.modules for m in LAZY_IMPORTS])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "unitscope.settings.test"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == f"{[False] * len(LAZY_IMPORTS)} {[True] * len(LAZY_IMPORTS)}"
