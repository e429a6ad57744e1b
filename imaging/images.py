"""Validation and normalisation of fetched poster bytes, and their 64-bit perceptual hash.

Plain functions, no Beam: bytes in, a value or ``ImageRejected`` out, so a DoFn can call them per
element and route each rejection, with its machine-readable ``reason``, to a dead-letter output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import re
import threading
from collections.abc import Iterator

import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps
from PIL import UnidentifiedImageError

from imaging.image_match import thumbnail_signature

REASON_EMPTY_BODY = "empty_body"
REASON_NOT_AN_IMAGE = "not_an_image"
REASON_IMAGE_TRUNCATED = "image_truncated"
REASON_TOO_MANY_PIXELS = "too_many_pixels"
REASON_IMAGE_TOO_SMALL = "image_too_small"
REASON_BAD_IMAGE = "bad_image"
REJECTION_REASONS = (
    REASON_EMPTY_BODY,
    REASON_NOT_AN_IMAGE,
    REASON_IMAGE_TRUNCATED,
    REASON_TOO_MANY_PIXELS,
    REASON_IMAGE_TOO_SMALL,
    REASON_BAD_IMAGE,
)

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 768
DEFAULT_MIN_SIDE = 32
DEFAULT_JPEG_QUALITY = 90

PHASH_BITS = 64
_PHASH_SIZE = 32
_PHASH_LOW = 8
_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
)


class ImageRejected(ValueError):
    """Fetched bytes that are not a usable poster; ``reason`` is one of ``REJECTION_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; use one of {REJECTION_REASONS}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str]]:
        return (ImageRejected, (self.reason, self.message))


@dataclasses.dataclass(frozen=True)
class NormalisedImage:
    """A poster re-encoded as an RGB JPEG, with facts about the original bytes it came from."""

    jpeg: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    original_format: str
    content_sha256: str
    phash: int
    signature: bytes  # imaging.image_match.thumbnail_signature of the stored pixels


class _StrictTruncation:
    """Holds ``ImageFile.LOAD_TRUNCATED_IMAGES`` at False while any decode in this process runs.

    The setting is a Pillow module global that other code may have switched on; a reference count
    lets concurrent decodes share one strict window and restores the caller's value after the last.
    Other code decoding in that window is strict too, which can only turn silent damage into errors.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                self._saved = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    ImageFile.LOAD_TRUNCATED_IMAGES = self._saved


_strict_truncation = _StrictTruncation()


def _looks_like_an_image(data: bytes) -> bool:
    """Whether the bytes start with the signature of a common image format."""
    return data.startswith(_IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _open_checked(data: bytes, max_pixels: int, min_side: int) -> ImageFile.ImageFile:
    """Opens ``data`` reading its header only; rejects it on size before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if _looks_like_an_image(data):
            message = f"{len(data)} bytes with an image signature but an unreadable header"
            raise ImageRejected(REASON_BAD_IMAGE, message) from exc
        message = f"Pillow cannot identify {len(data)} bytes starting {data[:16]!r}"
        raise ImageRejected(REASON_NOT_AN_IMAGE, message) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own bomb limit refused the header: say it in this job's terms.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1))} pixels" if found else "more pixels than Pillow opens"
        raise ImageRejected(
            REASON_TOO_MANY_PIXELS, f"{size}, above max_pixels={max_pixels} (--max_pixels)"
        ) from exc
    except Exception as exc:
        raise _decode_failure("cannot read the image header", exc) from exc
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageRejected(
            REASON_TOO_MANY_PIXELS,
            f"{width}x{height} is {width * height} pixels, above max_pixels={max_pixels} "
            "(--max_pixels)",
        )
    if min(width, height) < min_side:
        img.close()
        raise ImageRejected(
            REASON_IMAGE_TOO_SMALL, f"{width}x{height} has a side below min_side={min_side}"
        )
    return img


def _decode_failure(context: str, exc: Exception) -> ImageRejected:
    """The rejection for a decode error: truncated data, or any other bad image."""
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return ImageRejected(REASON_IMAGE_TRUNCATED, f"{context}: {exc}")
    return ImageRejected(REASON_BAD_IMAGE, f"{context}: {exc!r}")


