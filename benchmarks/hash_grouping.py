"""Hash grouping: seconds to group n perceptual hashes into near-duplicate groups.

Generates clustered 64-bit hashes (random hashes plus 5% near copies with 1-6 bits flipped), times
``group_near_duplicates`` (multi-index hashing, then leader clustering) at the default threshold for
each n, and measures in the same run the baseline it replaces: NumPy all-pairs popcount on 25,000
hashes (which must find the same pairs), extrapolated quadratically to each n.

    python -m benchmarks.hash_grouping [--sizes 25000 50000 100000 200000] [--threshold 8]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

import numpy as np

from imaging.phash_index import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from imaging.phash_index import candidate_pairs
from imaging.phash_index import choose_bands
from imaging.phash_index import group_near_duplicates

DEFAULT_SIZES = (25_000, 50_000, 100_000, 200_000)
BASELINE_SIZE = 25_000
NEAR_COPY_FRACTION = 0.05
MAX_FLIPPED_BITS = 6
_BASELINE_ROWS = 256


def clustered_hashes(n: int, seed: int = 0) -> np.ndarray:
    """n random 64-bit hashes of which 5% are near copies (1-6 bits flipped) of the others."""
    rng = np.random.default_rng(seed)
    n_copies = int(n * NEAR_COPY_FRACTION)
    originals = rng.integers(0, 2**64, n - n_copies, dtype=np.uint64, endpoint=False)
    sources = originals[rng.integers(0, originals.size, n_copies)]
    flips = rng.integers(1, MAX_FLIPPED_BITS + 1, n_copies)
    bit_rank = np.argsort(rng.random((n_copies, 64)), axis=1)
    flipped = bit_rank < flips[:, None]
    masks = (flipped.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(
        axis=1, dtype=np.uint64
    )
    hashes = np.concatenate([originals, sources ^ masks])
    return hashes[rng.permutation(n)]


def brute_force_pair_count(hashes: np.ndarray, threshold: int) -> int:
    """Pairs i < j within threshold, by popcount over all n^2 / 2 pairs (the baseline)."""
    found = 0
    for start in range(0, hashes.size, _BASELINE_ROWS):
        rows = hashes[start : start + _BASELINE_ROWS, None]
        distance = np.bitwise_count(rows ^ hashes[None, start + 1 :])
        upper = (
            np.arange(start + 1, hashes.size)[None, :]
            > np.arange(start, start + rows.shape[0])[:, None]
        )
        found += int(np.count_nonzero((distance <= threshold) & upper))
    return found


def run(
    sizes: Sequence[int] = DEFAULT_SIZES,
    threshold: int = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    baseline_size: int = BASELINE_SIZE,
) -> list[dict]:
    """One dict per n: grouping seconds and pairs, beside the brute-force baseline measured here."""
    hashes = clustered_hashes(baseline_size)
    started = time.perf_counter()
    baseline_pairs = brute_force_pair_count(hashes, threshold)
    baseline_seconds = time.perf_counter() - started
    expected = int(candidate_pairs(hashes, threshold)[0].size)
    if baseline_pairs != expected:
        raise RuntimeError(f"brute force found {baseline_pairs} pairs, candidate_pairs {expected}")
    rows = []
    for n in sizes:
        hashes = clustered_hashes(n)
        order = np.arange(n)
        started = time.perf_counter()
        canonical, _ = group_near_duplicates(hashes, order, threshold)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "n": n,
                "threshold": threshold,
                "bands": choose_bands(np.unique(hashes).size, threshold),
                "seconds": seconds,
                "pairs": int(candidate_pairs(hashes, threshold)[0].size),
                "dropped": int(np.count_nonzero(canonical != order)),
                "seconds_per_1000": seconds * 1000 / n,
                "baseline_n": baseline_size,
                "baseline_seconds": baseline_seconds,
                "baseline_pairs": baseline_pairs,
                "brute_force_seconds": baseline_seconds * (n / baseline_size) ** 2,
                "speed_up": baseline_seconds * (n / baseline_size) ** 2 / seconds,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of ``run`` as a plain-text table, the baseline beside each row."""
    first = rows[0]
    lines = [
        f"near-duplicate grouping of clustered 64-bit hashes at threshold {first['threshold']}",
        f"{'n':>9} {'bands':>5} {'seconds':>8} {'pairs':>7} {'dropped':>7} {'s/1000':>7}"
        f" | {'brute force s':>13} {'speed-up':>8}",
    ]
    for row in rows:
        lines.append(
            f"{row['n']:>9,} {row['bands']:>5} {row['seconds']:>8.3f} {row['pairs']:>7,}"
            f" {row['dropped']:>7,} {row['seconds_per_1000']:>7.4f}"
            f" | {row['brute_force_seconds']:>13.2f} {row['speed_up']:>7.1f}x"
        )
    lines.append(
        f"baseline: NumPy all-pairs popcount measured in this run on n={first['baseline_n']:,}: "
        f"{first['baseline_seconds']:.3f} s, {first['baseline_pairs']:,} pairs (the same pairs as "
        "candidate_pairs); other n extrapolated as n^2"
    )
    return "\n".join(lines)


def main_report(
    sizes: Sequence[int] = DEFAULT_SIZES, threshold: int = DEFAULT_NEAR_DUPLICATE_THRESHOLD
) -> list[dict]:
    """Run the benchmark, print its table, and return its rows."""
    rows = run(sizes, threshold)
    print(format_table(rows))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the sizes and threshold, then run and print the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--threshold", type=int, default=DEFAULT_NEAR_DUPLICATE_THRESHOLD)
    args = parser.parse_args(argv)
    main_report(args.sizes, args.threshold)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    main()
