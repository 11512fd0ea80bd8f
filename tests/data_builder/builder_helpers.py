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
