"""Co-watch film vectors and neighbours: films placed by who watched them, not by how they look.

From a watch history (user, film) pairs form a binary user x film matrix ``X``; ``X.T @ X`` counts
how many users watched both films of a pair. Two products come out of it:

* **vectors**: positive pointwise mutual information of the co-watch counts, factorised by a
  truncated SVD (``scipy.sparse.linalg.svds``), ``U * sqrt(s)``, unit length. Films watched by
  fewer than ``min_watches`` users get no vector. These are the targets of the poster model's
  audience objective and the co-watch index.
* **neighbours**: item-item cosine of the co-watch counts, ``C_ij / sqrt(n_i n_j)``, top ``k``
  per film (itself excluded, ties by lower id): the co-watch half of the hybrid neighbours. With
  a ``user_weighting`` each user counts ``w_u`` instead of 1, in the co-watch counts and in the
  watcher totals alike (``C_ij = sum_u w_u x_ui x_uj``, ``n_i = sum_u w_u x_ui``), so the score
  is still a cosine in 0..1: ``inverse`` (``w_u = 1 / films the user watched``) keeps a user who
  watched everything from tying every pair of films together; ``log`` is ``1 / log2(1 + n_u)``.
  The co-watch kNN *baseline* of the evaluation is the unweighted ``none``.

Everything is deterministic for a given history and configuration (fixed SVD start vector,
signs fixed so each component's largest entry is positive).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from models.collab import COLLAB_MODELS
from models.collab import FilmGram
from schemas import WatchEvent

MODEL_NAME = "cowatch"
USER_WEIGHTINGS = ("inverse", "log", "none")


@dataclasses.dataclass(frozen=True)
class CowatchConfig:
    """How co-watch vectors and neighbours are computed."""

    dim: int = 64
    min_watches: int = 2
    neighbors_k: int = 50
    user_weighting: str = "inverse"
    model: str = "ease"
    ease_lambda: float = 500.0
    max_films: int = 10_000

    def __post_init__(self) -> None:
        if min(self.dim, self.min_watches, self.neighbors_k, self.max_films) < 1:
            raise ValueError(
                "--cowatch_dim, --cowatch_min_watches, --cowatch_max_films and --neighbors_k "
                "must be >= 1"
            )
        if self.model not in COLLAB_MODELS:
            raise ValueError(f"--cowatch_model must be one of {COLLAB_MODELS}, not {self.model!r}")
        if self.ease_lambda <= 0:
            raise ValueError(f"--ease_lambda must be > 0, not {self.ease_lambda}")
        if self.user_weighting not in USER_WEIGHTINGS:
            raise ValueError(
                f"--cowatch_user_weighting must be one of {USER_WEIGHTINGS}, "
                f"not {self.user_weighting!r}"
            )


@dataclasses.dataclass(frozen=True)
class HistoryMatrix:
    """A binary user x film matrix of who watched what, with the ids of its rows and columns."""

    users: np.ndarray
    films: np.ndarray
    matrix: sp.csr_matrix

    def watch_counts(self) -> np.ndarray:
        """Users who watched each film (column sums)."""
        return np.asarray(self.matrix.sum(axis=0)).ravel()


def history_matrix(events: Iterable[WatchEvent]) -> HistoryMatrix:
    """The binary user x film matrix of the events (a user who watched a film twice counts once)."""
    pairs = {(e.user_id, e.movie_id) for e in events}
    if not pairs:
        raise ValueError("the watch history has no events")
    users = np.array(sorted({u for u, _ in pairs}), dtype=np.int64)
    films = np.array(sorted({m for _, m in pairs}), dtype=np.int64)
    user_pos = {u: i for i, u in enumerate(users.tolist())}
    film_pos = {m: i for i, m in enumerate(films.tolist())}
    rows = np.fromiter((user_pos[u] for u, _ in pairs), dtype=np.int64, count=len(pairs))
    cols = np.fromiter((film_pos[m] for _, m in pairs), dtype=np.int64, count=len(pairs))
    data = np.ones(len(pairs), dtype=np.float64)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(len(users), len(films)))
    return HistoryMatrix(users=users, films=films, matrix=matrix)


def cowatch_counts(history: HistoryMatrix, weights: np.ndarray | None = None) -> sp.csr_matrix:
    """Film x film co-watch counts (users who watched both, each counting ``weights[user]``
    when given, else 1), zero diagonal."""
    rows = history.matrix if weights is None else sp.diags(weights) @ history.matrix
    counts = (history.matrix.T @ rows).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts


def ppmi(counts: np.ndarray) -> np.ndarray:
    """Positive pointwise mutual information of a dense symmetric co-occurrence matrix
    (float32; zero where the counts are zero)."""
    counts = np.asarray(counts, dtype=np.float32)
    total = float(counts.sum(dtype=np.float64))
    marginal = counts.sum(axis=1, dtype=np.float64).astype(np.float32)
    if total == 0:
        return np.zeros_like(counts)
    out = counts * np.float32(total)
    out /= np.maximum(marginal, 1e-30)[:, None]
    out /= np.maximum(marginal, 1e-30)[None, :]
    positive = out > 1.0
    np.log(out, out=out, where=positive)
    out[~positive] = 0.0
    return out


def _truncated_svd(matrix: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, s) of the ``dim`` largest singular values of a symmetric matrix, deterministic in
    value and sign. For a symmetric matrix these are its eigenvectors and absolute eigenvalues
    (Lanczos, ``eigsh``, with a fixed start vector)."""
    n = matrix.shape[0]
    if dim >= n - 1:
        u, s, _ = np.linalg.svd(matrix.astype(np.float64))
        u, s = u[:, :dim], s[:dim]
    else:
        start = np.full(n, 1.0 / np.sqrt(n), dtype=matrix.dtype)
        values, vectors = eigsh(matrix, k=dim, which="LM", v0=start)
        order = np.lexsort((np.arange(dim), -np.abs(values)))
        u, s = vectors[:, order].astype(np.float64), np.abs(values[order]).astype(np.float64)
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    return u * np.where(signs == 0, 1.0, signs), s


