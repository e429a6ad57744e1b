"""The second, independent check of a near-duplicate pair: aligned thumbnails must correlate.

A 64-bit DCT hash keeps only the coarsest layout of a poster, so two different films laid out
alike (dark art, a face in the middle, the title at the bottom) can land within a few bits of each
other. Before two posters of different films are merged, their 48x48 grayscale thumbnails are
compared at 24x24 by normalised cross-correlation (the Pearson correlation of the pixels, blind to
brightness and contrast), over crops of 0 to 6% of each edge of either thumbnail, centred or
anchored to a corner, so a copy cropped a little or shifted still lines up with its original.

Measured on the real posters of the shared data (4,433 posters, 9.8 million pairs): of the pairs of
different films within 16 bits, the best score is 0.89; copies cropped 3% off every edge, resized
to 60%, saved at JPEG quality 55, brightened 12%, or all four together, score at least 0.96.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

SIGNATURE_SIDE = 48
SIGNATURE_BYTES = SIGNATURE_SIDE * SIGNATURE_SIDE
DEFAULT_MIN_CONFIRMATION = 0.92
_COMPARE_SIDE = 24
_MARGINS = (0.015, 0.03, 0.045, 0.06)
_ANCHORS = ((0, 0), (-1, -1), (1, 1), (-1, 1), (1, -1))


def thumbnail_signature(img: Image.Image) -> bytes:
    """The 48x48 grayscale thumbnail (row-major uint8) that :func:`confirmation_score` compares."""
    gray = img if img.mode == "L" else img.convert("L")
    small = gray.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.LANCZOS)
    return small.tobytes()


def signature(jpeg: bytes) -> bytes:
    """:func:`thumbnail_signature` of an encoded image (a stored poster's JPEG)."""
    with Image.open(io.BytesIO(jpeg)) as img:
        return thumbnail_signature(img)


def _crop_boxes() -> tuple[tuple[float, float, float, float] | None, ...]:
    """The whole thumbnail (None), then every crop: each margin, centred or at a corner."""
    side = float(SIGNATURE_SIDE)
    boxes: list[tuple[float, float, float, float] | None] = [None]
    for margin in _MARGINS:
        inner = side * (1 - 2 * margin)
        for dx, dy in _ANCHORS:
            left, top = side * margin * (1 + dx), side * margin * (1 + dy)
            boxes.append((left, top, left + inner, top + inner))
    return tuple(boxes)


_BOXES = _crop_boxes()


def _image(sig: bytes) -> Image.Image:
    if len(sig) != SIGNATURE_BYTES:
        raise ValueError(f"a signature has {SIGNATURE_BYTES} bytes, got {len(sig)}")
    return Image.frombytes("L", (SIGNATURE_SIDE, SIGNATURE_SIDE), sig)


@functools.lru_cache(maxsize=1024)
def _views(sig: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(the whole thumbnail, every cropped alignment of it) as unit vectors.

    Each alignment is resized to 24x24, centred and scaled to unit length; those with no
    contrast (norm below 1e-6) stay centred only.
    """
    img = _image(sig)
    size = (_COMPARE_SIDE, _COMPARE_SIDE)
    resized = b"".join(
        img.resize(size, Image.Resampling.BILINEAR, box=box).tobytes() for box in _BOXES
    )
    pixels = np.frombuffer(resized, dtype=np.uint8).reshape(len(_BOXES), -1).astype(np.float32)
    centred = pixels - pixels.mean(axis=1, keepdims=True)
    norms = np.array([np.sqrt(row.dot(row)) for row in centred], dtype=np.float32)[:, None]
    crops = np.divide(centred, norms, out=centred, where=norms > 1e-6)
    return crops[0], crops


def confirmation_score(sig_a: bytes, sig_b: bytes) -> float:
    """How well two posters' thumbnails match once aligned: the best correlation, -1..1.

    Either poster may be the cropped one, so the crops of each are compared with the whole of the
    other. A flat thumbnail (one grey level) correlates with nothing and scores 0.
    """
    whole_a, crops_a = _views(sig_a)
    whole_b, crops_b = _views(sig_b)
    return float(max((crops_a @ whole_b).max(), (crops_b @ whole_a).max()))
