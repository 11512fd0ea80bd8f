"""``python -m benchmarks.learnability [--quick] [--out DIR] [--seed N] [--write]``: the learnability benchmark.

See benchmarks/learnability/experiment.py for the stages and docs/benchmarks.md / benchmarks/results/learnability.md
for the results. ``--quick`` is the CI smoke test (a few minutes on 2 cores): it fails (exit 1) when the identity
or the landmark conditioning no longer changes the generated images.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run (CI smoke test), nothing written to results")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = deterministic and steady)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/learnability.md and figures")
    args = parser.parse_args(argv)

    from benchmarks.learnability import experiment, report

    preset = "quick" if args.quick else "full"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="learnability-") as tmp:
        out = args.out or Path(tmp)
        results = experiment.run(out, preset, seed=args.seed, threads=args.threads)
        results["seconds"]["total"] = time.perf_counter() - t0
        command = "python -m benchmarks.learnability " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        print(report.summary(results))
        problems = report.smoke_check(results)
        if args.write and not args.quick:
            report.write(results, command.strip())
    for p in problems:
        print(f"SMOKE CHECK FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
