"""Near-duplicate confirmation (aligned thumbnails) and the dedupe plan built on it."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from imaging.image_match import DEFAULT_MIN_CONFIRMATION
from imaging.image_match import SIGNATURE_BYTES
from imaging.image_match import confirmation_score
from imaging.image_match import signature
from imaging.images import normalise_image
from imaging.phash_index import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from synthetic.catalog import make_catalog
from synthetic.posters import COPY_TRANSFORMS
from synthetic.posters import edited_copy
from transforms.dedupe import EXACT
from transforms.dedupe import NEAR
from transforms.dedupe import ImageKey
from transforms.dedupe import plan_hash_candidates
from transforms.dedupe import plan_image_duplicates


@pytest.fixture(scope="module")
def posters():
    catalog = make_catalog(12, seed=7, exact_duplicate_fraction=0, near_duplicate_fraction=0)
    return [catalog.poster_bytes(f.movie_id) for f in catalog.films]


@pytest.mark.parametrize("transform", COPY_TRANSFORMS)
def test_edited_copies_are_confirmed(posters, transform):
    for original in posters[:6]:
        copy = normalise_image(edited_copy(original, transform)).jpeg
        assert confirmation_score(signature(original), signature(copy)) >= DEFAULT_MIN_CONFIRMATION


def test_different_posters_are_not_confirmed(posters):
    sigs = [signature(p) for p in posters]
    scores = [confirmation_score(a, b) for i, a in enumerate(sigs) for b in sigs[i + 1 :]]
    assert max(scores) < DEFAULT_MIN_CONFIRMATION


def test_score_is_symmetric_and_flat_images_match_nothing(posters):
    a, b = signature(posters[0]), signature(edited_copy(posters[0], "crop3"))
    assert confirmation_score(a, b) == pytest.approx(confirmation_score(b, a))
    flat = io.BytesIO()
    Image.new("RGB", (60, 90), (128, 128, 128)).save(flat, "JPEG")
    assert confirmation_score(signature(flat.getvalue()), a) == 0.0
    with pytest.raises(ValueError, match=str(SIGNATURE_BYTES)):
        confirmation_score(b"short", a)


def key(movie_id, phash, sha=None, pixels=100, existing=False):
    return ImageKey(movie_id, movie_id, sha or f"{movie_id:064x}", phash, pixels, existing)


def test_plan_needs_both_checks_and_never_merges_through_a_chain():
    keys = [key(1, 0b0, pixels=300), key(2, 0b11, pixels=200), key(3, 0b1111, pixels=100),
            key(4, 0b0, sha=f"{1:064x}"), key(5, 0xFFFF_FFFF_0000_0000)]  # fmt: skip
    plan = plan_hash_candidates(keys, threshold=2)
    assert plan.exact[4].kind == EXACT and plan.exact[4].canonical_movie_id == 1
    assert set(plan.pairs) == {(1, 2, 2), (2, 3, 2)}
    assert plan.involved == {1, 2, 3}
    # 1~2 and 2~3 confirmed: 2 joins 1; 3 is not within reach of 1 itself, so it stays.
    decisions = plan_image_duplicates(plan, [(1, 2, 2, 0.99), (2, 3, 2, 0.99)])
    assert decisions[2].kind == NEAR and decisions[2].canonical_movie_id == 1
    assert decisions[2].confirmation == 0.99 and decisions[2].distance == 2
    assert set(decisions) == {2, 4}
    # A hash match the thumbnails do not confirm is kept apart.
    assert set(plan_image_duplicates(plan, [(1, 2, 2, 0.5), (2, 3, 2, 0.5)])) == {4}


def test_plan_keeps_earlier_posters_and_lets_them_win():
    keys = [key(1, 0b0, pixels=50, existing=True), key(2, 0b1, pixels=900),
            key(3, 0b10, existing=True)]  # fmt: skip
    plan = plan_hash_candidates(keys, threshold=2)
    assert (1, 3) not in {(a, b) for a, b, _ in plan.pairs}  # two earlier posters: no check
    decisions = plan_image_duplicates(plan, [(a, b, d, 1.0) for a, b, d in plan.pairs])
    assert set(decisions) == {2} and decisions[2].canonical_movie_id in (1, 3)


def test_real_near_pairs_only_the_true_one_is_joined(shared_data):
    """The five real pairs within 8 bits: four different films kept apart, one film joined."""
    folder = shared_data / "posters" / "near_pairs"
    with open(folder / "pairs.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        images = [normalise_image((folder / row[k]).read_bytes()) for k in ("poster_a", "poster_b")]
        ids = [int(row["movieId_a"]), int(row["movieId_b"])]
        keys = [ImageKey(m, i, im.content_sha256, im.phash, 1, False)
                for i, (m, im) in enumerate(zip(ids, images, strict=True))]  # fmt: skip
        plan = plan_hash_candidates(keys, DEFAULT_NEAR_DUPLICATE_THRESHOLD)
        assert len(plan.pairs) == 1, row  # the hash alone would merge every pair
        score = confirmation_score(*(im.signature for im in images))
        decisions = plan_image_duplicates(plan, [(*plan.pairs[0], score)])
        assert bool(decisions) == (row["same_film"] == "true"), (row["title_a"], score)


def test_the_signature_taken_when_fetched_matches_the_stored_jpeg(posters):
    image = normalise_image(edited_copy(posters[0], "resize60"))
    assert len(image.signature) == SIGNATURE_BYTES
    assert confirmation_score(image.signature, signature(image.jpeg)) > 0.999


def test_signature_is_deterministic(posters):
    assert signature(posters[0]) == signature(posters[0])
    assert len(signature(posters[0])) == SIGNATURE_BYTES
    assert np.frombuffer(signature(posters[0]), np.uint8).std() > 0
