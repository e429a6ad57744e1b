"""Near-duplicate groups of 64-bit perceptual hashes, found without comparing every pair.

``candidate_pairs`` is multi-index hashing: the 64 bits are cut into bands, band k searched within
radius r_k where the (r_k + 1) add up to t + 1. Two hashes within Hamming distance t then differ
in at most r_k bits on some band k (were every band off by r_k + 1 or more, the distance would
exceed t), so probing each band's sorted values with every flip mask of at most r_k bits finds
every such pair (with 4 bands, t = 8 gives radii 2, 1, 1, 1; the plain floor(t / 4) = 2 on all four
bands probes three times as many keys), and the full 64-bit distance removes false candidates.
Identical hashes are collapsed before the search, so a hash repeated 10,000 times costs one search.

``group_near_duplicates`` turns those pairs into groups by leader clustering in priority order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator

import numpy as np

# The first of two checks (the second, imaging.image_match, confirms each candidate pair), so it
# is set for recall. Measured on the real posters of the shared data (4,433 posters,
# benchmarks/dedupe_quality.py): copies cropped 3% off every edge stay within 8 bits of their
# original for 0.84 of posters and within 14 for 0.9955 (copies resized to 60%, JPEG q55 or
# brightened 12% stay within 8). Pairs of different films within 14 bits: 626 of 9.8 million, all of
# which the confirmation keeps apart (the best of them scores 0.842 against the 0.92 it needs).
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 14
DEFAULT_CHUNK_SIZE = 1 << 21

HASH_BITS = 64
_TABLE_MAX_BITS = 22
_MAX_PROBES_PER_BAND = 100_000
_AUTO_BANDS = range(2, 17)
# Modelled cost of one query's probe of one band (bucket lookup and range set-up), in units of one
# candidate check: about 3 while the band's bucket table (2**width entries) stays in cache, about 5
# beyond 16 bits. Measured with benchmarks.hash_grouping on 25,000 to 1,000,000 hashes.
_LOOKUP_COST = 3.0
_WIDE_LOOKUP_COST = 5.0
_CACHED_TABLE_BITS = 16


def _as_hashes(hashes: np.ndarray) -> np.ndarray:
    """The hashes as a 1-D uint64 array, or a ValueError that says what was wrong."""
    array = np.asarray(hashes)
    if array.ndim != 1:
        raise ValueError(f"hashes must be a 1-D array, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.uint64)
    if array.dtype.kind not in "ui":
        raise ValueError(f"hashes must be unsigned 64-bit integers, got dtype {array.dtype}")
    return array.astype(np.uint64, copy=False)


def _check_settings(threshold: int, bands: int | None, chunk_size: int) -> None:
    """Rejects a threshold, band count or chunk size the search cannot honour."""
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be within 0..{HASH_BITS}, got {threshold}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if bands is None:
        return
    if not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be within 1..{HASH_BITS} or None, got {bands}")
    probes = max(_probe_count(width, radius) for _, width, radius in _band_plan(bands, threshold))
    if probes > _MAX_PROBES_PER_BAND:
        raise ValueError(
            f"threshold {threshold} with {bands} bands needs {probes} probes per band; "
            f"use more bands (at most {_MAX_PROBES_PER_BAND} probes are allowed)"
        )


def _band_layout(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band: contiguous bit ranges whose widths differ by at most one."""
    base, extra = divmod(HASH_BITS, bands)
    layout = []
    shift = 0
    for band in range(bands):
        width = base + (1 if band < extra else 0)
        layout.append((shift, width))
        shift += width
    return layout


def _band_plan(bands: int, threshold: int) -> list[tuple[int, int, int]]:
    """(shift, width, radius) of each band to search; the (radius + 1) add up to threshold + 1.

    When the threshold is below ``bands - 1`` some bands need no search and are left out.
    """
    base, extra = divmod(threshold + 1, bands)
    plan = []
    for band, (shift, width) in enumerate(_band_layout(bands)):
        radius = base - 1 + (1 if band < extra else 0)
        if radius >= 0:
            plan.append((shift, width, radius))
    return plan


def _probe_count(width: int, radius: int) -> int:
    """How many keys lie within ``radius`` bits of one ``width``-bit key."""
    return sum(math.comb(width, flips) for flips in range(min(radius, width) + 1))


