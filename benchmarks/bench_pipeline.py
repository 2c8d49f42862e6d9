"""Pipeline benchmark: freshness, processor throughput, memory and storage per event.

    python benchmarks/bench_pipeline.py [--rate 50000] [--low-rate 10000] [--duration 20]
        [--backlog 5000000] [--people 20000] [--clients 2] [--only freshness,backlog,storage]

See :mod:`aap.bench.pipeline`. Prints its figures and the targets they are measured
against, and always exits 0.
"""

from __future__ import annotations

import argparse
import sys

from aap.bench.pipeline import run

PHASES = ("freshness", "backlog", "storage")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rate", type=int, default=50_000,
                    help="offered background events/s for the freshness probe (default 50000)")
    ap.add_argument("--low-rate", type=int, default=10_000,
                    help="a second, lower offered rate for the freshness probe (default 10000)")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds of background load per freshness measurement (default 20)")
    ap.add_argument("--backlog", type=int, default=5_000_000,
                    help="events in the backlog the processor drains (default 5000000)")
    ap.add_argument("--people", type=int, default=20_000,
                    help="simulated people of the demo traffic for storage (default 20000, "
                         "~117k events)")
    ap.add_argument("--clients", type=int, default=2,
                    help="load-generator processes (default 2)")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"comma-separated phases to run (default {','.join(PHASES)})")
    args = ap.parse_args(argv)
    phases = tuple(p.strip() for p in args.only.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases: {', '.join(sorted(unknown))}")
    run(duration=args.duration, rate=args.rate, low_rate=args.low_rate,
        backlog_events=args.backlog, people=args.people, clients=args.clients, phases=phases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
