"""Warm a serving process before it takes requests: import every view (and what views import lazily) and compile
every template once.

Django imports views when the URLconf is first resolved and compiles a template the first time it is rendered
(then keeps it: the cached loader, DEBUG off). Done in gunicorn's master (``gunicorn.conf.py``), the forked
workers inherit both, and the first visitors after a deploy are served as fast as the rest.
"""

from __future__ import annotations

import importlib
from pathlib import Path

LAZY_IMPORTS = ("crowdkit.aggregation",)
"""Libraries that pages import only when first used (Dawid-Skene for the crowd reports: about 1.5 s with pandas
and scikit-learn), kept lazy so that commands and tests that never need them do not pay for them."""


def template_names() -> list[str]:
    """Every ``.html`` template of this project (its ``templates/`` folder and its apps'); third-party apps'
    templates (the admin's, the API browser's) are left to compile when first used."""
    from django.conf import settings
    from django.template import engines
    from django.template.loaders.app_directories import get_app_template_dirs

    project = Path(settings.BASE_DIR).resolve()
    names = set()
    for engine in engines.all():
        folders = [
            Path(folder).resolve()
            for folder in [*engine.dirs, *(get_app_template_dirs("templates") if engine.app_dirs else [])]
        ]
        ours = [folder for folder in folders if folder.is_relative_to(project) and "site-packages" not in folder.parts]
        names.update(path.relative_to(folder).as_posix() for folder in ours for path in folder.rglob("*.html"))
    return sorted(names)


def warm() -> int:
    """Import the URLconf's views and the libraries they import lazily, and compile every template; how many
    templates were compiled."""
    from django.template.loader import get_template
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 — imports every view module
    for module in LAZY_IMPORTS:
        importlib.import_module(module)
    names = template_names()
    for name in names:
        get_template(name)
    return len(names)