def choose_bands(n_unique: int, threshold: int) -> int:
    """The band count with the least modelled work to search ``n_unique`` distinct hashes."""

    def work(bands: int) -> float:
        return sum(
            _probe_count(width, radius)
            * (
                (_LOOKUP_COST if width <= _CACHED_TABLE_BITS else _WIDE_LOOKUP_COST)
                + n_unique / 2**width
            )
            for _, width, radius in _band_plan(bands, threshold)
        )

    def widest_probe(bands: int) -> int:
        return max(_probe_count(width, radius) for _, width, radius in _band_plan(bands, threshold))

    allowed = [bands for bands in _AUTO_BANDS if widest_probe(bands) <= _MAX_PROBES_PER_BAND]
    return min(allowed, key=work)


def _flip_masks(width: int, radius: int) -> list[int]:
    """Every non-zero mask of ``width`` bits with at most ``radius`` bits set, fewest bits first."""
    masks = []
    for count in range(1, min(radius, width) + 1):
        for bits in itertools.combinations(range(width), count):
            masks.append(sum(1 << bit for bit in bits))
    return masks


def _unique_value_pairs(
    values: np.ndarray, threshold: int, bands: int | None, chunk_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j of distinct sorted values within ``threshold``: (i, j, distance)."""
    m = values.size
    found: list[np.ndarray] = []
    if m >= 2 and threshold > 0:
        if bands is None:
            bands = choose_bands(m, threshold)
        for shift, width, radius in _band_plan(bands, threshold):
            found.extend(_band_pairs(values, shift, width, radius, threshold, chunk_size))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.uint8)
    i, j = np.divmod(np.unique(np.concatenate(found)), m)
    return i, j, np.bitwise_count(values[i] ^ values[j]).astype(np.uint8)


def _band_pairs(
    values: np.ndarray, shift: int, width: int, radius: int, threshold: int, chunk_size: int
) -> Iterator[np.ndarray]:
    """Yields keys i * m + j of the pairs within threshold whose band differs in <= radius bits."""
    m = values.size
    keys = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    sorted_values = values[order]
    starts = None
    if width <= _TABLE_MAX_BITS:
        starts = np.zeros((1 << width) + 1, dtype=np.int64)
        np.cumsum(np.bincount(sorted_keys.astype(np.int64), minlength=1 << width), out=starts[1:])
    positions = np.arange(m)
    bucket_end = np.searchsorted(sorted_keys, sorted_keys, side="right")
    probe = _Probe(sorted_values, order, threshold, chunk_size)
    yield from probe.pairs(positions, positions + 1, bucket_end)
    below: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for mask in _flip_masks(width, radius):
        high_bit = mask.bit_length() - 1
        if high_bit not in below:
            queries = np.flatnonzero((sorted_keys & np.uint64(1 << high_bit)) == 0)
            below[high_bit] = (queries, sorted_keys[queries])
        queries, query_keys = below[high_bit]
        targets = query_keys ^ np.uint64(mask)
        if starts is not None:
            targets = targets.astype(np.int64)
            yield from probe.pairs(queries, starts[targets], starts[targets + 1])
        else:
            lo = np.searchsorted(sorted_keys, targets, side="left")
            yield from probe.pairs(queries, lo, np.searchsorted(sorted_keys, targets, side="right"))


@dataclasses.dataclass(frozen=True)
class _Probe:
    """One band's values in key order, and the verification of candidates found in it."""

    sorted_values: np.ndarray
    order: np.ndarray
    threshold: int
    chunk_size: int

    def pairs(self, queries: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Iterator[np.ndarray]:
        """Yields keys i * m + j (i < j) of (query, position in [lo, hi)) pairs within threshold.

        Candidates are expanded about ``chunk_size`` at a time (one query's whole range at least),
        so memory stays bounded by the chunk size plus the largest bucket.
        """
        m = self.sorted_values.size
        count = hi - lo
        nonempty = count > 0
        queries, lo, count = queries[nonempty], lo[nonempty], count[nonempty]
        query_values = self.sorted_values[queries]
        ends = np.cumsum(count)
        start = 0
        while start < count.size:
            before = int(ends[start - 1]) if start else 0
            stop = max(int(np.searchsorted(ends, before + self.chunk_size, "right")), start + 1)
            counts = count[start:stop]
            chunk_ends = ends[start:stop] - before
            positions = np.arange(int(chunk_ends[-1])) + np.repeat(
                lo[start:stop] - (chunk_ends - counts), counts
            )
            candidates = self.sorted_values[positions]
            distance = np.bitwise_count(np.repeat(query_values[start:stop], counts) ^ candidates)
            near = np.flatnonzero(distance <= self.threshold)
            if near.size:
                rows = start + np.searchsorted(chunk_ends, near, side="right")
                a = self.order[queries[rows]]
                b = self.order[positions[near]]
                yield np.minimum(a, b) * m + np.maximum(a, b)
            start = stop


def _members(inverse: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by unique value, ascending within a group: (members, group starts of m + 1)."""
    members = np.argsort(inverse, kind="stable")
    starts = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(inverse, minlength=m), out=starts[1:])
    return members, starts


def candidate_pairs(
    hashes: np.ndarray,
    threshold: int,
    *,
    bands: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair i < j of hashes within ``threshold`` bits: (i, j, distance) sorted by (i, j).

    Exact: the same pairs as comparing all n^2 / 2, without doing so. k copies of one hash yield
    their k (k - 1) / 2 pairs here; ``group_near_duplicates`` never expands them.
    """
    _check_settings(threshold, bands, chunk_size)
    h = _as_hashes(hashes)
    values, inverse = np.unique(h, return_inverse=True)
    m = values.size
    ui, uj, ud = _unique_value_pairs(values, threshold, bands, chunk_size)
    members, starts = _members(inverse, m)
    sizes = np.diff(starts)
    parts_i = []
    parts_j = []
    parts_d = []
    for size in np.unique(sizes[sizes > 1]).tolist():
        first, second = np.triu_indices(size, 1)
        group_starts = starts[:-1][sizes == size][:, None]
        parts_i.append(members[group_starts + first].ravel())
        parts_j.append(members[group_starts + second].ravel())
        parts_d.append(np.zeros(parts_i[-1].size, dtype=np.uint8))
    products = sizes[ui] * sizes[uj]
    pair = np.repeat(np.arange(ui.size), products)
    local = np.arange(pair.size) - np.repeat(np.cumsum(products) - products, products)
    a = members[starts[ui][pair] + local // sizes[uj][pair]]
    b = members[starts[uj][pair] + local % sizes[uj][pair]]
    parts_i.append(np.minimum(a, b))
    parts_j.append(np.maximum(a, b))
    parts_d.append(ud[pair])
    i = np.concatenate(parts_i)
    j = np.concatenate(parts_j)
    d = np.concatenate(parts_d)
    by_pair = np.lexsort((j, i))
    return i[by_pair], j[by_pair], d[by_pair]


def group_near_duplicates(
    hashes: np.ndarray,
    order: np.ndarray,
    threshold: int,
    *,
    bands: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Leader clustering in priority order: (canonical_index, distance to it) for every hash.

    Items are visited in ``order`` (``order[0]`` is the most preferred); an unassigned item becomes
    a canonical (``canonical_index[k] == k``) and takes every unassigned item within ``threshold``.
    So each dropped item is within the threshold of its canonical, which it never outranks, and no
    two canonicals are within the threshold of each other.
    """
    _check_settings(threshold, bands, chunk_size)
    h = _as_hashes(hashes)
    n = h.size
    priority = np.asarray(order)
    if priority.shape != (n,) or priority.dtype.kind not in "ui":
        raise ValueError(f"order must be an integer permutation of range({n}), got {priority!r}")
    if n and not np.array_equal(np.sort(priority), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n}): every index exactly once")
    priority = priority.astype(np.int64, copy=False)
    values, inverse = np.unique(h, return_inverse=True)
    m = values.size
    first_in_order = np.unique(inverse[priority], return_index=True)[1]
    best_item = priority[first_in_order]
    ui, uj, ud = _unique_value_pairs(values, threshold, bands, chunk_size)
    source = np.concatenate([ui, uj])
    by_source = np.argsort(source, kind="stable")
    neighbours = np.concatenate([uj, ui])[by_source]
    neighbour_distance = np.concatenate([ud, ud])[by_source]
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(source, minlength=m), out=indptr[1:])
    leader = np.arange(m)
    distance = np.zeros(m, dtype=np.uint8)
    assigned = np.zeros(m, dtype=bool)
    connected = np.flatnonzero(np.diff(indptr) > 0)
    bounds = indptr.tolist()
    for value in connected[np.argsort(first_in_order[connected])].tolist():
        if assigned[value]:
            continue
        assigned[value] = True
        near = neighbours[bounds[value] : bounds[value + 1]]
        free = ~assigned[near]
        taken = near[free]
        assigned[taken] = True
        leader[taken] = value
        distance[taken] = neighbour_distance[bounds[value] : bounds[value + 1]][free]
    return best_item[leader][inverse], distance[inverse]
