"""Writes and orchestration of the machine side, one module per domain.

Importing this package registers every job kind (each domain module registers its own).
"""
from . import datasets, dissection, extraction, grids, net2vec, networks, runs, selfcheck  # noqa: F401
