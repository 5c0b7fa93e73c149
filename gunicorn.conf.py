"""gunicorn's settings for UnitScope, read from the working directory by ``gunicorn unitscope.wsgi``; options on
the command line win.

Sync workers, one request each, ``CPUs + 1`` of them (``WEB_CONCURRENCY`` overrides): a request here is short and
CPU-bound (PostgreSQL answers in well under a millisecond), so more processes than cores only add switching. On
two cores ``benchmarks/bench_load.py`` measured next-task p95 for 30 simultaneous claims at 83 ms with 3 sync
workers, 91 ms with 4, 108 ms with 6, and 244–371 ms with 3 workers of 8 threads (threads of one process take
turns on the GIL).

The application is loaded once in the master and warmed there (every view imported, every template compiled,
:mod:`unitscope.warmup`) before workers are forked, so no visitor waits for a worker's first compile.
"""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", (os.cpu_count() or 1) + 1))
worker_class = "sync"
threads = 1
preload_app = True
timeout = 60
graceful_timeout = 10


def when_ready(server):
    import gc

    from unitscope.warmup import warm

    warm()
    # What the master built stays shared with the workers: out of the collector's sight, its pages are not
    # copied by each worker's first full collection.
    gc.freeze()
