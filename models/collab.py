"""The collaborative model at scale: a films x films Gram of the watch history, and EASE on it.

The history enters as a Gram ``G = X^T X`` over the films with the most watchers (``X`` the
binary users x films matrix: a user who watched a film twice counts once), accumulated in Beam
from complete users (:class:`transforms.history.HistoryStats`); everything here is a function of
``G`` and so of film-sized arrays only:

* **EASE** (Steck 2019, "Embarrassingly Shallow Autoencoders"): ``P = (G + lambda I)^-1``,
  ``B = I - P / diag(P)`` (zero diagonal); a user's scores are ``w_u^T B`` for the weights of the
  films they watched. Each film keeps its top-``k`` positive row entries as its co-watch
  neighbours, so the nightly scoring (a weighted sum of neighbour lists,
  :func:`models.scoring.rank_candidates`) is EASE with the recency weighting. Scores are divided
  by the mean best neighbour score, so a typical best neighbour scores 1 (the blend's scale).
* **what comes next** (:func:`ease_sequence_neighbors`): beside the Gram, Beam accumulates
  ``S_ij``, the sum over users of ``1 / d`` where film j is ``d <= SEQUENCE_WINDOW`` places
  after film i in the user's time-ordered watches. A film's neighbour list is the top ``k`` of
  its EASE row (the top ``EASE_TOP`` entries, each divided by the neighbour's watchers **
  ``popularity_exponent``, the row scaled to a largest entry of 1) plus ``sequence_weight`` x
  its row of ``S`` (each column divided by the square root of its watchers, the row scaled to
  a largest entry of 1). Chosen on the time-ordered validation split of the real history
  (benchmarks/candidates_real.py): it lifts validation HR@100 from 0.561 (EASE alone) to 0.60.
* **cosine** (the item-item co-watch kNN baseline): ``G_ij / sqrt(G_ii G_jj)``.
* **vectors** (the audience objective's targets and the co-watch index): a factorisation of the
  chosen model's own item-item matrix (:func:`models.cowatch.matrix_vectors`): the leading
  eigenvectors of its symmetric part, so a film's vector places it where the model's
  neighbours do. :func:`model_outputs` solves the model once for both.

The solve is one machine's work: ``G`` and ``S`` are ``4 F^2`` bytes each (float32) and the
Cholesky inverse about two more such arrays: about ``16 F^2`` bytes at the peak (F = 10,000:
1.6 GB; 20,000: 6.4 GB).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
import scipy.sparse as sp

COLLAB_MODELS = ("ease", "cosine")
_ROWS = 1024  # rows of B ranked at a time (bounds the argpartition's temporary)
SEQUENCE_WINDOW = 10
"""A watch counts towards the ``SEQUENCE_WINDOW`` films a user watched next (1 / distance)."""
EASE_TOP = 200
"""EASE entries per row that enter a film's blended neighbour list."""
SEQUENCE_COLUMN_EXPONENT = 0.5


