"""Co-watch film vectors: films placed by who watched them, not by how they look.

From a watch history (user, film) pairs form a binary user x film matrix ``X``; its Gram
``X.T @ X`` counts how many users watched both films of a pair (accumulated in Beam at scale,
:mod:`transforms.history`). The co-watch model (:mod:`models.collab`: EASE by default, or the
cosine of the counts) turns the Gram into an item-item matrix ``B``; its top entries are each
film's co-watch *neighbours*, and the **vectors** factorise the same matrix: the leading
eigenvectors of its symmetric part ``(B + B^T) / 2`` (largest eigenvalues, Lanczos),
``U * sqrt(s)``, unit length, so two films are close when the model scores each from the other.
Films watched by fewer than ``min_watches`` users get none. They are the targets of the poster
model's audience objective and the co-watch index.

Everything is deterministic for a given history and configuration (fixed start vector of the
Lanczos iteration, signs fixed so each component's largest entry is positive).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from models.collab import COLLAB_MODELS
from models.collab import CollabModel
from models.collab import FilmGram
from schemas import WatchEvent

MODEL_NAME = "cowatch"


@dataclasses.dataclass(frozen=True)
class CowatchConfig:
    """How co-watch vectors and neighbours are computed."""

    dim: int = 64
    min_watches: int = 2
    neighbors_k: int = 50
    model: str = "ease"
    ease_lambda: float = 500.0
    max_films: int = 10_000
    sequence_weight: float = 1.0
    popularity_exponent: float = 0.2

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
        if self.sequence_weight < 0 or self.popularity_exponent < 0:
            raise ValueError("--sequence_weight and --popularity_exponent must be >= 0")


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


def _leading_eigenvectors(matrix: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, s) of the ``dim`` largest eigenvalues of a symmetric matrix, deterministic in value
    and sign (Lanczos, ``eigsh``, with a fixed start vector; dense below a few films)."""
    n = matrix.shape[0]
    if dim >= n - 1:
        s, u = np.linalg.eigh(matrix.astype(np.float64))
        order = np.argsort(-s, kind="stable")[:dim]
        u, s = u[:, order], s[order]
    else:
        start = np.full(n, 1.0 / np.sqrt(n), dtype=matrix.dtype)
        values, vectors = eigsh(matrix, k=dim, which="LA", v0=start)
        order = np.lexsort((np.arange(dim), -values))
        u, s = vectors[:, order].astype(np.float64), values[order].astype(np.float64)
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    return u * np.where(signs == 0, 1.0, signs), s


def matrix_vectors(matrix: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, unit float32 vectors ``U * sqrt(s)``) of the ``dim`` leading eigenvectors of
    an item-item matrix's symmetric part (negative eigenvalues count 0; a row whose vector is 0
    is not kept). ``matrix`` is overwritten."""
    matrix += matrix.T
    matrix *= 0.5
    u, s = _leading_eigenvectors(matrix, min(dim, matrix.shape[0] - 1))
    vectors = u * np.sqrt(np.maximum(s, 0.0))
    if vectors.shape[1] < dim:
        vectors = np.pad(vectors, ((0, 0), (0, dim - vectors.shape[1])))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    return keep, (vectors[keep] / norms[keep]).astype(np.float32)


def _eligible(fg: FilmGram, config: CowatchConfig) -> np.ndarray:
    eligible = fg.watchers() >= config.min_watches
    if eligible.sum() < 3:
        raise ValueError(
            f"only {int(eligible.sum())} films have {config.min_watches}+ watchers: too few for "
            "co-watch vectors (lower --cowatch_min_watches or give more history)"
        )
    return eligible


def gram_vectors(fg: FilmGram, config: CowatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """(film ids, unit float32 vectors) of the Gram's films with ``min_watches`` watchers: the
    co-watch model's matrix over them, factorised (:func:`matrix_vectors`)."""
    sub = fg.subset(_eligible(fg, config))
    keep, unit = matrix_vectors(_model(config).matrix(sub), config.dim)
    return sub.films[keep], unit


def _model(config: CowatchConfig) -> CollabModel:
    return CollabModel(config.model, config.ease_lambda, config.sequence_weight,
                       config.popularity_exponent)  # fmt: skip


def model_outputs(
    fg: FilmGram, config: CowatchConfig
) -> tuple[np.ndarray, np.ndarray, dict[int, list[tuple[int, float]]]]:
    """(film ids, unit vectors, neighbour lists) of the co-watch model: one solve when every
    modelled film has ``min_watches`` watchers (as the co-watch stage selects them)."""
    eligible = _eligible(fg, config)
    if not eligible.all():
        lists = _model(config).neighbors(fg, config.neighbors_k)
        return (*gram_vectors(fg, config), lists)
    model = _model(config)
    matrix = model.matrix(fg)
    lists = model.neighbors(fg, config.neighbors_k, matrix)
    keep, unit = matrix_vectors(matrix, config.dim)
    return fg.films[keep], unit, lists


def film_gram(history: HistoryMatrix) -> FilmGram:
    """The dense Gram (co-watch counts, watchers on the diagonal) of an in-memory history."""
    gram = (history.matrix.T @ history.matrix).toarray().astype(np.float32)
    return FilmGram(history.films, gram)


def cowatch_vectors(history: HistoryMatrix, config: CowatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """(film ids, unit float32 vectors) of an in-memory history (see :func:`gram_vectors`)."""
    return gram_vectors(film_gram(history), config)
