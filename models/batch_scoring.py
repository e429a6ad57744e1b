"""Candidates for a batch of complete users at once: :func:`models.scoring.rank_candidates`
over NumPy columns and one sparse product, the same ranking for every user.

The neighbour lists of every film sit in one sparse films x films matrix
(:class:`CandidateModel`, film-sized); a batch's events become a sparse users x films matrix of
watch weights (rating x age decay x position decay, repeats summed), and one product gives every
user's scores. Then, user by user over small arrays, watched films are dropped, the popularity
blend and backfill applied, the top ``top_k`` kept (ties to the more popular, then the lower id)
and each candidate's contributing watched films found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from models.scoring import MAX_CONTRIBUTORS
from models.scoring import CandidateConfig
from models.scoring import Popularity
from storage.history import EventBatch

_DAY = 86_400.0


@dataclasses.dataclass(frozen=True)
class CandidateModel:
    """Every film's neighbour list as one sparse matrix over ``films`` (sorted ids), and the
    films' popularity (a score each, and the most popular first, as positions)."""

    films: np.ndarray
    neighbours: sp.csr_matrix
    has_list: np.ndarray
    popularity: np.ndarray | None
    ranked: np.ndarray | None

    @classmethod
    def build(
        cls, lists: Iterable[tuple[int, np.ndarray, np.ndarray]],
        popularity: Popularity | None = None,
    ) -> CandidateModel:  # fmt: skip
        """From (film, neighbour ids, scores) lists, and the popularity when it blends in."""
        lists = sorted(lists, key=lambda item: item[0])
        owners = np.array([m for m, _, _ in lists], dtype=np.int64)
        parts = [owners] + [np.asarray(ids, np.int64) for _, ids, _ in lists]
        if popularity is not None:
            parts.append(np.fromiter(popularity.score, np.int64, len(popularity.score)))
        films = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        rows = np.repeat(np.searchsorted(films, owners), [len(ids) for _, ids, _ in lists])
        cols = np.searchsorted(films, np.concatenate(
            [np.asarray(ids, np.int64) for _, ids, _ in lists] or [np.zeros(0, np.int64)]))
        data = np.concatenate(
            [np.asarray(s, np.float64) for _, _, s in lists] or [np.zeros(0)])  # fmt: skip
        matrix = sp.csr_matrix((data, (rows, cols)), shape=(len(films), len(films)))
        has_list = np.zeros(len(films), bool)
        has_list[np.searchsorted(films, owners)] = True
        score = ranked = None
        if popularity is not None:
            score = np.zeros(len(films))
            for film, value in popularity.score.items():
                score[np.searchsorted(films, film)] = value
            ranked = np.searchsorted(films, np.array(popularity.ranked, dtype=np.int64))
        return cls(films, matrix, has_list, score, ranked)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Each id's position among ``films``, -1 where it is not one of them."""
        pos = np.searchsorted(self.films, ids)
        pos = np.minimum(pos, max(len(self.films) - 1, 0))
        found = (self.films[pos] == ids) if len(self.films) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)


@dataclasses.dataclass(frozen=True)
class RankedBatch:
    """The candidate rows of a batch of users, best first per user, as columns."""

    user_id: np.ndarray
    rank: np.ndarray
    movie_id: np.ndarray
    score: np.ndarray
    contributor_counts: np.ndarray
    """How many contributing films each row has (0: a popularity back-fill)."""
    contributor_ids: np.ndarray
    """Every row's contributing films, best first, one row after another."""
    users: int
    events: int
    events_without_list: int
    backfill_rows: int

    @property
    def contributors(self) -> list[np.ndarray]:
        """Each row's contributing films, best first."""
        return np.split(self.contributor_ids, np.cumsum(self.contributor_counts)[:-1])


def event_weights(
    batch: EventBatch, config: CandidateConfig, reference: float | np.ndarray
) -> np.ndarray:
    """Each event's weight: rating / 5 (0 below ``min_rating``) x 0.5 ** (age / half-life) x
    0.5 ** (position among the user's watches, latest first / ``recency_events``). The batch
    must be sorted by user, time, film."""
    rating = batch.rating.astype(np.float64)
    weight = np.where(rating < config.min_rating, 0.0, rating / 5.0)
    age = np.maximum(0.0, (reference - batch.watched_at.astype(np.float64)) / _DAY)
    weight = weight * 0.5 ** (age / config.half_life_days)
    if config.recency_events:
        starts = np.flatnonzero(np.r_[True, batch.user_id[1:] != batch.user_id[:-1]])
        ends = np.r_[starts[1:], len(batch)]
        last = np.repeat(ends - 1, ends - starts)
        weight = weight * 0.5 ** ((last - np.arange(len(batch))) / config.recency_events)
    return weight


