"""The human side of UnitScope: one Django app (label ``annotation``, one migration chain) in two wings over a
shared floor.

* The floor — :mod:`~annotation.models`, :mod:`~annotation.claims` (the two raw-SQL next-task claims),
  :mod:`~annotation.naming` (concept names), :mod:`~annotation.common` (helpers both wings use),
  :mod:`~annotation.fields` (form fields both wings use) — imports no wing.
* :mod:`annotation.expert`: expert studies (GG'18): services, selectors, simulation, exports, forms, views, demo.
* :mod:`annotation.crowd`: crowd studies (ND'18, AAAI'18 purity): services (the worker's flow), hits (planning),
  truth (pixel truth, gold), simulation, selectors, aggregation, reports, exports, adapters, forms, views,
  report_views, demo.
* :mod:`~annotation.urls`, :mod:`~annotation.admin` and :mod:`~annotation.apps` wire the wings into the site: the
  only floor modules that import a wing.

Who may import whom (``tests/test_import_boundaries.py`` enforces it): ``annotation`` may import ``analysis``,
never the reverse; the wings never import each other; within a wing, writes and reads sit below the pages and
reports that use them (submitting an answer never imports the reports), and the import graph has no cycles.

Function-local imports are the exception, each with its reason on the same line. The reasons we accept: keeping
torch and crowd-kit out of the web processes that import a module for its other functions (they cost seconds and
memory at start-up), and code that runs while Django's app registry is still loading (``apps.py``). Anything else
is a module-level import; a circle that a local import would hide is a layering error to fix.
"""
