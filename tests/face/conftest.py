"""Shared fixtures of the face-analysis tests: one analyzer and the bundled photos analysed once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
OBAMA = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"]
OTHERS = ["biden.jpg", "astronaut.jpg", "tom_hanks.png"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def analyzer():
    from hifi_portrait.face import FaceAnalyzer

    return FaceAnalyzer()


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    from hifi_portrait.face import load_image

    return {name: load_image(DATA / name) for name in OBAMA + OTHERS + ["group_t1.jpg"]}


@pytest.fixture(scope="session")
def analyses(analyzer, photos):
    """FaceAnalysis of the largest face of every single-person bundled photo, by file name."""
    return {name: analyzer.analyze(photos[name], source=name) for name in OBAMA + OTHERS}