def _decode(img: ImageFile.ImageFile) -> None:
    """Decodes the pixels with truncation as an error, and applies the EXIF orientation (in
    place: most posters have none, and a copy of the pixels would buy nothing)."""
    try:
        with _strict_truncation():
            img.load()
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:
        raise _decode_failure("cannot decode the image", exc) from exc


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """Scales a 16-bit (or 32-bit integer) grayscale image to 8 bits instead of clipping it."""
    values = np.asarray(img, dtype=np.int64).clip(0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB, compositing transparency on white."""
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _sixteen_bit_to_l(img)
    elif img.mode == "F":
        img = Image.fromarray(np.asarray(img).clip(0, 255).round().astype(np.uint8), mode="L")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size with the longer side at most ``max_side``, aspect ratio kept, never upscaled."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def _encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """Encodes RGB pixels as a baseline JPEG with no metadata; same pixels give the same bytes."""
    clean = Image.frombytes("RGB", img.size, img.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buffer.getvalue()


def normalise_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> NormalisedImage:
    """Validates fetched poster bytes and re-encodes them as a bounded-size RGB JPEG.

    ``original_width``/``original_height`` are those of the decoded original after its EXIF
    orientation, so they share the aspect ratio of the stored JPEG. Raises ``ImageRejected``; the
    pixel count is checked from the header against ``max_pixels`` (and Pillow's own bomb limit,
    2 * ``Image.MAX_IMAGE_PIXELS``, which is read but never changed here).
    """
    if max_pixels < 1 or max_side < 1 or min_side < 1 or not 1 <= jpeg_quality <= 100:
        raise ValueError(
            "max_pixels, max_side and min_side must be positive and jpeg_quality within 1..100, "
            f"got {max_pixels}, {max_side}, {min_side}, {jpeg_quality}"
        )
    if not data:
        raise ImageRejected(REASON_EMPTY_BODY, "the response body is empty")
    content_sha256 = hashlib.sha256(data).hexdigest()
    with _open_checked(data, max_pixels, min_side) as image:
        original_format = image.format or "UNKNOWN"
        # A plain RGB JPEG without metadata that already fits is stored as fetched: re-encoding
        # would only lose quality (and cost time).
        keep_bytes = (
            original_format == "JPEG"
            and image.mode == "RGB"
            and max(image.size) <= max_side
            and not {"exif", "icc_profile", "comment"} & set(image.info)
        )
        _decode(image)
        try:
            rgb = to_rgb(image)
            original_width, original_height = rgb.size
            gray = rgb.convert("L")  # hashed, and thumbnailed too when no resize is needed
            phash = _phash_of_gray(gray)
            size = _fit_within(original_width, original_height, max_side)
            if size != rgb.size:
                rgb = rgb.resize(size, Image.Resampling.LANCZOS)
                gray = rgb.convert("L")
            jpeg = data if keep_bytes and size == image.size else _encode_jpeg(rgb, jpeg_quality)
            thumbnail = thumbnail_signature(gray)
        except Exception as exc:
            raise ImageRejected(
                REASON_BAD_IMAGE, f"cannot convert {image.mode} pixels to a JPEG: {exc!r}"
            ) from exc
    return NormalisedImage(
        jpeg=jpeg,
        width=rgb.width,
        height=rgb.height,
        original_width=original_width,
        original_height=original_height,
        original_format=original_format,
        content_sha256=content_sha256,
        phash=phash,
        signature=thumbnail,
    )


def _dct_matrix(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``matrix @ x`` is the DCT of the column vector ``x``."""
    k = np.arange(size, dtype=np.float64)[:, None]
    n = np.arange(size, dtype=np.float64)[None, :]
    matrix = np.cos(np.pi * (2.0 * n + 1.0) * k / (2.0 * size)) * np.sqrt(2.0 / size)
    matrix[0, :] = np.sqrt(1.0 / size)
    return matrix


_DCT = _dct_matrix(_PHASH_SIZE)
_BIT_WEIGHTS = [1 << (PHASH_BITS - 1 - i) for i in range(PHASH_BITS)]


def phash64(img: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of an image (transparency on white), in [0, 2**64)."""
    if img.mode not in ("RGB", "L"):
        img = to_rgb(img)
    return _phash_of_gray(img if img.mode == "L" else img.convert("L"))


def _phash_of_gray(gray: Image.Image) -> int:
    """:func:`phash64` of an 8-bit grayscale ("L") image."""
    small = gray.resize((_PHASH_SIZE, _PHASH_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:_PHASH_LOW, :_PHASH_LOW].ravel()
    median = np.median(low[1:])
    bits = (low > median).tolist()
    return sum(weight for weight, bit in zip(_BIT_WEIGHTS, bits, strict=True) if bit)


def phash_hex(h: int) -> str:
    """A 64-bit hash as 16 lowercase hex digits."""
    if not 0 <= h < 1 << PHASH_BITS:
        raise ValueError(f"a 64-bit hash must be within [0, 2**64), got {h}")
    return f"{h:016x}"


def phash_from_hex(s: str) -> int:
    """The 64-bit hash written by ``phash_hex``."""
    if len(s) != 16 or any(c not in "0123456789abcdefABCDEF" for c in s):
        raise ValueError(f"a 64-bit hash is 16 hex digits, got {s!r}")
    return int(s, 16)


def hamming(a: int, b: int) -> int:
    """The number of differing bits between two hashes."""
    return (a ^ b).bit_count()
