"""`gpuproxy-worker`: the per-GPU worker daemon (its own issue fills this in)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpuproxy-worker", description="Per-GPU worker that runs C2 tasks from the broker."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run one worker (not yet available)")
    parser.parse_args(argv)
    print("gpuproxy-worker: not yet available in this version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
