"""AAP: a privacy-first event analytics pipeline."""

__version__ = "0.1.0"