def rank_batch(
    batch: EventBatch, model: CandidateModel, config: CandidateConfig,
    reference: float | np.ndarray, contributors: bool = True,
) -> RankedBatch:  # fmt: skip
    """Every user's top-k candidates (the batch holds complete users sorted by user, time,
    film; ``reference``: Unix seconds the age decay is measured from, one for all or one per
    event; ``contributors=False`` leaves the contributing films out)."""
    users, user_row = np.unique(batch.user_id, return_inverse=True)
    pos = model.positions(batch.movie_id)
    weight = event_weights(batch, config, reference)
    listed = pos >= 0
    listed[listed] = model.has_list[pos[listed]]
    use = listed & (weight != 0.0)
    n = len(model.films)
    weights = sp.csr_matrix((weight[use], (user_row[use], pos[use])), shape=(len(users), n))
    scores = (weights @ model.neighbours).tocsr()
    known = pos >= 0
    watched_rows = sp.csr_matrix(
        (np.ones(int(known.sum()), bool), (user_row[known], pos[known])), shape=(len(users), n)
    )
    distinct = np.unique(np.stack([user_row, batch.movie_id], axis=1), axis=0)
    watched_count = np.bincount(distinct[:, 0], minlength=len(users))
    slot = np.full(n, -1)
    out_user, out_rank, out_movie, out_score, counts, found = [], [], [], [], [], []
    pop = model.popularity
    for u in range(len(users)):
        lo, hi = scores.indptr[u], scores.indptr[u + 1]
        cand, value = scores.indices[lo:hi], scores.data[lo:hi]
        seen = watched_rows.indices[watched_rows.indptr[u] : watched_rows.indptr[u + 1]]
        keep = ~np.isin(cand, seen)
        cand, value = cand[keep], value[keep]
        if pop is not None:
            best = value.max(initial=0.0)
            value = value / best if best > 0 else np.zeros_like(value)
            limit = config.top_k + int(watched_count[u])
            fill = model.ranked[:limit]
            fill = fill[~np.isin(fill, seen)][: config.top_k]
            extra = fill[~np.isin(fill, cand)]
            cand = np.concatenate([cand, extra])
            value = np.concatenate([value, np.zeros(len(extra))])
            value = value + config.popularity_weight * pop[cand]
            ties = -pop[cand]
        else:
            ties = np.zeros(len(cand))
        rounded = np.round(value, 9)
        if 0 < config.top_k < len(rounded):  # sort only what can reach the top k (ties kept)
            kth = np.partition(rounded, len(rounded) - config.top_k)[len(rounded) - config.top_k]
            near = np.flatnonzero(rounded >= kth)
            cand, rounded, ties = cand[near], rounded[near], ties[near]
        order = np.lexsort((model.films[cand], ties, -rounded))[: config.top_k]
        chosen = cand[order]
        out_user.append(np.full(len(chosen), users[u]))
        out_rank.append(np.arange(1, len(chosen) + 1))
        out_movie.append(model.films[chosen])
        out_score.append(rounded[order])
        if contributors:
            count, ids = _contributors(weights, model, u, chosen, slot)
            counts.append(count)
            found.append(ids)
    return RankedBatch(
        user_id=np.concatenate(out_user or [np.zeros(0, np.int64)]),
        rank=np.concatenate(out_rank or [np.zeros(0, np.int64)]),
        movie_id=np.concatenate(out_movie or [np.zeros(0, np.int64)]),
        score=np.concatenate(out_score or [np.zeros(0)]),
        contributor_counts=np.concatenate(counts or [np.zeros(0, np.int64)]),
        contributor_ids=np.concatenate(found or [np.zeros(0, np.int64)]),
        users=len(users), events=len(batch), events_without_list=int((~listed).sum()),
        backfill_rows=sum(int((c == 0).sum()) for c in counts),
    )  # fmt: skip


def _contributors(
    weights: sp.csr_matrix, model: CandidateModel, user: int, chosen: np.ndarray,
    slot: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each chosen film's watched films by contribution (weight x neighbour score), best first,
    at most MAX_CONTRIBUTORS; ties by lower id: (count per chosen film, the films one chosen
    film after another). ``slot``: a films-long array of -1, left so."""
    lo, hi = weights.indptr[user], weights.indptr[user + 1]
    films, film_weight = weights.indices[lo:hi], weights.data[lo:hi]
    matrix = model.neighbours
    starts, ends = matrix.indptr[films], matrix.indptr[films + 1]
    lengths = ends - starts
    index = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(
        lengths.sum())  # fmt: skip
    cols = matrix.indices[index]
    source = np.repeat(films, lengths)
    part = np.repeat(film_weight, lengths) * matrix.data[index]
    slot[chosen] = np.arange(len(chosen))
    inside = slot[cols] >= 0
    cols, source, part = cols[inside], source[inside], part[inside]
    order = np.lexsort((model.films[source], -part, slot[cols]))
    cols, source = cols[order], source[order]
    where = slot[cols]
    slot[chosen] = -1
    first = np.r_[True, cols[1:] != cols[:-1]] if len(cols) else np.zeros(0, bool)
    position = np.arange(len(cols))
    rank = position - np.maximum.accumulate(np.where(first, position, 0))
    keep = rank < MAX_CONTRIBUTORS
    return np.bincount(where[keep], minlength=len(chosen)), model.films[source[keep]]


def lists_matrix(lists: Mapping[int, Sequence[tuple]], films: np.ndarray) -> sp.csr_matrix:
    """Neighbour lists ((id, score, ...) items) as a sparse films x films matrix over the
    sorted ``films`` (every id in the lists must be one of them)."""
    owners = [m for m in lists if lists[m]]
    sizes = [len(lists[m]) for m in owners]
    rows = np.repeat(np.searchsorted(films, np.array(owners, dtype=np.int64)), sizes)
    cols = np.searchsorted(films, np.array([n[0] for m in owners for n in lists[m]], np.int64))
    data = np.array([n[1] for m in owners for n in lists[m]], dtype=np.float64)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(films), len(films)))


def top_k_rows(matrix: sp.csr_matrix, films: np.ndarray, k: int) -> sp.csr_matrix:
    """Each row's ``k`` largest entries (scores rounded to 1e-9 first, ties by lower id)."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    keep = np.zeros(matrix.nnz, bool)
    for row in range(matrix.shape[0]):
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
            continue
        values = np.round(matrix.data[lo:hi], 9)
        order = np.lexsort((films[matrix.indices[lo:hi]], -values))[:k]
        keep[lo + order] = True
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))[keep]
    return sp.csr_matrix((matrix.data[keep], (rows, matrix.indices[keep])), shape=matrix.shape)


