"""Near-duplicate search and grouping of 64-bit hashes, checked against NumPy brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from imaging.phash_index import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from imaging.phash_index import candidate_pairs
from imaging.phash_index import group_near_duplicates

BIT = np.uint64(1)


def flip_random_bits(value: np.uint64, count: int, rng: np.random.Generator) -> np.uint64:
    """``value`` with ``count`` distinct random bits flipped."""
    for bit in rng.choice(64, size=count, replace=False):
        value ^= BIT << np.uint64(bit)
    return value


def planted_hashes(
    n: int, seed: int, near_fraction: float = 0.25, bit_density: float = 0.5
) -> np.ndarray:
    """Random hashes, a fraction of them near copies (0-10 bits flipped) of others, 1% repeated."""
    rng = np.random.default_rng(seed)
    n_near = int(n * near_fraction)
    n_base = n - n_near - n // 100
    bits = rng.random((n_base, 64)) < bit_density
    base = (bits.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    sources = base[rng.integers(0, n_base, n_near)]
    near = np.array(
        [flip_random_bits(s, int(rng.integers(0, 11)), rng) for s in sources], dtype=np.uint64
    )
    repeats = base[rng.integers(0, n_base, n // 100)]
    hashes = np.concatenate([base, near, repeats])
    return hashes[rng.permutation(hashes.size)]


def brute_force_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, ...]:
    """Every pair i < j within threshold, by the full n x n distance matrix."""
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= threshold, k=1))
    return i, j, distance[i, j]


def brute_force_groups(hashes: np.ndarray, order: np.ndarray, threshold: int) -> np.ndarray:
    """Leader clustering written out item by item, for comparison."""
    canonical = np.full(hashes.size, -1)
    for leader in order.tolist():
        if canonical[leader] >= 0:
            continue
        close = np.bitwise_count(hashes ^ hashes[leader]) <= threshold
        canonical[close & (canonical < 0)] = leader
    return canonical


def assert_same_pairs(got: tuple[np.ndarray, ...], expected: tuple[np.ndarray, ...]) -> None:
    assert len(got[0]) == len(expected[0]), f"{len(got[0])} pairs, expected {len(expected[0])}"
    for got_part, expected_part in zip(got, expected, strict=True):
        np.testing.assert_array_equal(got_part, expected_part)


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    return planted_hashes(2000, seed=1)


@pytest.mark.parametrize("threshold", range(11))
def test_candidate_pairs_equal_brute_force(planted: np.ndarray, threshold: int) -> None:
    expected = brute_force_pairs(planted, threshold)
    got = candidate_pairs(planted, threshold)
    assert_same_pairs(got, expected)
    assert got[0].dtype == np.int64 and got[2].dtype == np.uint8
    if threshold >= 4:
        assert len(expected[0]) > 100, "the planted pairs must exercise the search"


@pytest.mark.parametrize(
    ("bands", "threshold"),
    [(1, 2), (2, 2), (2, 7), (3, 7), (5, 7), (5, 10), (8, 7), (16, 7), (16, 20)],
)
def test_exact_recall_with_other_bands_small_chunks_and_crowded_buckets(
    bands: int, threshold: int
) -> None:
    hashes = planted_hashes(600, seed=bands, bit_density=0.1)
    got = candidate_pairs(hashes, threshold, bands=bands, chunk_size=7)
    assert_same_pairs(got, brute_force_pairs(hashes, threshold))
    assert len(got[0]) > 100


def test_identical_hashes_collapse_into_one_group() -> None:
    rng = np.random.default_rng(5)
    value = np.uint64(0x0123456789ABCDEF)
    hashes = np.concatenate(
        [
            np.full(300, value, dtype=np.uint64),
            [flip_random_bits(value, 3, rng)],
            rng.integers(0, 2**64, 50, dtype=np.uint64, endpoint=False),
        ]
    )
    hashes = hashes[rng.permutation(hashes.size)]
    i, j, distance = candidate_pairs(hashes, 4)
    assert_same_pairs((i, j, distance), brute_force_pairs(hashes, 4))
    assert int((distance == 0).sum()) == 300 * 299 // 2
    assert int((distance == 3).sum()) == 300
    order = rng.permutation(hashes.size)
    canonical, group_distance = group_near_duplicates(hashes, order, 4)
    members = np.flatnonzero(np.bitwise_count(hashes ^ value) <= 3)
    best = members[np.argmin(np.argsort(order)[members])]
    assert set(canonical[members].tolist()) == {best}
    assert sorted(group_distance[members].tolist()) == [0] * 300 + [3]


def test_ten_thousand_copies_group_without_expanding_their_pairs() -> None:
    rng = np.random.default_rng(6)
    hashes = np.concatenate(
        [
            np.full(10_000, 42, dtype=np.uint64),
            rng.integers(0, 2**64, 5_000, dtype=np.uint64, endpoint=False),
        ]
    )
    order = np.arange(hashes.size)[::-1].copy()
    canonical, distance = group_near_duplicates(hashes, order, DEFAULT_NEAR_DUPLICATE_THRESHOLD)
    assert set(canonical[:10_000].tolist()) == {9_999}
    assert not distance[:10_000].any()


@pytest.mark.parametrize("threshold", [0, 3, DEFAULT_NEAR_DUPLICATE_THRESHOLD, 12])
def test_grouping_invariants_and_brute_force_agreement(threshold: int) -> None:
    hashes = planted_hashes(1500, seed=threshold, near_fraction=0.4)
    order = np.random.default_rng(threshold).permutation(hashes.size)
    rank = np.argsort(order)
    canonical, distance = group_near_duplicates(hashes, order, threshold)
    np.testing.assert_array_equal(canonical, brute_force_groups(hashes, order, threshold))
    np.testing.assert_array_equal(np.bitwise_count(hashes ^ hashes[canonical]), distance)
    assert distance.max() <= threshold
    kept = np.flatnonzero(canonical == np.arange(hashes.size))
    np.testing.assert_array_equal(canonical[canonical], canonical)
    assert (rank[canonical] <= rank).all(), "a canonical outranks every member of its group"
    between_kept = np.bitwise_count(hashes[kept][:, None] ^ hashes[kept][None, :])
    np.fill_diagonal(between_kept, 64)
    assert between_kept.min() > threshold, "two canonicals are within the threshold"
    if threshold:
        assert kept.size < hashes.size - 100
    again = group_near_duplicates(hashes.copy(), order.copy(), threshold)
    np.testing.assert_array_equal(again[0], canonical)
    np.testing.assert_array_equal(again[1], distance)


def test_leader_clustering_does_not_chain() -> None:
    a = np.uint64(0)
    b = np.uint64(0b11111)
    c = np.uint64(0b1111111111)
    hashes = np.array([a, b, c], dtype=np.uint64)
    canonical, distance = group_near_duplicates(hashes, np.array([0, 1, 2]), 6)
    assert canonical.tolist() == [0, 0, 2] and distance.tolist() == [0, 5, 0]
    canonical, distance = group_near_duplicates(hashes, np.array([1, 0, 2]), 6)
    assert canonical.tolist() == [1, 1, 1] and distance.tolist() == [5, 0, 5]


def test_priority_decides_the_canonical() -> None:
    hashes = np.array([7, 7 ^ 0b11, 7 ^ 0b1100, 0xFFFF_FFFF_0000_0000], dtype=np.uint64)
    for order in itertools.permutations(range(4)):
        canonical, _ = group_near_duplicates(hashes, np.array(order), 4)
        assert canonical[:3].tolist() == [min(range(3), key=order.index)] * 3
        assert canonical[3] == 3


def test_empty_and_single_inputs() -> None:
    empty = np.array([], dtype=np.uint64)
    for part in candidate_pairs(empty, 8):
        assert part.size == 0
    canonical, distance = group_near_duplicates(empty, np.array([], dtype=np.int64), 8)
    assert canonical.size == 0 and distance.size == 0
    one = np.array([123], dtype=np.uint64)
    assert all(part.size == 0 for part in candidate_pairs(one, 8))
    canonical, distance = group_near_duplicates(one, np.array([0]), 8)
    assert canonical.tolist() == [0] and distance.tolist() == [0]


def test_settings_are_checked() -> None:
    hashes = np.array([1, 2, 3], dtype=np.uint64)
    with pytest.raises(ValueError, match="threshold"):
        candidate_pairs(hashes, -1)
    with pytest.raises(ValueError, match="probes"):
        candidate_pairs(hashes, 20, bands=1)
    with pytest.raises(ValueError, match="1-D"):
        candidate_pairs(hashes.reshape(1, 3), 4)
    with pytest.raises(ValueError, match="permutation"):
        group_near_duplicates(hashes, np.array([0, 0, 1]), 4)
    with pytest.raises(ValueError, match="permutation"):
        group_near_duplicates(hashes, np.array([0, 1]), 4)