def gram_vectors(fg: FilmGram, config: CowatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """(film ids, unit float32 vectors) of the Gram's films with ``min_watches`` watchers: PPMI
    of the co-watch counts (zero diagonal), truncated SVD ``U * sqrt(s)``."""
    eligible = fg.watchers() >= config.min_watches
    if eligible.sum() < 3:
        raise ValueError(
            f"only {int(eligible.sum())} films have {config.min_watches}+ watchers: too few for "
            "co-watch vectors (lower --cowatch_min_watches or give more history)"
        )
    sub = fg.subset(eligible)
    counts = np.array(sub.gram, dtype=np.float32)
    np.fill_diagonal(counts, 0.0)
    matrix = ppmi(counts)
    del counts
    dim = min(config.dim, matrix.shape[0] - 1)
    u, s = _truncated_svd(matrix, dim)
    vectors = u * np.sqrt(np.maximum(s, 0.0))
    if vectors.shape[1] < config.dim:
        vectors = np.pad(vectors, ((0, 0), (0, config.dim - vectors.shape[1])))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    unit = vectors[keep] / norms[keep]
    return sub.films[keep], unit.astype(np.float32)


def film_gram(history: HistoryMatrix) -> FilmGram:
    """The dense Gram (co-watch counts, watchers on the diagonal) of an in-memory history."""
    gram = (history.matrix.T @ history.matrix).toarray().astype(np.float32)
    return FilmGram(history.films, gram)


def cowatch_vectors(history: HistoryMatrix, config: CowatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """(film ids, unit float32 vectors) of an in-memory history (see :func:`gram_vectors`)."""
    return gram_vectors(film_gram(history), config)


def user_weights(history: HistoryMatrix, weighting: str) -> np.ndarray:
    """How much each user (row) counts in the co-watch neighbours (see the module docstring)."""
    if weighting not in USER_WEIGHTINGS:
        raise ValueError(f"user weighting must be one of {USER_WEIGHTINGS}, not {weighting!r}")
    watched = np.asarray(history.matrix.sum(axis=1)).ravel()
    if weighting == "inverse":
        return 1.0 / np.maximum(watched, 1.0)
    if weighting == "log":
        return 1.0 / np.log2(1.0 + np.maximum(watched, 1.0))
    return np.ones_like(watched, dtype=np.float64)


def cowatch_neighbors(
    history: HistoryMatrix, k: int, min_watches: int = 1, user_weighting: str = "none"
) -> dict[int, list[tuple[int, float]]]:
    """Each film's top-k co-watch neighbours: cosine of (user-weighted) co-watch counts, ties by
    lower id; ``min_watches`` counts watchers unweighted."""
    weights = user_weights(history, user_weighting)
    counts = cowatch_counts(history, weights)
    totals = history.matrix.T @ weights  # each film's watchers, weighted
    films = history.films
    eligible = history.watch_counts() >= min_watches
    lists: dict[int, list[tuple[int, float]]] = {}
    for row in np.flatnonzero(eligible):
        start, end = counts.indptr[row], counts.indptr[row + 1]
        cols = counts.indices[start:end]
        mask = eligible[cols]
        cols = cols[mask]
        if not len(cols):
            lists[int(films[row])] = []
            continue
        scores = counts.data[start:end][mask] / np.sqrt(totals[row] * totals[cols])
        order = np.lexsort((films[cols], -np.round(scores, 12)))[:k]
        lists[int(films[row])] = [(int(films[cols[i]]), float(scores[i])) for i in order]
    return lists


def history_digest(events: Sequence[WatchEvent], *extra: object) -> str:
    """A digest of a history snapshot (sorted events) and settings: the co-watch version."""
    digest = hashlib.sha256()
    for e in sorted(events, key=lambda e: (e.user_id, e.movie_id, e.watched_at, e.rating)):
        digest.update(f"{e.user_id},{e.movie_id},{e.rating},{e.watched_at.isoformat()};".encode())
    for item in extra:
        digest.update(f"|{item}".encode())
    return digest.hexdigest()[:12]
