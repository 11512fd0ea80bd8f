"""Shared fixtures of the demo tests: one analyzer, one landmark backend, the bundled photos analysed once."""

from __future__ import annotations

from pathlib import Path

import pytest
from demo_photos import ARTIFACTS, BIDEN, DATA, OBAMAS  # noqa: F401 - used by the fixtures below


@pytest.fixture(scope="session")
def analyzer():
    from hifi_portrait.face import FaceAnalyzer

    return FaceAnalyzer()


@pytest.fixture(scope="session")
def landmark_backend():
    from hifi_portrait.demo.engines import DefaultLandmarkBackend

    return DefaultLandmarkBackend()


@pytest.fixture(scope="session")
def mixed_view(analyzer, landmark_backend):
    """Three photos of Obama and one of Biden, analysed by the demo's callback."""
    from hifi_portrait.demo.callbacks import analyze_references

    return analyze_references([str(p) for p in [*OBAMAS, BIDEN]], analyzer, landmark_backend)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
