"""Poster validation, normalisation and pHash, on images drawn here and on real shared posters."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import itertools
import pathlib
import pickle
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL import ImageDraw
from PIL import ImageEnhance
from PIL import ImageFile

from imaging.images import ImageRejected
from imaging.images import NormalisedImage
from imaging.images import hamming
from imaging.images import normalise_image
from imaging.images import phash64
from imaging.images import phash_from_hex
from imaging.images import phash_hex
from imaging.phash_index import DEFAULT_NEAR_DUPLICATE_THRESHOLD

POSTER_SIZE = (182, 268)
NEAR_COPY_LIMIT = 8
DISTINCT_FLOOR = 12


def draw_poster(seed: int, size: tuple[int, int] = POSTER_SIZE) -> Image.Image:
    """A poster-like RGB image: a two-colour gradient under six large random shapes."""
    rng = np.random.default_rng(seed)
    width, height = size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = ((ramp - ramp.min()) / (ramp.max() - ramp.min()))[..., None]
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    img = Image.fromarray((start * (1.0 - ramp) + end * ramp).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
        x1 = x0 + int(rng.integers(width // 4, width))
        y1 = y0 + int(rng.integers(height // 4, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            corners = zip(rng.integers(0, width, 3), rng.integers(0, height, 3), strict=True)
            draw.polygon([(int(x), int(y)) for x, y in corners], fill=colour)
    return img


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    """The image encoded in ``fmt``."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """The decoded image, pixels loaded."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB pixels, followed by one tiny IDAT chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def crop_area(img: Image.Image, fraction: float) -> Image.Image:
    """The centre of the image with ``fraction`` of its area cut away evenly from all four edges."""
    keep = (1.0 - fraction) ** 0.5
    width, height = img.size
    dx, dy = round(width * (1.0 - keep) / 2.0), round(height * (1.0 - keep) / 2.0)
    return img.crop((dx, dy, width - dx, height - dy))