@dataclasses.dataclass(frozen=True)
class MergeInputs:
    """Co-watch and poster lists as sparse matrices over every film they name, prepared once
    for :func:`merged_model` to blend at any poster weight."""

    films: np.ndarray
    cowatch: sp.coo_matrix
    poster: sp.coo_matrix
    has_cowatch: np.ndarray
    has_list: np.ndarray
    popularity: Popularity | None

    @classmethod
    def of(
        cls, cowatch: Mapping[int, Sequence[tuple]], poster: Mapping[int, Sequence[tuple]],
        popularity: Popularity | None = None,
    ) -> MergeInputs:  # fmt: skip
        ids = [np.array(list(d), dtype=np.int64) for d in (cowatch, poster)]
        ids += [np.array([n[0] for v in d.values() for n in v], np.int64)
                for d in (cowatch, poster)]  # fmt: skip
        if popularity is not None:
            ids.append(np.fromiter(popularity.score, np.int64, len(popularity.score)))
        films = np.unique(np.concatenate(ids))
        return cls(
            films, lists_matrix(cowatch, films).tocoo(), lists_matrix(poster, films).tocoo(),
            np.isin(films, [m for m, v in cowatch.items() if v]),
            np.isin(films, np.concatenate(ids[:2])), popularity,
        )  # fmt: skip


def merged_model(
    cowatch: Mapping[int, Sequence[tuple]] | MergeInputs, poster: Mapping[int, Sequence[tuple]],
    poster_weight: float, k: int, popularity: Popularity | None = None,
    poster_score: Callable[[np.ndarray], np.ndarray] | None = None,
) -> CandidateModel:  # fmt: skip
    """The model of :func:`models.scoring.merge_neighbors` applied to every film at once:
    co-watch + ``poster_weight`` x poster scores (a film without co-watch neighbours keeps its
    poster neighbours, weighted at least 1), each film's top ``k``; ``poster_score`` turns the
    poster lists' values into the scores that blend (applied to all of them at once).
    ``cowatch`` may be :class:`MergeInputs` already prepared (``poster`` and ``popularity`` are
    then its own and not read)."""
    inputs = cowatch if isinstance(cowatch, MergeInputs) else MergeInputs.of(
        cowatch, poster, popularity)  # fmt: skip
    films, c, p = inputs.films, inputs.cowatch, inputs.poster
    weight = np.where(inputs.has_cowatch, poster_weight, max(poster_weight, 1.0))[p.row]
    used = weight > 0  # a zero weight adds no poster neighbour (not even with score 0)
    rows = np.concatenate([c.row, p.row[used]])
    cols = np.concatenate([c.col, p.col[used]])
    values = p.data[used] if poster_score is None else poster_score(p.data[used])
    data = np.concatenate([c.data, weight[used] * values])
    summed = sp.csr_matrix((data, (rows, cols)), shape=c.shape)  # duplicates summed, zeros kept
    merged = top_k_rows(summed, films, k)
    popularity = inputs.popularity
    base = CandidateModel.build([], popularity) if popularity is not None else None
    score = ranked = None
    if base is not None:
        score = np.zeros(len(films))
        score[np.searchsorted(films, base.films)] = base.popularity
        ranked = np.searchsorted(films, base.films[base.ranked])
    return CandidateModel(films, merged, inputs.has_list, score, ranked)


def popularity_of(
    counts: Mapping[int, float], lists: Mapping[int, Sequence[tuple]]
) -> Popularity:
    """The popularity that blends in: watcher counts of the films with a neighbour list, and
    for a listed film nobody watched yet the estimate from its neighbours."""
    known = {m: counts[m] for m in lists if counts.get(m)}
    new = {m: v for m, v in lists.items() if not counts.get(m)}
    return Popularity.with_estimates(known, new)
