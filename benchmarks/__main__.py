"""Run every benchmark in turn: ``python -m benchmarks --size small|full``.

Each benchmark module runs in its own interpreter (``python -m benchmarks.<name> --size S
--runs N``), so one's services, threads and memory never leak into the next. A module
joins the suite by being listed in ``MODULES`` and accepting ``--size`` and ``--runs``
(``benchmarks.common.parse_args``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from benchmarks.common import ROOT, SIZES

MODULES = (
    "read", "fold", "freshness", "memory", "allocation", "batch_rules", "importer", "replan",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="run every benchmark")
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per figure (>= 3)")
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run just these benchmarks")
    args = parser.parse_args(argv)

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}
    outcome: dict[str, str] = {}
    for name in args.only or MODULES:
        module = f"benchmarks.{name}"
        if importlib.util.find_spec(module) is None:
            outcome[name] = "skipped (no module yet)"
            print(f"-- {module}: not present, skipped", flush=True)
            continue
        print(f"\n-- {module} --size {args.size}", flush=True)
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", module, "--size", args.size, "--runs", str(args.runs)],
            cwd=ROOT,
            env=env,
        )
        try:
            code = child.wait()
        finally:
            if child.poll() is None:  # interrupted: let the child stop its own services
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        elapsed = time.monotonic() - started
        outcome[name] = f"{'ok' if code == 0 else f'FAILED (exit {code})'} in {elapsed:.0f}s"
    print("\n== benchmarks, size " + args.size + " ==")
    for name, text in outcome.items():
        print(f"  {name:<10} {text}")
    print(f"results: {(ROOT / 'benchmarks' / 'results').relative_to(ROOT)}/")
    return 0 if all(not v.startswith("FAILED") for v in outcome.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
