"""Landmark arrays of the bundled photos, computed once per session with mediapipe's FaceLandmarker directly.

The geometry tests use these arrays (not :class:`hifi_portrait.face.FaceAnalyzer`), so they do not depend on the
rest of the face stack; the objects carry the :class:`~hifi_portrait.face.types.FaceAnalysis` fields the landmark
generator reads (``landmarks``, ``transform``, ``blendshapes``, ``source``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data"
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.jpg")


@pytest.fixture(scope="session")
def mp_faces() -> dict[str, SimpleNamespace]:
    from mediapipe import Image as MpImage
    from mediapipe import ImageFormat
    from mediapipe.tasks.python import BaseOptions, vision

    from hifi_portrait.landmarks.mesh import find_face_landmarker_task

    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(find_face_landmarker_task())),
        output_facial_transformation_matrixes=True,
        output_face_blendshapes=True,
        num_faces=1,
    )
    faces = {}
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for name in PHOTOS:
            image = np.ascontiguousarray(np.asarray(Image.open(DATA / name).convert("RGB")))
            h, w = image.shape[:2]
            result = landmarker.detect(MpImage(image_format=ImageFormat.SRGB, data=image))
            assert result.face_landmarks, f"mediapipe found no face in {name}"
            lm = np.array([[p.x * w, p.y * h, p.z * w] for p in result.face_landmarks[0]])
            faces[name] = SimpleNamespace(
                source=name,
                image=image,
                image_size=(w, h),
                landmarks=lm,
                transform=np.array(result.facial_transformation_matrixes[0]),
                blendshapes={
                    c.category_name: float(c.score)
                    for c in result.face_blendshapes[0]
                    if c.category_name != "_neutral"
                },
                quality=None,
            )
    return faces
