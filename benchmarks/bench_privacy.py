"""Privacy benchmark: access and erasure of a person in a 10-million-event store.

    python benchmarks/bench_privacy.py [--scale 1.0] [--data-dir DIR] [--batch 1000]

Same as ``aap bench privacy``; see :mod:`aap.bench.privacy`. Prints the figures, the
targets, and the ratios to a plain scan of the same store. Always exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aap.bench.privacy import run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of 10M events / 250k persons (default 1.0)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keep the generated store here and reuse it next time")
    ap.add_argument("--batch", type=int, default=1000, help="persons in the batch erasure")
    args = ap.parse_args(argv)
    run(scale=args.scale, data_dir=args.data_dir, batch=args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
