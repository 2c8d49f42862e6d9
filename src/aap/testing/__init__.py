"""Helpers shared by the tests and the benchmarks (``benchmarks/`` of a source checkout).

:mod:`aap.testing.query_data` makes deterministic product-analytics traffic and loads it
through the warehouse's own write path and tiering operations.
"""
