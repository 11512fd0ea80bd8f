from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def evaluator():
    """One evaluator (and face analyzer) for the whole session: its per-path cache analyses each photo once."""
    from hifi_portrait.evaluation import Evaluator

    return Evaluator(progress=False)
