"""Fixtures of the training tests: a tiny random SDXL folder and a tiny dataset from the bundled photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import DATA, PEOPLE, SIZE, ListDataset, _mirrored, _sample


@pytest.fixture(autouse=True)
def _one_thread():
    """The CPU is shared with other jobs: one thread per test process is faster and steadier there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def faces():
    from hifi_portrait.face.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer()
    return {p: [analyzer.analyze(DATA / f) for f in files] for p, files in PEOPLE.items()}


@pytest.fixture(scope="session")
def photo_samples(faces) -> list[dict]:
    samples = []
    for photos in faces.values():
        for i, target in enumerate(photos):
            refs = [f for j, f in enumerate(photos) if j != i] or [_mirrored(target)]
            samples.append(_sample(target, refs, SIZE))
    return samples


@pytest.fixture
def photo_dataset(photo_samples):
    return ListDataset(photo_samples)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> dict[str, Path]:
    """A tiny random SDXL saved as a diffusers folder, plus its CLIP vision tower in another folder."""
    from diffusers import StableDiffusionXLPipeline

    from hifi_portrait.utils.testing import get_dummy_components

    root = tmp_path_factory.mktemp("tiny_sdxl")
    comps = get_dummy_components(seed=0)
    encoder = comps.pop("image_encoder")
    comps.pop("feature_extractor")
    StableDiffusionXLPipeline(**comps).save_pretrained(root / "sdxl")
    encoder.save_pretrained(root / "image_encoder")
    return {"sdxl": root / "sdxl", "image_encoder": root / "image_encoder"}


@pytest.fixture(scope="session")
def built_dataset(tmp_path_factory):
    """Two people (bundled obama photos, ids/alex_lacamoire), labelled by folder, built with the real analyzer."""
    from hifi_portrait.data import BuilderConfig, build_dataset

    src = tmp_path_factory.mktemp("photos")
    (src / "obama").mkdir()
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        shutil.copy(DATA / name, src / "obama" / name)
    shutil.copytree(DATA / "ids" / "alex_lacamoire", src / "alex_lacamoire")
    out = tmp_path_factory.mktemp("built") / "dataset"
    build_dataset([src], out, BuilderConfig(workers=1, shard_size=8, labels="folders"), progress=False)
    return out
