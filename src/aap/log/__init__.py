"""The durable log between the collectors and the processor."""

from __future__ import annotations

from aap.log.base import Append, Log, LogStats, Record, scan
from aap.settings import Settings


def open_log(settings: Settings) -> Log:
    if settings.storage.log_backend == "null":
        from aap.log.null import NullLog

        return NullLog()
    if settings.storage.kafka:
        from aap.log.kafka import KafkaLog

        return KafkaLog(settings.storage.log_url)
    from aap.log.sqlite import SQLiteLog  # the only other backend (the settings say so)

    return SQLiteLog(settings.data.log)


__all__ = ["Append", "Log", "LogStats", "Record", "open_log", "scan"]
