"""Insights as data → SQL for the embedded engine (DuckDB) → numbers.

The Python API::

    from aap.query import Client
    Client("http://127.0.0.1:8000", api_key).query({"kind": "trends", ...})

or, in the process that owns the warehouse, :func:`aap.query.runner.run_insight`.
"""

from aap.query.client import Client, QueryError
from aap.query.models import Insight, parse_insight

__all__ = ["Client", "Insight", "QueryError", "parse_insight"]
