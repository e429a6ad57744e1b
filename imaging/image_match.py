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
    gray = img.convert("L").resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.LANCZOS)
    return gray.tobytes()


def signature(jpeg: bytes) -> bytes:
    """:func:`thumbnail_signature` of an encoded image (a stored poster's JPEG)."""
    with Image.open(io.BytesIO(jpeg)) as img:
        return thumbnail_signature(img)


def _image(sig: bytes) -> Image.Image:
    if len(sig) != SIGNATURE_BYTES:
        raise ValueError(f"a signature has {SIGNATURE_BYTES} bytes, got {len(sig)}")
    return Image.frombytes("L", (SIGNATURE_SIDE, SIGNATURE_SIDE), sig)


def _unit(img: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The thumbnail (or a box of it) at 24x24, centred and scaled to unit length."""
    size = (_COMPARE_SIDE, _COMPARE_SIDE)
    pixels = np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=box), dtype=np.float32)
    centred = pixels.ravel() - pixels.mean()
    norm = float(np.linalg.norm(centred))
    return centred / norm if norm > 1e-6 else centred


@functools.lru_cache(maxsize=256)
def _views(sig: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(the whole thumbnail, every cropped alignment of it) as unit vectors."""
    img = _image(sig)
    side = float(SIGNATURE_SIDE)
    crops = [_unit(img)]
    for margin in _MARGINS:
        inner = side * (1 - 2 * margin)
        for dx, dy in _ANCHORS:
            left, top = side * margin * (1 + dx), side * margin * (1 + dy)
            crops.append(_unit(img, (left, top, left + inner, top + inner)))
    return crops[0], np.stack(crops)


def confirmation_score(sig_a: bytes, sig_b: bytes) -> float:
    """How well two posters' thumbnails match once aligned: the best correlation, -1..1.

    Either poster may be the cropped one, so the crops of each are compared with the whole of the
    other. A flat thumbnail (one grey level) correlates with nothing and scores 0.
    """
    whole_a, crops_a = _views(sig_a)
    whole_b, crops_b = _views(sig_b)
    return float(max((crops_a @ whole_b).max(), (crops_b @ whole_a).max()))
