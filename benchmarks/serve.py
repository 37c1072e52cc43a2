"""Serve any ASGI app factory with exactly the server settings of `atp serve`.

``python -m benchmarks.serve benchmarks.baseline_app:constant_app --port N --workers 2``
runs ``atp_service.cli``'s own ``serve`` command with the application target swapped, so a
baseline app gets the same granian interface, worker count, loop, threads and logging as
the service, and keeps getting them if ``atp serve`` changes its settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="module:factory of the ASGI app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import granian

    from atp_service import cli

    real = granian.Granian

    def swapped(target: str, *rest: Any, **kwargs: Any) -> Any:
        print(f"benchmarks.serve: {args.target} instead of {target} with {kwargs}", file=sys.stderr)
        return real(args.target, *rest, **kwargs)

    granian.Granian = swapped  # type: ignore[assignment]
    return cli.main(["serve", "--port", str(args.port), "--workers", str(args.workers)])


if __name__ == "__main__":
    raise SystemExit(main())
