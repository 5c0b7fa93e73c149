"""The UnitScope project package: settings, URLs, the Celery app, WSGI/ASGI.

It is called ``unitscope`` and not ``platform`` (the design card's word): a top-level package named
``platform`` hides the standard library module of that name, and ``import uuid`` (so Django) breaks.
"""

from .celery import app as celery_app

__all__ = ("celery_app",)
