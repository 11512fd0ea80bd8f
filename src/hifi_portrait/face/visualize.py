"""Pictures of face analyses for people: landmark overlays and a contact sheet of a reference set."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hifi_portrait.face.types import FaceAnalysis

#: Colours of the 5 keypoints (image-left eye, image-right eye, nose, image-left mouth, image-right mouth).
KEYPOINT_COLORS = [(255, 0, 0), (255, 200, 0), (255, 0, 255), (0, 200, 0), (0, 120, 255)]


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # a scalable font since Pillow 10.1 (the floor in pyproject.toml)


def landmark_overlay(image: np.ndarray, analysis: FaceAnalysis, max_side: int = 768) -> Image.Image:
    """The photo (downscaled to ``max_side``) with the box, the 478 mesh points, the 5 keypoints and the pose."""
    pil = Image.fromarray(image)
    scale = min(1.0, max_side / max(pil.size))
    if scale < 1.0:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(pil)
    x1, y1, x2, y2 = (float(v) * scale for v in analysis.bbox)
    width = max(1, round(pil.width / 300))
    draw.rectangle([x1, y1, x2, y2], outline=(0, 255, 0), width=width)
    r = max(1.0, 0.6 * width)
    for x, y in analysis.landmarks[:, :2] * scale:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 255, 255))
    rk = 2.5 * r + 1
    for (x, y), color in zip(analysis.keypoints * scale, KEYPOINT_COLORS, strict=True):
        draw.ellipse([x - rk, y - rk, x + rk, y + rk], fill=color, outline=(0, 0, 0))
    p = analysis.pose
    text = f"yaw {p.yaw:+.1f}  pitch {p.pitch:+.1f}  roll {p.roll:+.1f}  q {analysis.quality.total:.2f}"
    font = _font(max(12, pil.width // 40))
    draw.text(
        (x1, max(0.0, y1 - font.size - 4)), text, fill=(255, 255, 0), font=font, stroke_width=2, stroke_fill=(0, 0, 0)
    )
    return pil


def contact_sheet(
    analyses: list[FaceAnalysis],
    labels: list[str],
    similarity_to_set: list[float] | None = None,
    flagged: list[int] | None = None,
    tile: int = 224,
    columns: int = 4,
) -> Image.Image:
    """A grid of the encoder crops with name, quality, pose and similarity; flagged tiles framed in red."""
    flagged = set(flagged or [])
    n = max(1, len(analyses))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    caption = 54
    sheet = Image.new("RGB", (cols * tile, rows * (tile + caption)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for i, analysis in enumerate(analyses):
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + caption)
        crop = Image.fromarray(analysis.encoder_crop).resize((tile, tile), Image.BILINEAR)
        sheet.paste(crop, (x0, y0))
        if i in flagged:
            draw.rectangle([x0 + 1, y0 + 1, x0 + tile - 2, y0 + tile - 2], outline=(255, 40, 40), width=4)
        q, p = analysis.quality, analysis.pose
        lines = [
            labels[i][:32],
            f"q {q.total:.2f}: size {q.size:.2f} sharp {q.sharpness:.2f} front {q.frontalness:.2f}",
            f"yaw {p.yaw:+.0f} pitch {p.pitch:+.0f} roll {p.roll:+.0f}"
            + (f"  sim {similarity_to_set[i]:.3f}" if similarity_to_set is not None else "")
            + ("  OUTLIER" if i in flagged else ""),
        ]
        for j, line in enumerate(lines):
            draw.text(
                (x0 + 4, y0 + tile + 2 + 17 * j),
                line,
                fill=(255, 90, 90) if i in flagged else (230, 230, 230),
                font=font,
            )
    return sheet
