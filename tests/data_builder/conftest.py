"""Shared fixtures of the dataset-builder tests: the real face analyzer (loaded once), built datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from builder_helpers import CachedAnalyzerFactory, make_flat_labelled_set


@pytest.fixture(scope="session")
def analyzer_factory():
    return CachedAnalyzerFactory()


@pytest.fixture(scope="session")
def flat_set(tmp_path_factory) -> Path:
    return make_flat_labelled_set(tmp_path_factory.mktemp("flat"))


@pytest.fixture(scope="session")
def clustered_build(flat_set, analyzer_factory, tmp_path_factory):
    """The flat labelled set built WITHOUT labels (identities from clustering), webdataset output."""
    from hifi_portrait.data import BuilderConfig, build_dataset

    out = tmp_path_factory.mktemp("clustered") / "ds"
    cfg = BuilderConfig(workers=1, shard_size=8, labels="none")
    result = build_dataset([flat_set], out, cfg, analyzer_factory=analyzer_factory, progress=False)
    return result
