"""Writes and orchestration of the machine side, one module per domain.

Importing this package registers every job kind (each domain module registers its own, beside its executor);
:meth:`analysis.apps.AnalysisConfig.ready` imports it, so the job registry is complete once Django is set up.
"""

from . import (  # noqa: F401
    datasets,
    dissection,
    explanatory_graph,
    extraction,
    grids,
    net2vec,
    networks,
    parts,
    runs,
    selfcheck,
)
