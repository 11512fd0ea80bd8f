"""Entry point of the learnability benchmark (issue 16) for ``python benchmarks/run_learnability.py [--quick]``.

The benchmark lives in ``benchmarks/learnability/`` (``python -m benchmarks.learnability`` runs the same thing);
this thin script exists so that CI, which runs every ``benchmarks/*.py --quick``, runs its smoke test too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--quick", action="store_true")  # forwarded; declared here for the CI check
    from benchmarks.learnability.__main__ import main

    sys.exit(main(sys.argv[1:]))
