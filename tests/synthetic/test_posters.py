"""Poster drawing: genre signal, pHash separation, near copies and the decompression bomb."""

from __future__ import annotations

import collections
import io
import time

import numpy as np
import pytest
from PIL import Image
from PIL import ImageDraw

from synthetic import posters
from synthetic.catalog import Film
from synthetic.catalog import SyntheticCatalog

NEAR_LIMIT = 6
DISTINCT_LIMIT = 12


def _pairwise_hamming(hashes: np.ndarray) -> np.ndarray:
    """Hamming distances between all pairs of 64-bit hashes, shape (n, n)."""
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).astype(
        np.int16
    )
    return (bits[:, None, :] != bits[None, :, :]).sum(axis=2)


def _groups(catalog: SyntheticCatalog) -> np.ndarray:
    """Per film, the movie id of the poster it was copied from (itself if none)."""
    source = {d.movie_id: d.source_movie_id for d in catalog.duplicates}
    return np.array([source.get(f.movie_id, f.movie_id) for f in catalog.films])


def test_draw_is_deterministic_rgb_and_sized() -> None:
    film = Film(12, "tt0114709", 862, "Toy Tale", 1995, ("Animation", "Comedy"))
    a = posters.draw_poster(film, seed=3)
    b = posters.draw_poster(film, seed=3)
    assert a.mode == "RGB" and a.size == posters.DEFAULT_SIZE
    assert a.tobytes() == b.tobytes()
    assert posters.encode_jpeg(a) == posters.encode_jpeg(b)
    assert posters.draw_poster(film, seed=4).tobytes() != a.tobytes()
    assert posters.draw_poster(film, seed=3, size=(100, 150)).size == (100, 150)


def test_every_genre_draws() -> None:
    for k, genre in enumerate(posters.GENRE_STYLES):
        film = Film(k + 1, f"tt{k + 1:07d}", k + 1, f"Film {k}", 2000, (genre,))
        img = posters.draw_poster(film, seed=0)
        assert np.asarray(img).std() > 10, genre


def test_draw_is_fast() -> None:
    films = [Film(i, f"tt{i:07d}", i, f"Film {i}", 2000, ("Drama", "Action")) for i in range(1, 61)]
    posters.draw_poster(films[0], seed=0)
    start = time.perf_counter()
    for film in films:
        posters.draw_poster(film, seed=0)
    per_poster = (time.perf_counter() - start) / len(films)
    assert per_poster < 0.05, f"{per_poster * 1000:.1f} ms per poster"


def test_distinct_films_far_apart_planted_pairs_close(
    catalog: SyntheticCatalog, hashes: np.ndarray
) -> None:
    dist = _pairwise_hamming(hashes)
    groups = _groups(catalog)
    same = groups[:, None] == groups[None, :]
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    distinct = dist[upper & ~same]
    planted = dist[upper & same]
    min_distinct = int(distinct.min())
    assert (distinct <= DISTINCT_LIMIT).sum() == 0, (
        f"min distinct-pair pHash distance {min_distinct} over {distinct.size} pairs"
    )
    assert planted.size == len(catalog.duplicates)
    assert int(planted.max()) <= NEAR_LIMIT, f"max planted-pair distance {planted.max()}"
    assert distinct.mean() > 26


def test_near_copies_stay_near(catalog: SyntheticCatalog, hashes: np.ndarray) -> None:
    rng = np.random.default_rng(11)
    worst: dict[str, int] = collections.defaultdict(int)
    for index, film in enumerate(catalog.films[:80]):
        original = catalog.poster_bytes(film.movie_id)
        for transform in posters.NEAR_TRANSFORMS:
            copy = posters.near_copy(original, transform, rng)
            assert copy != original
            distance = posters.hamming(int(hashes[index]), posters.phash64_bytes(copy))
            worst[transform] = max(worst[transform], distance)
    assert max(worst.values()) <= NEAR_LIMIT, dict(worst)


def test_near_copy_transforms_do_what_they_say() -> None:
    film = Film(5, "tt0000005", 5, "Five", 1960, ("Western",))
    original = posters.encode_jpeg(posters.draw_poster(film, seed=0))
    rng = np.random.default_rng(0)
    src = Image.open(io.BytesIO(original))
    resized = Image.open(io.BytesIO(posters.near_copy(original, "resize", rng)))
    assert resized.size != src.size
    ratio = resized.width / src.width
    assert 0.6 <= ratio <= 1.6
    cropped = Image.open(io.BytesIO(posters.near_copy(original, "crop", rng)))
    assert 0.955 * src.width <= cropped.width < src.width
    assert 0.955 * src.height <= cropped.height < src.height
    brighter = posters.near_copy(original, "brightness", rng)
    ratio = (
        np.asarray(Image.open(io.BytesIO(brighter)), float).mean() / np.asarray(src, float).mean()
    )
    assert 0.8 < ratio < 1.2 and abs(ratio - 1) > 0.02
    reencoded = Image.open(io.BytesIO(posters.near_copy(original, "reencode", rng)))
    assert reencoded.size == src.size
    with pytest.raises(ValueError):
        posters.near_copy(original, "mirror", rng)


