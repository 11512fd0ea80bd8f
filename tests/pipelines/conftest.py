"""Shared fixtures of the pipeline tests: tiny seeded SDXL components (hifi_portrait.utils.testing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def landmark_map() -> np.ndarray:
    """A read-only 64x64 RGB landmark-like map (white dots and a line on black), as the renderer draws."""
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    for x, y in [(22, 26), (42, 26), (32, 36), (25, 46), (39, 46)]:
        img[y - 1 : y + 2, x - 1 : x + 2] = 255
    img[46, 25:40] = (255, 0, 0)
    img.setflags(write=False)  # shared by the tests of a module
    return img
