"""How well an embedding groups films: genre agreement among nearest neighbours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def genre_jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """|A & B| / |A | B| of two genre lists (0 when both are empty)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def nearest_neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices [n, k] of each row's k nearest other rows by cosine (exact, ties by index)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    n = len(unit)
    if n <= k:
        raise ValueError(f"need more than k={k} vectors, got {n}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, 1024):
        sims = unit[start : start + 1024] @ unit.T
        rows = np.arange(start, min(start + 1024, n))
        sims[rows - start, rows] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.lexsort((top, -np.take_along_axis(sims, top, axis=1)), axis=1)
        out[start : start + len(rows)] = np.take_along_axis(top, order, axis=1)
    return out


def mean_neighbour_genre_jaccard(
    vectors: np.ndarray, genres: Sequence[Sequence[str]], k: int = 10
) -> float:
    """Mean genre Jaccard between each film and its k nearest neighbours."""
    neighbours = nearest_neighbours(vectors, k)
    scores = [
        genre_jaccard(genres[i], genres[j]) for i in range(len(genres)) for j in neighbours[i]
    ]
    return float(np.mean(scores))