def near_copies(img: Image.Image) -> dict[str, bytes]:
    """JPEG near copies: q70 re-encode; at q95, 0.5x and 1.5x resize, 3% crop, brightness x1.1."""
    width, height = img.size
    half = img.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    larger = img.resize((width * 3 // 2, height * 3 // 2), Image.Resampling.LANCZOS)
    return {
        "jpeg_q70": encode(img, "JPEG", quality=70),
        "resize_0.5x": encode(half, "JPEG", quality=95),
        "resize_1.5x": encode(larger, "JPEG", quality=95),
        "crop_3pct": encode(crop_area(img, 0.03), "JPEG", quality=95),
        "brightness_1.1": encode(ImageEnhance.Brightness(img).enhance(1.1), "JPEG", quality=95),
    }


def reference_phash(img: Image.Image) -> int:
    """pHash with the DCT written as explicit cosine sums, to check the matrix implementation."""
    gray = img.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    n = np.arange(32)
    cosines = np.cos(np.pi * np.outer(np.arange(8), 2 * n + 1) / 64.0)
    scale = np.where(np.arange(8) == 0, np.sqrt(1 / 32), np.sqrt(2 / 32))
    block = np.einsum("u,v,ux,vy,xy->uv", scale, scale, cosines, cosines, pixels).ravel()
    bits = block > np.median(block[1:])
    return int("".join("1" if bit else "0" for bit in bits), 2)


@pytest.fixture(scope="module")
def poster() -> Image.Image:
    return draw_poster(7)


def test_jpeg_input_normalises_to_rgb_jpeg(poster: Image.Image) -> None:
    data = encode(poster, "JPEG", quality=95)
    result = normalise_image(data)
    assert isinstance(result, NormalisedImage)
    stored = decode(result.jpeg)
    assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", POSTER_SIZE)
    assert (result.width, result.height) == POSTER_SIZE
    assert (result.original_width, result.original_height) == POSTER_SIZE
    assert result.original_format == "JPEG"
    assert result.content_sha256 == hashlib.sha256(data).hexdigest()
    assert 0 <= result.phash < 2**64
    assert hamming(result.phash, phash64(poster)) <= 2


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("L", "PNG"),
        ("1", "PNG"),
        ("I;16", "PNG"),
        ("CMYK", "JPEG"),
        ("L", "JPEG"),
        ("RGB", "WEBP"),
        ("RGB", "GIF"),
        ("RGB", "BMP"),
    ],
)
def test_every_mode_normalises_to_rgb_jpeg(poster: Image.Image, mode: str, fmt: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.asarray(poster.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        img = poster.quantize(colors=64)
    else:
        img = poster.convert(mode)
    result = normalise_image(encode(img, fmt))
    stored = decode(result.jpeg)
    assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", POSTER_SIZE)
    assert result.original_format == fmt
    if mode in ("I;16", "L", "LA"):
        expected = np.asarray(poster.convert("L"), dtype=np.float64)
        got = np.asarray(stored.convert("L"), dtype=np.float64)
        assert np.abs(got - expected).mean() < 4.0, (
            "16-bit and gray levels must be kept, not clipped"
        )


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(poster: Image.Image, mode: str) -> None:
    rgba = poster.convert("RGBA")
    alpha = Image.new("L", POSTER_SIZE, 255)
    ImageDraw.Draw(alpha).rectangle((0, 0, 90, 133), fill=0)
    rgba.putalpha(alpha)
    if mode == "P":
        img = rgba.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
    else:
        img = rgba.convert(mode)
    stored = np.asarray(decode(normalise_image(encode(img, "PNG")).jpeg))
    assert stored[5:125, 5:85].min() >= 245, "transparent pixels must become white"


def test_exif_orientation_is_applied_and_not_kept(poster: Image.Image) -> None:
    stored_sideways = poster.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored_sideways, "JPEG", quality=95, exif=exif.tobytes())
    result = normalise_image(data)
    assert (result.width, result.height) == POSTER_SIZE
    assert (result.original_width, result.original_height) == POSTER_SIZE
    stored = decode(result.jpeg)
    assert "exif" not in stored.info and not stored.getexif()
    assert hamming(result.phash, phash64(poster)) <= 4


def test_downscale_keeps_aspect_ratio_and_original_dims() -> None:
    big = draw_poster(11, size=(600, 900))
    result = normalise_image(encode(big, "PNG"), max_side=300)
    assert (result.width, result.height) == (200, 300)
    assert (result.original_width, result.original_height) == (600, 900)
    assert decode(result.jpeg).size == (200, 300)
    wide = normalise_image(encode(draw_poster(12, size=(1000, 333)), "PNG"), max_side=768)
    assert (wide.width, wide.height) == (768, 256)
    assert wide.width / wide.height == pytest.approx(1000 / 333, rel=0.01)


def test_never_upscales(poster: Image.Image) -> None:
    result = normalise_image(encode(poster, "PNG"), max_side=4000)
    assert (result.width, result.height) == POSTER_SIZE


def test_same_bytes_give_same_output(poster: Image.Image) -> None:
    data = encode(poster.convert("RGBA"), "PNG")
    first = normalise_image(data, max_side=100)
    normalise_image(encode(draw_poster(99), "JPEG"))
    assert normalise_image(data, max_side=100) == first


def test_output_quality_setting_is_used(poster: Image.Image) -> None:
    data = encode(poster, "PNG")
    low = normalise_image(data, jpeg_quality=30)
    high = normalise_image(data, jpeg_quality=95)
    assert len(low.jpeg) < len(high.jpeg)
    assert low.phash == high.phash == low.phash


def test_empty_body_is_rejected() -> None:
    with pytest.raises(ImageRejected) as caught:
        normalise_image(b"")
    assert caught.value.reason == "empty_body"


def test_html_served_as_jpeg_is_not_an_image() -> None:
    html = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body></body></html>"
    with pytest.raises(ImageRejected) as caught:
        normalise_image(html)
    assert caught.value.reason == "not_an_image"


def test_truncated_jpeg_is_rejected(poster: Image.Image) -> None:
    data = encode(poster, "JPEG", quality=90)
    for cut in (len(data) // 2, 100):
        with pytest.raises(ImageRejected) as caught:
            normalise_image(data[:cut])
        assert caught.value.reason == "image_truncated", cut


def test_rejection_messages_are_deterministic() -> None:
    html = b"<html><body>rate limited</body></html>"
    messages = set()
    for _ in range(3):
        with pytest.raises(ImageRejected) as caught:
            normalise_image(bytes(html))
        messages.add(str(caught.value))
    assert messages == {
        "not_an_image: Pillow cannot identify 38 bytes starting b'<html><body>rate'"
    }
    with pytest.raises(ValueError, match="unknown rejection reason"):
        ImageRejected("teapot", "no such reason")


def test_truncation_is_caught_even_when_pillow_is_told_to_tolerate_it(
    poster: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(poster, "PNG")
    with pytest.raises(ImageRejected) as caught:
        normalise_image(data[: len(data) // 2])
    assert caught.value.reason == "image_truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the caller's setting must be restored"


def test_strict_truncation_holds_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    whole = [encode(draw_poster(seed), "PNG") for seed in range(8)]
    inputs = [data[: len(data) // 2] if k % 2 else data for k, data in enumerate(whole * 4)]

    def outcome(data: bytes) -> str:
        try:
            normalise_image(data)
        except ImageRejected as exc:
            return exc.reason
        return "ok"

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(outcome, inputs))
    assert outcomes == ["ok", "image_truncated"] * 16
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("side", [60_000, 7_000])
def test_huge_header_is_rejected_before_decoding(side: int) -> None:
    max_image_pixels = Image.MAX_IMAGE_PIXELS
    data = png_header_only(side, side)
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected) as caught:
            normalise_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too_many_pixels"
    # Pillow's own limit (60,000 sides) or ours: the message names --max_pixels either way.
    assert f"{side * side} pixels" in str(caught.value) and "(--max_pixels)" in str(caught.value)
    assert "decompression bomb" not in str(caught.value)
    assert peak < 2_000_000, f"peak {peak} bytes: the pixels must not be allocated"
    assert Image.MAX_IMAGE_PIXELS == max_image_pixels


def test_max_pixels_setting_is_enforced(poster: Image.Image) -> None:
    with pytest.raises(ImageRejected) as caught:
        normalise_image(encode(poster, "PNG"), max_pixels=10_000)
    assert caught.value.reason == "too_many_pixels"


def test_tiny_image_is_rejected(poster: Image.Image) -> None:
    with pytest.raises(ImageRejected) as caught:
        normalise_image(encode(poster.resize((20, 300)), "PNG"))
    assert caught.value.reason == "image_too_small"
    assert normalise_image(encode(poster.resize((20, 300)), "PNG"), min_side=16).width == 20


def test_corrupt_pixel_data_is_a_bad_image() -> None:
    data = bytearray(png_header_only(64, 64))
    start = data.index(b"IDAT") + 4
    data[start : start + 10] = b"\xff" * 10
    with pytest.raises(ImageRejected) as caught:
        normalise_image(bytes(data))
    assert caught.value.reason == "bad_image"
    assert str(caught.value).startswith(caught.value.reason + ": ")


def test_rejection_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ImageRejected("not_an_image", "HTML body")))
    assert (error.reason, error.message, str(error)) == (
        "not_an_image",
        "HTML body",
        "not_an_image: HTML body",
    )


def test_phash_of_a_transparent_image_is_the_normalised_phash(poster: Image.Image) -> None:
    rgba = poster.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(POSTER_SIZE))
    assert phash64(rgba) == normalise_image(encode(rgba, "PNG")).phash


def test_phash_matches_explicit_dct_sums() -> None:
    for seed in range(10):
        img = draw_poster(seed)
        assert phash64(img) == reference_phash(img)


def test_near_copies_stay_close_and_distinct_images_stay_apart() -> None:
    images = [draw_poster(seed) for seed in range(50)]
    hashes = [phash64(img) for img in images]
    worst = {}
    for img, original in zip(images[:20], hashes[:20], strict=True):
        for name, data in near_copies(img).items():
            worst[name] = max(worst.get(name, 0), hamming(original, normalise_image(data).phash))
    assert max(worst.values()) <= NEAR_COPY_LIMIT, f"worst near-copy distances {worst}"
    distinct = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert min(distinct) > DISTINCT_FLOOR, (
        f"closest distinct pair {min(distinct)}, 1st percentile {np.percentile(distinct, 1)}"
    )


def test_phash_hex_round_trip() -> None:
    for value in (0, 1, 2**63, 2**64 - 1, phash64(draw_poster(3))):
        text = phash_hex(value)
        assert len(text) == 16 and text == text.lower()
        assert phash_from_hex(text) == value
    for bad in ("", "123", "g" * 16, "0" * 17):
        with pytest.raises(ValueError):
            phash_from_hex(bad)
    with pytest.raises(ValueError):
        phash_hex(2**64)
    assert hamming(0, 2**64 - 1) == 64


def _real_posters(shared_data: pathlib.Path, count: int) -> list[pathlib.Path]:
    """``count`` posters of set_a spread evenly over the set, in movieId order."""
    files = sorted(
        (shared_data / "posters" / "set_a" / "images").glob("*.jpg"), key=lambda p: int(p.stem)
    )
    if len(files) < count:
        pytest.skip(f"only {len(files)} posters in {shared_data / 'posters' / 'set_a'}")
    return files[:: len(files) // count][:count]


def test_real_posters_near_copies_and_distinct_films(shared_data: pathlib.Path) -> None:
    threshold = DEFAULT_NEAR_DUPLICATE_THRESHOLD
    hashes = []
    near = {}
    for path in _real_posters(shared_data, 200):
        original = normalise_image(path.read_bytes())
        hashes.append(original.phash)
        img = decode(path.read_bytes()).convert("RGB")
        for name, data in near_copies(img).items():
            near.setdefault(name, []).append(hamming(original.phash, normalise_image(data).phash))
    summary = {name: (max(d), float(np.mean(d))) for name, d in near.items()}
    print(f"near copies on 200 real posters, (max, mean) distance: {summary}")
    assert all(worst <= threshold for worst, _ in summary.values()), summary
    distinct = np.array([hamming(a, b) for a, b in itertools.combinations(hashes, 2)])
    percentiles = {q: float(np.percentile(distinct, q)) for q in (0.1, 1, 5, 50)}
    print(f"distinct posters: min {distinct.min()}, percentiles {percentiles}")
    assert percentiles[1] > threshold, percentiles
    assert (distinct <= threshold).mean() < 0.001, f"{(distinct <= threshold).sum()} close pairs"


def test_plain_rgb_jpeg_that_fits_is_stored_as_fetched():
    from PIL import Image as PILImage

    img = PILImage.new("RGB", (120, 180), (200, 30, 60))
    plain = io.BytesIO()
    img.save(plain, format="JPEG", quality=85)
    assert normalise_image(plain.getvalue()).jpeg == plain.getvalue()
    exif = PILImage.Exif()
    exif[0x0112] = 1
    tagged = io.BytesIO()
    img.save(tagged, format="JPEG", quality=85, exif=exif.tobytes())
    stored = normalise_image(tagged.getvalue()).jpeg
    assert stored != tagged.getvalue() and b"Exif" not in stored
    assert normalise_image(plain.getvalue(), max_side=100).jpeg != plain.getvalue()
