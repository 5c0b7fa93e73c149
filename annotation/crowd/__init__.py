"""Crowd studies (ND'18 §3.1, AAAI'18 Fig. 8): validation, description and purity HITs answered by crowd workers
through own links, MTurk or Prolific, with gold items, a qualification test, review and aggregated reports.
Imports the floor (``annotation.*``), never ``annotation.expert``."""
