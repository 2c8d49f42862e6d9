"""The core process: :mod:`.app` (its composition root, answering on a Unix socket),
:mod:`.supervisor` (``aap serve``: the collector's workers, and the core kept running)
and :mod:`.client` (the one client of the core's socket)."""
