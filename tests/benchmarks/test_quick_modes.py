"""Every script under benchmarks/ has a ``--quick`` mode, and CI runs each of them in it (``.ci/run``).

Running them all takes about a minute, so the suite only checks that none lacks the mode; CI runs them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def _options(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    }


def test_every_benchmark_has_a_quick_mode():
    assert len(SCRIPTS) >= 7
    missing = [p.name for p in SCRIPTS if "--quick" not in _options(p)]
    assert not missing, f"benchmarks without --quick (CI runs every script with it): {missing}"


def test_ci_runs_every_benchmark_quick():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "for script in benchmarks/*.py; do" in ci and '"$script" --quick' in ci
