"""Query benchmark: every insight through ``POST /api/v1/query`` vs plain DuckDB SQL.

    python benchmarks/bench_query.py [--scale 1.0] [--runs 3] [--data-dir DIR]

Same as ``aap bench query``; see :mod:`aap.bench.query`. Generates 20M events of 500k
persons over 90 days (``--scale 0.05`` for 1M), loads them through the warehouse's write
path and tiering, and prints the median of each insight and its ratio to hand-written SQL
on one flat table. Always exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aap.bench.query import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of 20M events / 500k persons (default 1.0)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per insight (default 3)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keep the generated data here and reuse it next time")
    ap.add_argument("--only", type=int, action="append", default=[],
                    help="run only insight N (0-based; repeatable)")
    args = ap.parse_args(argv)
    run(scale=args.scale, runs=args.runs, data_dir=args.data_dir, only=tuple(args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
