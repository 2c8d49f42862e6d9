"""AAP's benchmarks: they ship with the source only, not in the wheel.

One module per benchmark, each with one entry point, the click command ``main`` (its
options and their defaults are written there and nowhere else)::

    python -m benchmarks.ingest --duration 10     # from the root of a checkout
    aap bench ingest --duration 10                 # the same command, found by ``aap``

``ingest``, ``pipeline``, ``privacy``, ``query``, ``scrub``, ``stream``, ``web``, ``devices``,
``imports``, ``scale`` and ``cluster`` (the names ``aap bench`` lists are :data:`aap.cli.BENCHMARKS`);
:mod:`benchmarks.common` holds what they share.
Each prints its figures and the targets they are measured against, and exits 0 whether
the targets are met or not.
"""
