"""The confirmation score: exactly the correlation of aligned thumbnails, however it is computed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imaging.image_match import SIGNATURE_BYTES
from imaging.image_match import SIGNATURE_SIDE
from imaging.image_match import confirmation_score

_MARGINS = (0.015, 0.03, 0.045, 0.06)
_ANCHORS = ((0, 0), (-1, -1), (1, 1), (-1, 1), (1, -1))


def _unit(img: Image.Image, box=None) -> np.ndarray:
    """One alignment as the module's docstring defines it: 24x24, centred, unit length."""
    pixels = np.asarray(img.resize((24, 24), Image.Resampling.BILINEAR, box=box), np.float32)
    centred = pixels.ravel() - pixels.mean()
    norm = float(np.linalg.norm(centred))
    return centred / norm if norm > 1e-6 else centred


def _reference_score(sig_a: bytes, sig_b: bytes) -> float:
    """The score computed one crop at a time with Pillow and NumPy, as plainly as possible."""
    views = []
    for sig in (sig_a, sig_b):
        img = Image.frombytes("L", (SIGNATURE_SIDE, SIGNATURE_SIDE), sig)
        side = float(SIGNATURE_SIDE)
        crops = [_unit(img)]
        for margin in _MARGINS:
            inner = side * (1 - 2 * margin)
            for dx, dy in _ANCHORS:
                left, top = side * margin * (1 + dx), side * margin * (1 + dy)
                crops.append(_unit(img, (left, top, left + inner, top + inner)))
        views.append((crops[0], np.stack(crops)))
    (whole_a, crops_a), (whole_b, crops_b) = views
    return float(max((crops_a @ whole_b).max(), (crops_b @ whole_a).max()))


def _thumbnails(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    smooth = [Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).resize((48, 48))
              for _ in range(count)]  # fmt: skip
    return [img.tobytes() for img in smooth] + [bytes(SIGNATURE_BYTES), bytes([90]) * 2304]


def test_the_score_equals_the_crop_by_crop_reference_bit_for_bit():
    sigs = _thumbnails(12, seed=3)
    for i, a in enumerate(sigs):
        for b in sigs[i:]:
            assert confirmation_score(a, b) == _reference_score(a, b)


def test_a_slightly_edited_thumbnail_scores_high_and_a_different_one_low():
    a, b = _thumbnails(2, seed=5)[:2]
    noisy = (np.frombuffer(a, np.uint8).astype(int) + 3).clip(0, 255).astype(np.uint8).tobytes()
    assert confirmation_score(a, noisy) == pytest.approx(1.0, abs=1e-3)
    assert confirmation_score(a, b) < 0.9