@dataclasses.dataclass(frozen=True)
class FilmGram:
    """Co-watch counts of the modelled films: ``gram[i, j]`` users who watched films i and j
    (the diagonal: each film's watchers), films sorted by id."""

    films: np.ndarray
    gram: np.ndarray
    sequence: np.ndarray | None = None
    """``sequence[i, j]``: sum over users of 1 / d where j is d <= SEQUENCE_WINDOW places after i
    in the user's time-ordered watches (None: not accumulated)."""

    def watchers(self) -> np.ndarray:
        """Users who watched each film (the diagonal)."""
        return np.diag(self.gram).astype(np.float64)

    def subset(self, keep: np.ndarray) -> FilmGram:
        """The Gram of the films where ``keep`` (a boolean mask) holds."""
        index = np.flatnonzero(keep)
        sequence = None if self.sequence is None else self.sequence[np.ix_(index, index)]
        return FilmGram(self.films[index], self.gram[np.ix_(index, index)], sequence)

    def with_histories_changed(self, before: list[np.ndarray], after: list[np.ndarray]) -> FilmGram:
        """The Gram once users' watched films go from ``before[u]`` to ``after[u]`` (film ids in
        the order watched; films outside the Gram are ignored): ``G - sum x x^T + sum x' x'^T``,
        and the sequence counts likewise, exactly."""
        gram = self.gram.copy()
        sequence = None if self.sequence is None else self.sequence.copy()
        if sequence is not None:
            flat = sequence.reshape(-1)
            for sign, histories in ((-1.0, before), (1.0, after)):
                keys, values = ordered_steps(self.films, histories)
                flat[keys] += np.float32(sign) * values
        rows, cols, values = [], [], []
        for was, now in zip(before, after, strict=True):
            # x = k + r before, x' = k + s after (k kept, r dropped, s added; binary vectors):
            # x' x'^T - x x^T = s (s + k)^T + k s^T - r (r + k)^T - k r^T
            old = _positions(self.films, np.unique(was))
            new = _positions(self.films, np.unique(now))
            kept = np.intersect1d(old, new, assume_unique=True)
            for sign, changed in ((-1.0, np.setdiff1d(old, new, True)),
                                  (1.0, np.setdiff1d(new, old, True))):  # fmt: skip
                if not len(changed):
                    continue
                both = np.concatenate([changed, kept])
                rows += [np.repeat(changed, len(both)), np.repeat(kept, len(changed))]
                cols += [np.tile(both, len(changed)), np.tile(changed, len(kept))]
                values.append(np.full(len(changed) * (len(both) + len(kept)), sign, np.float32))
        if values:
            change = sp.csr_matrix(
                (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                shape=gram.shape,
            ).tocoo()  # duplicates summed
            gram[change.row, change.col] += change.data
        return FilmGram(self.films, gram, sequence)


def _positions(films: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions in the sorted ``films`` of those ``ids`` that are among them."""
    pos = _modelled(films, ids)
    return pos[pos >= 0]


def add_pairs(gram: np.ndarray, x: sp.csr_matrix, sign: float = 1.0, rows: int = 2048) -> None:
    """``gram += sign * x^T x`` in place, for a sparse binary users x films matrix ``x``: a block
    of film rows at a time, added densely where the block is dense, else entry by entry."""
    columns = x.tocsc()
    for start in range(0, x.shape[1], rows):
        stop = min(start + rows, x.shape[1])
        block = (columns[:, start:stop].T.tocsr() @ x).tocsr()
        if block.nnz * 8 > block.shape[0] * block.shape[1]:
            gram[start:stop] += np.float32(sign) * block.toarray().astype(np.float32, copy=False)
        elif block.nnz:
            coo = block.tocoo()
            gram[coo.row + start, coo.col] += np.float32(sign) * coo.data.astype(np.float32)


def _modelled(films: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """Each film's position in the sorted ``films``, -1 where it is not one of them."""
    if not len(films):
        return np.full(len(movies), -1)
    pos = np.minimum(np.searchsorted(films, movies), len(films) - 1)
    return np.where(films[pos] == movies, pos, -1)


def sequence_steps(
    films: np.ndarray, users: np.ndarray, movies: np.ndarray, watched_at: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Complete users' sequence counts as sparse (flat index ``i * F + j``, value) pairs, each
    index once: each user's watches ordered by time, then film id; 1 / d from each film to the
    film ``d <= SEQUENCE_WINDOW`` places later, both among ``films``."""
    n = len(films)
    if not n or not len(users):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    order = np.lexsort((movies, watched_at, users))
    users, pos = users[order], _modelled(films, movies[order])
    keys, values = [], []
    for d in range(1, min(SEQUENCE_WINDOW, len(users) - 1) + 1):
        ok = (users[:-d] == users[d:]) & (pos[:-d] >= 0) & (pos[d:] >= 0)
        keys.append(pos[:-d][ok] * n + pos[d:][ok])
        values.append(np.full(int(ok.sum()), 1.0 / d, np.float32))
    return merge_steps(keys, values)


def ordered_steps(
    films: np.ndarray, histories: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sequence_steps` of users given as film ids in the order each watched them."""
    if not histories or not len(films):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    lengths = [len(h) for h in histories]
    users = np.repeat(np.arange(len(histories)), lengths)
    movies = np.concatenate([np.asarray(h, np.int64) for h in histories])
    order = np.concatenate([np.arange(n) for n in lengths]) if movies.size else movies
    return sequence_steps(films, users, movies, order.astype(np.float64))


def merge_steps(
    keys: list[np.ndarray], values: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse (flat index, value) parts summed into one, each index once, sorted."""
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate(values), minlength=len(unique))
    return unique, summed.astype(np.float32)


def dense_steps(films: np.ndarray, steps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Sparse (flat index, value) sequence counts as the dense F x F array."""
    sequence = np.zeros((len(films), len(films)), np.float32)
    sequence.reshape(-1)[steps[0]] = steps[1]
    return sequence


def sequence_of_users(
    films: np.ndarray, users: np.ndarray, movies: np.ndarray, watched_at: np.ndarray
) -> np.ndarray:
    """The sequence counts of complete users' events over the sorted ``films``."""
    return dense_steps(films, sequence_steps(films, users, movies, watched_at))


def select_films(ids: np.ndarray, watchers: np.ndarray, min_watches: int, max_films: int):
    """The films the Gram holds: at least ``min_watches`` watchers, the ``max_films`` most
    watched (ties by lower id), sorted by id."""
    keep = watchers >= min_watches
    ids, watchers = ids[keep], watchers[keep]
    order = np.lexsort((ids, -watchers))[:max_films]
    return np.sort(ids[order])


def gram_of_users(films: np.ndarray, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """The Gram contribution of complete users' (user, film) events over the sorted ``films``."""
    gram = np.zeros((len(films), len(films)), np.float32)
    accumulate_users(gram, films, users, movies)
    return gram


def accumulate_users(
    gram: np.ndarray, films: np.ndarray, users: np.ndarray, movies: np.ndarray,
    max_pairs: int = 200_000_000,
) -> None:  # fmt: skip
    """Add complete users' (user, film) events to ``gram`` (binary: repeats count once), users
    in chunks whose pairs (sum of squared films per user) stay under ``max_pairs``."""
    if not len(films) or not len(users):
        return
    pos = np.searchsorted(films, movies)
    pos = np.minimum(pos, len(films) - 1)
    inside = films[pos] == movies
    pairs = np.unique(np.stack([users[inside], pos[inside]], axis=1), axis=0)
    if not len(pairs):
        return
    user_ids, user_row = np.unique(pairs[:, 0], return_inverse=True)
    counts = np.bincount(user_row).astype(np.float64)
    ends = np.cumsum(counts**2)
    starts_at = np.concatenate([[0], np.cumsum(counts).astype(np.int64)])
    first = 0
    while first < len(user_ids):
        budget = (ends[first - 1] if first else 0.0) + max_pairs
        last = max(first + 1, int(np.searchsorted(ends, budget, side="right")))
        lo, hi = starts_at[first], starts_at[last]
        x = sp.csr_matrix(
            (np.ones(hi - lo, np.float32), (user_row[lo:hi] - first, pairs[lo:hi, 1])),
            shape=(last - first, len(films)),
        )
        add_pairs(gram, x)
        first = last


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item matrix ``B`` (float32, zero diagonal) of a Gram and its L2 penalty."""
    if lam <= 0:
        raise ValueError(f"--ease_lambda must be > 0, not {lam}")
    # Gram and inverse are symmetric, so the Fortran-ordered view LAPACK works in place on is
    # the transpose: its "upper" triangle is the lower triangle of the C-ordered array.
    a = gram.astype(np.float32, copy=True).T
    a[np.diag_indices_from(a)] += np.float32(lam)
    chol, info = scipy.linalg.lapack.spotrf(a, lower=False, overwrite_a=True)
    if info != 0:
        raise ValueError(f"the regularised Gram is not positive definite (LAPACK info {info})")
    del a
    inverse, info = scipy.linalg.lapack.spotri(chol, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"the regularised Gram cannot be inverted (LAPACK info {info})")
    del chol
    p = inverse.T  # C-ordered, its lower triangle filled: mirror it, a block of rows at a time
    for start in range(0, len(p), _ROWS):
        stop = min(start + _ROWS, len(p))
        p[start:stop, stop:] = p[stop:, start:stop].T
        block = p[start:stop, start:stop]
        block[np.triu_indices(stop - start, 1)] = block.T[np.triu_indices(stop - start, 1)]
    diag = np.diag(p).copy()
    p /= -diag[None, :]
    p[np.diag_indices_from(p)] = 0.0
    return p


def _rank_rows(
    block: np.ndarray, films: np.ndarray, start: int, k: int
) -> dict[int, list[tuple[int, float]]]:
    """Top-``k`` positive entries of rows ``start..`` of a square films x films matrix, given
    as a block of rows: (film id, score), ties by lower id, the film itself excluded."""
    block = np.array(block, dtype=np.float64)
    block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
    k = min(k, max(block.shape[1] - 1, 0))
    lists: dict[int, list[tuple[int, float]]] = {}
    for row, values_all in enumerate(block):
        film = int(films[start + row])
        if k == 0:
            lists[film] = []
            continue
        rounded = np.round(values_all, 12)
        threshold = -np.partition(-rounded, k - 1)[k - 1]
        cols = np.flatnonzero((rounded >= threshold) & (rounded > 0))
        order = np.lexsort((films[cols], -rounded[cols]))[:k]
        chosen = cols[order]
        lists[film] = list(zip(films[chosen].tolist(), values_all[chosen].tolist(), strict=True))
    return lists


def matrix_neighbors(
    matrix: np.ndarray, films: np.ndarray, k: int, rescale: bool
) -> dict[int, list[tuple[int, float]]]:
    """Each film's top-``k`` positive entries of its row of an item-item ``matrix`` (with
    ``rescale``: divided so the mean best neighbour scores 1)."""
    lists: dict[int, list[tuple[int, float]]] = {}
    for start in range(0, len(films), _ROWS):
        lists.update(_rank_rows(matrix[start : start + _ROWS], films, start, k))
    best = [v[0][1] for v in lists.values() if v]
    scale = float(np.mean(best)) if best and rescale else 1.0
    return {m: [(n, s / scale) for n, s in v] for m, v in lists.items()}


def cosine_matrix(fg: FilmGram) -> np.ndarray:
    """The co-watch cosine ``G_ij / sqrt(G_ii G_jj)`` (float32, zero diagonal)."""
    norms = np.sqrt(np.maximum(fg.watchers(), 1e-12)).astype(np.float32)
    matrix = fg.gram / norms[:, None]
    matrix /= norms[None, :]
    matrix[np.diag_indices_from(matrix)] = 0.0
    return matrix


def ease_neighbors(fg: FilmGram, lam: float, k: int) -> dict[int, list[tuple[int, float]]]:
    """Each film's top-``k`` EASE neighbours, scaled so the mean best neighbour scores 1."""
    return matrix_neighbors(ease_weights(fg.gram, lam), fg.films, k, rescale=True)


def _top_per_row(block: np.ndarray, top: int) -> np.ndarray:
    """``block`` with all but each row's ``top`` largest entries set to 0 (ties by position)."""
    if block.shape[1] <= top:
        return block
    keep = np.argpartition(-block, top - 1, axis=1)[:, :top]
    out = np.zeros_like(block)
    rows = np.arange(len(block))[:, None]
    out[rows, keep] = block[rows, keep]
    return out


def _row_max_scaled(block: np.ndarray) -> np.ndarray:
    """Each row divided by its largest entry (rows with none positive left as they are)."""
    best = block.max(axis=1, keepdims=True, initial=0.0)
    return block / np.where(best > 0, best, 1.0)


def ease_sequence_neighbors(
    fg: FilmGram, lam: float, k: int, sequence_weight: float, popularity_exponent: float,
    matrix: np.ndarray | None = None,
) -> dict[int, list[tuple[int, float]]]:  # fmt: skip
    """Each film's top ``k`` of its EASE row (top EASE_TOP entries over the neighbours' watchers
    ** ``popularity_exponent``, row max 1) + ``sequence_weight`` x its sequence row (columns over
    sqrt(watchers), row max 1); the mean best neighbour scores 1. ``matrix``: EASE's, when
    already solved."""
    matrix = ease_weights(fg.gram, lam) if matrix is None else matrix
    watchers = np.maximum(fg.watchers(), 1.0).astype(np.float32)
    ease_scale = watchers**-popularity_exponent
    sequence_scale = watchers**-SEQUENCE_COLUMN_EXPONENT
    lists: dict[int, list[tuple[int, float]]] = {}
    for start in range(0, len(fg.films), _ROWS):
        stop = min(start + _ROWS, len(fg.films))
        block = np.maximum(matrix[start:stop], 0.0)
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0
        block = _row_max_scaled(_top_per_row(block, EASE_TOP) * ease_scale)
        if fg.sequence is not None and sequence_weight > 0:
            steps = fg.sequence[start:stop] * sequence_scale
            steps[np.arange(stop - start), np.arange(start, stop)] = 0.0
            block += np.float32(sequence_weight) * _row_max_scaled(np.maximum(steps, 0.0))
        lists.update(_rank_rows(block, fg.films, start, k))
    best = [v[0][1] for v in lists.values() if v]
    scale = float(np.mean(best)) if best else 1.0
    return {m: [(n, s / scale) for n, s in v] for m, v in lists.items()}


def cosine_neighbors(fg: FilmGram, k: int) -> dict[int, list[tuple[int, float]]]:
    """Each film's top-``k`` co-watch cosine neighbours ``G_ij / sqrt(G_ii G_jj)``."""
    return matrix_neighbors(cosine_matrix(fg), fg.films, k, rescale=False)


@dataclasses.dataclass(frozen=True)
class CollabModel:
    """Which collaborative model gives the co-watch neighbours, and its penalty."""

    model: str = "ease"
    ease_lambda: float = 500.0
    sequence_weight: float = 1.0
    popularity_exponent: float = 0.2

    def __post_init__(self) -> None:
        if self.model not in COLLAB_MODELS:
            raise ValueError(f"--cowatch_model must be one of {COLLAB_MODELS}, not {self.model!r}")
        if self.sequence_weight < 0 or self.popularity_exponent < 0:
            raise ValueError("--sequence_weight and --popularity_exponent must be >= 0")

    @property
    def blended(self) -> bool:
        """Whether the neighbour lists blend EASE with what comes next (and popularity)."""
        return self.model == "ease" and (self.sequence_weight > 0 or self.popularity_exponent > 0)

    def matrix(self, fg: FilmGram) -> np.ndarray:
        """This model's item-item matrix over the Gram's films (float32, zero diagonal)."""
        if self.model == "ease":
            return ease_weights(fg.gram, self.ease_lambda)
        return cosine_matrix(fg)

    def neighbors(
        self, fg: FilmGram, k: int, matrix: np.ndarray | None = None
    ) -> dict[int, list[tuple[int, float]]]:
        """Each film's top-``k`` neighbours by this model (``matrix``: :meth:`matrix`, when
        already computed)."""
        if self.blended:
            return ease_sequence_neighbors(fg, self.ease_lambda, k, self.sequence_weight,
                                           self.popularity_exponent, matrix)  # fmt: skip
        matrix = self.matrix(fg) if matrix is None else matrix
        return matrix_neighbors(matrix, fg.films, k, rescale=self.model == "ease")


def collab_neighbors(
    fg: FilmGram, model: str, k: int, lam: float
) -> dict[int, list[tuple[int, float]]]:
    """Each film's neighbours by the collaborative ``model`` (``ease`` or ``cosine``)."""
    return CollabModel(model, lam).neighbors(fg, k)
