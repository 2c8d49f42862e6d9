"""Ingest benchmark: durable vs null-log throughput and latency on ``POST /v1/batch``.

    python benchmarks/bench_ingest.py [--duration 10] [--rate 100000] [--clients 2]

Same as ``aap bench ingest``; see :mod:`aap.bench.ingest`. Prints its figures and the
targets they are measured against, and always exits 0.
"""

from __future__ import annotations

import argparse
import sys

from aap.bench.ingest import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--duration", type=float, default=10.0,
                    help="seconds per measurement (default 10)")
    ap.add_argument("--rate", type=int, default=100_000,
                    help="offered events/s for the open-loop latency measurement (default 100000)")
    ap.add_argument("--clients", type=int, default=2,
                    help="load-generator processes (default 2)")
    args = ap.parse_args(argv)
    run(duration=args.duration, rate=args.rate, clients=args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
