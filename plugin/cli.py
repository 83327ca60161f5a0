"""`cluster-c2-plugin`: the sealer-side C2 processor (its own issue fills this in)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cluster-c2-plugin",
        description="C2 processor for venus-worker/damocles-worker that sends C2 to the broker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve C2 requests on stdin/stdout (not yet available)")
    parser.parse_args(argv)
    print("cluster-c2-plugin: not yet available in this version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
