"""Helpers of the dataset-builder tests: photo paths, the cached real analyzer, the flat labelled photo set."""

from __future__ import annotations

import shutil
from pathlib import Path

from hifi_portrait.data.stages import DefaultAnalyzerFactory

DATA = Path(__file__).resolve().parents[1] / "data"
IDS = DATA / "ids"

_ANALYZER = None


class CachedAnalyzerFactory:
    """The real default analyzer, created once per test process (in-process builds with workers=1 reuse it)."""

    def __call__(self):
        global _ANALYZER
        if _ANALYZER is None:
            _ANALYZER = DefaultAnalyzerFactory()()
        return _ANALYZER


def person_of(key: str) -> str:
    """Ground-truth person of a photo of the flat labelled set (file names ``<person>__<name>``)."""
    return Path(key).name.split("__")[0]


def make_flat_labelled_set(dest: Path) -> Path:
    """Copy the labelled photos into ONE folder, the person in the file name (so the builder sees no labels).

    Several photos of 8 people (tests/data/ids plus the bundled obama*/biden photos) and 5 distractors (people
    with one photo: two from ids/_distractors, astronaut, tom_hanks, and the largest face of group_t1).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(IDS.glob("*/*.jpg")):
        person = path.parent.name
        if person == "_distractors":
            person = f"distractor-{path.stem}"
        shutil.copy(path, dest / f"{person}__{path.name}")
    for name, person in [
        ("obama.jpg", "obama"),
        ("obama2.jpg", "obama"),
        ("obama3.jpg", "obama"),
        ("obama_partial_face.jpg", "obama"),
        ("biden.jpg", "biden"),
        ("astronaut.jpg", "distractor-astronaut"),
        ("tom_hanks.png", "distractor-tom_hanks"),
        ("group_t1.jpg", "distractor-group"),
    ]:
        shutil.copy(DATA / name, dest / f"{person}__bundled_{name}")
    return dest


def shouting_captioner(image, record) -> str:
    """A user "captioning model" for the hook test: the template caption in capitals, with the image size."""
    from hifi_portrait.data.captions import template_caption

    return f"{template_caption(record).upper()} ({image.shape[1]}x{image.shape[0]})"


class ColourStatsAnalyzer:
    """A cheap, deterministic stand-in analyzer for engine plumbing tests only (NOT face analysis).

    It "finds" one face covering the middle of the photo, whose identity vector is the photo's coarse colour
    layout; photos whose name contains ``noface`` raise FaceNotFoundError. Real behaviour is tested with the
    real analyzer everywhere else.
    """

    def analyze(self, image, policy="largest", source=None):
        import numpy as np
        from PIL import Image

        from hifi_portrait.errors import FaceNotFoundError
        from hifi_portrait.face.types import FaceAnalysis, HeadPose, QualityScore

        if source and "noface" in source:
            raise FaceNotFoundError(f"{source}: no face (stand-in analyzer)")
        h, w = image.shape[:2]
        small = np.asarray(Image.fromarray(image).resize((4, 4), Image.BILINEAR), dtype=np.float32).ravel()
        identity = (small - small.mean()) / (np.linalg.norm(small - small.mean()) + 1e-6)
        crop = np.asarray(Image.fromarray(image).resize((112, 112)))
        box = np.array([w * 0.25, h * 0.25, w * 0.75, h * 0.75])
        lmk = np.stack([np.linspace(box[0], box[2], 478), np.linspace(box[1], box[3], 478), np.zeros(478)], 1)
        return FaceAnalysis(
            source=source or "",
            image_size=(w, h),
            face_index=0,
            bbox=box,
            det_score=0.99,
            keypoints=lmk[::96, :2][:5],
            landmarks=lmk,
            pose=HeadPose(0.0, 0.0, 0.0),
            transform=np.eye(4),
            blendshapes={},
            identity=identity.astype(np.float32),
            identity_model="colour-stats",
            quality=QualityScore(0.9, 1, 1, 1, 1),
            arcface_crop=crop,
            encoder_crop=crop,
            mask=np.full((112, 112), 255, np.uint8),
            mask_method="none",
        )


def colour_stats_factory():
    return ColourStatsAnalyzer()