def test_genre_is_visible_to_a_nearest_centroid_classifier(catalog: SyntheticCatalog) -> None:
    feats = np.array(
        [
            np.asarray(
                Image.open(io.BytesIO(catalog.poster_bytes(f.movie_id))).resize(
                    (8, 8), Image.Resampling.BOX
                ),
                dtype=np.float64,
            ).ravel()
            for f in catalog.films
        ]
    )
    labels = np.array([f.genres[0] for f in catalog.films])
    train = np.arange(len(labels)) % 3 != 0
    classes = sorted(set(labels[train]))
    centroids = np.array([feats[train & (labels == g)].mean(axis=0) for g in classes])
    dists = ((feats[~train][:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    predicted = np.array(classes)[dists.argmin(axis=1)]
    accuracy = float((predicted == labels[~train]).mean())
    majority = collections.Counter(labels[train]).most_common(1)[0][0]
    baseline = float((labels[~train] == majority).mean())
    assert accuracy > max(0.35, 2 * baseline), (accuracy, baseline)


def test_phash_reference_properties() -> None:
    film = Film(9, "tt0000009", 9, "Nine", 1999, ("Sci-Fi",))
    img = posters.draw_poster(film, seed=0)
    value = posters.phash64(img)
    assert 0 <= value < 2**64
    assert value.bit_count() == 32, "63 AC coefficients vs their median: 31 above, plus DC"
    assert posters.phash64(img.convert("L").convert("RGB")) == value
    assert posters.hamming(value, value ^ 0b1011) == 3
    ramp = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)), "L")
    mirrored = ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert posters.hamming(posters.phash64(ramp), posters.phash64(mirrored)) > 0


def test_decompression_bomb_png(monkeypatch: pytest.MonkeyPatch) -> None:
    data = posters.decompression_bomb_png()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) < 5000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (60000, 60000)
        assert img.format == "PNG"
    with Image.open(io.BytesIO(posters.decompression_bomb_png(300, 200))) as small:
        small.load()
        assert small.size == (300, 200)


def _stripe_energy(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Per look, the grey spectrum's magnitude at its stripe frequency, resized to size (w, h)."""
    with Image.open(io.BytesIO(data)) as img:
        gray = np.asarray(img.convert("L").resize(size, Image.Resampling.BILINEAR), np.float64)
    spectrum = np.abs(np.fft.fft2(gray - gray.mean()))
    waves = posters.LOOK_WAVES.values()
    return np.array([spectrum[cy % size[1], cx % size[0]] for cx, cy in waves])


@pytest.mark.parametrize("size", [(64, 64), (128, 128)])
def test_look_shows_as_stripe_direction_at_model_input_sizes(
    catalog: SyntheticCatalog, size: tuple[int, int]
) -> None:
    looks = np.array([posters.LOOKS.index(catalog.look(f.movie_id)) for f in catalog.films])
    energy = np.array(
        [_stripe_energy(catalog.poster_bytes(f.movie_id), size) for f in catalog.films]
    )
    assert np.bincount(looks, minlength=len(posters.LOOKS)).min() > len(looks) / 8
    accuracy = float((energy.argmax(axis=1) == looks).mean())
    assert accuracy > 0.97, accuracy
    for k, look in enumerate(posters.LOOKS):
        own = energy[looks == k, k].mean()
        others = energy[looks != k, k].mean()
        assert own > 5 * others, (look, own, others)


def test_look_hides_from_colour_thumbnails(catalog: SyntheticCatalog) -> None:
    feats = np.array(
        [
            np.asarray(
                Image.open(io.BytesIO(catalog.poster_bytes(f.movie_id))).resize(
                    (8, 8), Image.Resampling.BOX
                ),
                dtype=np.float64,
            ).ravel()
            for f in catalog.films
        ]
    )
    looks = np.array([catalog.look(f.movie_id) for f in catalog.films])
    train = np.arange(len(looks)) % 3 != 0
    centroids = np.array([feats[train & (looks == k)].mean(axis=0) for k in posters.LOOKS])
    dists = ((feats[~train][:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    accuracy = float((np.array(posters.LOOKS)[dists.argmin(axis=1)] == looks[~train]).mean())
    assert accuracy < 0.4, f"the look leaks into 8x8 colour thumbnails: {accuracy}"


def test_one_film_in_every_look_keeps_its_layout() -> None:
    film = Film(21, "tt0000021", 21, "Twenty-One", 1984, ("Horror", "Romance"))
    drawn = {look: posters.draw_poster(film, seed=0, look=look) for look in posters.LOOKS}
    own = posters.look_for(film.movie_id, 0)
    assert drawn[own].tobytes() == posters.draw_poster(film, seed=0).tobytes()
    assert posters.look_for(film.movie_id, 0) == own
    assert len({img.tobytes() for img in drawn.values()}) == len(posters.LOOKS)
    hashes = [posters.phash64(img) for img in drawn.values()]
    assert max(posters.hamming(hashes[0], h) for h in hashes) <= NEAR_LIMIT
    with pytest.raises(ValueError, match="unknown poster look"):
        posters.draw_poster(film, seed=0, look="sepia")


def test_every_genre_motif_has_its_own_drawing():
    motifs = {style.motif for style in posters.GENRE_STYLES.values()}
    assert motifs <= set(posters.MOTIFS), motifs - set(posters.MOTIFS)


@pytest.mark.parametrize("motif", sorted(posters.MOTIFS))
def test_a_motif_draws_the_same_pixels_from_the_same_seed(motif):
    style = next(s for s in posters.GENRE_STYLES.values() if s.motif == motif)

    def drawn(scale: float) -> bytes:
        img = Image.new("RGB", (60, 90))
        rng = np.random.default_rng(5)
        posters._draw_motif(ImageDraw.Draw(img), motif, style, rng, 60, 90, scale)
        return img.tobytes()

    blank = Image.new("RGB", (60, 90)).tobytes()
    assert drawn(1.0) == drawn(1.0) != blank
    assert drawn(0.55) == drawn(0.55)
