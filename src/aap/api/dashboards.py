"""The insights part of the web app's REST API: dashboards (named lists of saved
insights) and the documented views of the ``sql`` kind with their columns.

:class:`DashboardsAPI` is a mixin of :class:`aap.api.rest.RestAPI`; its routes are in
:data:`aap.api.routes.ROUTES` (the "insights" block).
"""

from __future__ import annotations

from typing import Any

from aap import errors
from aap.query import sql
from aap.query.dashboards import Dashboards, parse_dashboard


def sql_views(role: str) -> list[dict[str, Any]]:
    """The views a ``sql`` query may read, each with the columns a key of ``role`` sees
    (name and DuckDB type) and the names of those it does not (personal: role privacy)."""
    out = []
    for view, (_, columns) in sql.VIEWS.items():
        visible = sql.visible_columns(view, role)
        out.append({
            "name": view,
            "columns": [{"name": c, "type": sql.column_type(view, c)} for c in visible],
            "hidden": [c for c in columns if c not in visible],
        })
    return out


class DashboardsAPI:
    dashboards: Dashboards

    def list_dashboards(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return {"dashboards": self.dashboards.list()}

    def create_dashboard(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.dashboards.create(parse_dashboard(body))

    def get_dashboard(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return self.dashboards.get(int(params["id"]))

    def delete_dashboard(self, params: dict[str, str], body: bytes, role: str) -> Any:
        if not self.dashboards.delete(int(params["id"])):
            raise errors.NotFound(f"no dashboard with id {params['id']}",
                                  code="unknown_dashboard")
        return {"deleted": int(params["id"])}

    def list_sql_views(self, params: dict[str, str], body: bytes, role: str) -> Any:
        return {"views": sql_views(role)}
