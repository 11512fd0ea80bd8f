"""Real (mesh, blendshape scores) pairs from the bundled photos, split by person, for fitting and measuring the
expression basis (``scripts/fit_expression_basis.py``, ``benchmarks/expression.py``, ``tests/landmarks``).

Every photo is analysed by mediapipe's FaceLandmarker on the whole image (the scores are then exactly what its
blendshape model reads from those landmarks); its mirror image is analysed too (a real, independent detection of
a left/right swapped face, not a relabelling). The people are split: the fit never sees :data:`HELD_OUT_PEOPLE`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: People whose photos the fit never sees (the acceptance is measured on them).
HELD_OUT_PEOPLE = ("obama", "biden", "steve_wozniak")
#: Files of ``tests/data`` (not in ``tests/data/ids``) and the person they show; others there are not used
#: (``group_t1.jpg``: several unnamed people).
LOOSE_PHOTOS = {
    "obama.jpg": "obama",
    "obama2.jpg": "obama",
    "obama3.jpg": "obama",
    "obama_partial_face.jpg": "obama",
    "biden.jpg": "biden",
    "astronaut.jpg": "astronaut",
    "tom_hanks.png": "tom_hanks",
}


@dataclass
class PhotoFace:
    """One analysed face: ``landmarks`` ``(478, 3)`` pixels, ``scores`` ``(51,)``, ``transform`` ``(4, 4)``."""

    person: str
    source: str
    mirrored: bool
    landmarks: np.ndarray
    scores: np.ndarray
    transform: np.ndarray
    image_size: tuple[int, int]

    @property
    def blendshapes(self) -> dict[str, float]:
        from hifi_portrait.landmarks.expression import BLENDSHAPE_NAMES

        return dict(zip(BLENDSHAPE_NAMES, (float(v) for v in self.scores), strict=True))

    quality = None


def bundled_photos(data_dir: str | Path) -> dict[str, list[Path]]:
    """``person -> photo paths`` of ``tests/data`` and ``tests/data/ids`` (each distractor is its own person)."""
    root = Path(data_dir)
    people: dict[str, list[Path]] = {}
    for name, person in LOOSE_PHOTOS.items():
        if (root / name).is_file():
            people.setdefault(person, []).append(root / name)
    for folder in sorted(p for p in (root / "ids").iterdir() if p.is_dir()):
        for photo in sorted(folder.glob("*.*")):
            if photo.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            person = photo.stem if folder.name == "_distractors" else folder.name
            people.setdefault(person, []).append(photo)
    return people


def analyse_photos(photos: dict[str, list[Path]], mirror: bool = True) -> list[PhotoFace]:
    """The largest face of every photo (and of its mirror image) analysed by mediapipe's FaceLandmarker."""
    from mediapipe import Image as MpImage
    from mediapipe import ImageFormat
    from mediapipe.tasks.python import BaseOptions, vision
    from PIL import Image

    from hifi_portrait.face.mesh import native_stderr_silenced
    from hifi_portrait.landmarks.expression import BLENDSHAPE_NAMES
    from hifi_portrait.landmarks.mesh import find_face_landmarker_task

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(find_face_landmarker_task())),
        output_facial_transformation_matrixes=True,
        output_face_blendshapes=True,
        num_faces=3,
    )
    faces: list[PhotoFace] = []
    with native_stderr_silenced():
        landmarker = vision.FaceLandmarker.create_from_options(options)
    with landmarker:
        for person, paths in photos.items():
            for path in paths:
                image = np.asarray(Image.open(path).convert("RGB"))
                for flipped in (False, True) if mirror else (False,):
                    im = np.ascontiguousarray(image[:, ::-1] if flipped else image)
                    h, w = im.shape[:2]
                    result = landmarker.detect(MpImage(image_format=ImageFormat.SRGB, data=im))
                    if not result.face_landmarks:
                        continue
                    found = [np.array([[p.x * w, p.y * h, p.z * w] for p in f]) for f in result.face_landmarks]
                    k = int(np.argmax([np.ptp(f[:, 0]) * np.ptp(f[:, 1]) for f in found]))
                    scores = {c.category_name: c.score for c in result.face_blendshapes[k]}
                    faces.append(
                        PhotoFace(
                            person=person,
                            source=f"{path.parent.name}/{path.name}" + (" (mirrored)" if flipped else ""),
                            mirrored=flipped,
                            landmarks=found[k],
                            scores=np.array([scores[n] for n in BLENDSHAPE_NAMES]),
                            transform=np.array(result.facial_transformation_matrixes[k]),
                            image_size=(w, h),
                        )
                    )
    return faces


def split(faces: Iterable[PhotoFace]) -> tuple[list[PhotoFace], list[PhotoFace]]:
    """``(fit, held_out)``: by person (:data:`HELD_OUT_PEOPLE`)."""
    faces = list(faces)
    return [f for f in faces if f.person not in HELD_OUT_PEOPLE], [f for f in faces if f.person in HELD_OUT_PEOPLE]
