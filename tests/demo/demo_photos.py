"""Paths of the bundled photos used by the demo tests (a module with a unique name: ``conftest`` is not importable
reliably when several test folders have one)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
OBAMAS = [DATA / "obama.jpg", DATA / "obama2.jpg", DATA / "obama3.jpg"]
BIDEN = DATA / "biden.jpg"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "demo"
