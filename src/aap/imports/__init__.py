"""Imports of history (``aap import``): files, object stores, databases and the exports
of other tools, through the collector's one ingestion path."""
