"""The durable log between the collectors and the processor."""

from __future__ import annotations

from aap.log.base import Append, Log, LogStats, Record
from aap.settings import Settings


def open_log(settings: Settings) -> Log:
    if settings.log_backend == "null":
        from aap.log.null import NullLog

        return NullLog()
    if settings.log_backend == "sqlite":
        from aap.log.sqlite import SQLiteLog

        return SQLiteLog(settings.data_path / "log")
    raise ValueError(f"unknown log backend {settings.log_backend!r} (use sqlite or null)")


__all__ = ["Append", "Log", "LogStats", "Record", "open_log"]
