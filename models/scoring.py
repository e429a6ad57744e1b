"""How a user's candidates are scored: neighbours of watched films, blended, and popularity.

score(user, film) = sum over the user's watched films w of
    neighbour score(w, film) x rating weight(w) x recency weight(w)
where a neighbour score blends co-watch and poster similarity (:func:`merge_neighbors`), the
recency weight halves every ``half_life_days`` of age and, with ``recency_events``, every that
many later watches of the user. With a popularity table the scores are divided by the user's
best score and ``popularity_weight`` x the film's popularity (watchers / the most watched film's)
is added; the most popular films the user has not watched fill any places left (the backfill).
Watched films are excluded; ties go to the more popular, then the lower id.

A film nobody has watched yet has no popularity of its own; :func:`estimated_popularity` gives it
the watchers its nearest posters (among films with history) had, so a new release can still be
ranked by how many people a poster like it draws.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

MAX_CONTRIBUTORS = 10
POPULARITY_NEIGHBOURS = 20
"""Posters whose watcher counts estimate a new film's popularity (:func:`estimated_popularity`)."""
SIMILARITIES = ("cosine", "dot", "l2")
SOURCE_COWATCH = "cowatch"
SOURCE_POSTER = "poster"
SOURCE_BOTH = "cowatch+poster"


@dataclasses.dataclass(frozen=True)
class CandidateConfig:
    """How candidates are scored (the blend weights come from the offline tuning)."""

    top_k: int = 100
    half_life_days: float = 365.0
    min_rating: float = 0.0
    model_version: str = ""
    recency_events: float = 0.0
    popularity_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.half_life_days <= 0:
            raise ValueError("--candidates_k must be >= 1 and --half_life_days > 0")
        if self.recency_events < 0 or self.popularity_weight < 0:
            raise ValueError("recency_events and popularity_weight must be >= 0")


@dataclasses.dataclass(frozen=True)
class Popularity:
    """Films by number of watchers: a score in 0..1 each, and the most watched first."""

    score: Mapping[int, float]
    ranked: tuple[int, ...]

    @classmethod
    def from_counts(cls, counts: Mapping[int, int], films: Iterable[int] | None = None):
        """Popularity of watcher counts, limited to ``films`` when given (ties by lower id)."""
        allowed = None if films is None else set(films)
        kept = {m: c for m, c in counts.items() if allowed is None or m in allowed}
        top = max(kept.values(), default=1)
        ranked = tuple(m for m, _ in sorted(kept.items(), key=lambda kv: (-kv[1], kv[0])))
        return cls(score={m: c / top for m, c in kept.items()}, ranked=ranked)

    @classmethod
    def with_estimates(
        cls, counts: Mapping[int, float], new_films: Mapping[int, Sequence[tuple]]
    ) -> Popularity:
        """Popularity of watcher counts, and of films nobody watched yet (film -> its poster
        neighbours) the estimate of :func:`estimated_popularity`."""
        return cls.from_counts({**counts, **estimated_popularity(counts, new_films, new_films)})


def estimated_popularity(
    counts: Mapping[int, float],
    neighbours: Mapping[int, Sequence[tuple]],
    films: Iterable[int],
    k: int = POPULARITY_NEIGHBOURS,
) -> dict[int, float]:
    """Watchers each of ``films`` can expect from its poster: of its ``k`` nearest neighbours that
    have a count, the geometric mean of (1 + watchers), minus 1. A film with no such neighbour
    gets 0. ``neighbours`` should list films with history only (a new film's own count is 0).
    """
    out = {}
    for film in films:
        found = [counts[n[0]] for n in neighbours.get(film, ()) if n[0] in counts][:k]
        out[int(film)] = float(np.expm1(np.mean(np.log1p(found)))) if found else 0.0
    return out


def rating_weight(rating: float, min_rating: float) -> float:
    """How much a watch counts by its rating: rating / 5, and 0 below ``min_rating``."""
    return 0.0 if rating < min_rating else rating / 5.0


def recency_weight(
    watched_at: datetime.datetime, reference: datetime.datetime, half_life_days: float
) -> float:
    """0.5 ** (age in days / half-life); watches after the reference count fully."""
    age_days = max(0.0, (reference - watched_at).total_seconds() / 86_400.0)
    return 0.5 ** (age_days / half_life_days)


def reference_time(run_date: datetime.date) -> datetime.datetime:
    """The instant a run date's recency decay is measured from: the end of that day, UTC."""
    start = datetime.datetime.combine(run_date, datetime.time(), tzinfo=datetime.UTC)
    return start + datetime.timedelta(days=1)


def similarity_scores(dot: np.ndarray, similarity: str) -> np.ndarray:
    """Index scores (dot products of unit vectors) as the chosen similarity, higher is closer.

    cosine and dot are the same on L2-normalised vectors; l2 is the negated Euclidean distance.
    """
    if similarity == "l2":
        return -np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.asarray(dot)))
    return dot


def poster_similarity(dot: np.ndarray | float, similarity: str) -> np.ndarray | float:
    """A poster score to blend: :func:`similarity_scores`, l2 shifted to ``1 - d / 2`` (0..1)."""
    scores = similarity_scores(dot, similarity)
    return 1.0 + scores / 2.0 if similarity == "l2" else scores


def merge_neighbors(
    cowatch: Sequence[tuple[int, float]],
    poster: Sequence[tuple[int, float]],
    poster_weight: float,
    k: int,
) -> list[tuple[int, float, str]]:
    """A film's hybrid neighbours: co-watch score + poster_weight x poster score, with sources.

    A film without co-watch neighbours (nobody watched it yet) keeps its poster neighbours.
    """
    scores: dict[int, float] = collections.defaultdict(float)
    sources: dict[int, set[str]] = collections.defaultdict(set)
    for nid, score in cowatch:
        scores[nid] += score
        sources[nid].add(SOURCE_COWATCH)
    weight = poster_weight if cowatch else max(poster_weight, 1.0)
    if weight > 0:
        for nid, score in poster:
            scores[nid] += weight * score
            sources[nid].add(SOURCE_POSTER)
    ranked = sorted(scores.items(), key=lambda kv: (-round(kv[1], 9), kv[0]))[:k]
    return [(nid, score, _source(sources[nid])) for nid, score in ranked]


def _source(found: set[str]) -> str:
    if len(found) == 2:
        return SOURCE_BOTH
    return next(iter(found))


def _event_weights(events, config: CandidateConfig, reference: datetime.datetime) -> list:
    """(event, weight) of a user's events: rating x age decay x position decay."""
    latest_first = sorted(events, key=lambda e: (e.watched_at, e.movie_id), reverse=True)
    weighted = []
    for position, event in enumerate(latest_first):
        weight = rating_weight(event.rating, config.min_rating) * recency_weight(
            event.watched_at, reference, config.half_life_days
        )
        if config.recency_events:
            weight *= 0.5 ** (position / config.recency_events)
        weighted.append((event, weight))
    return sorted(weighted, key=lambda ew: (ew[0].movie_id, ew[0].watched_at))


def rank_candidates(
    events: Sequence,
    neighbors: Mapping[int, Sequence[tuple]],
    config: CandidateConfig,
    reference: datetime.datetime,
    popularity: Popularity | None = None,
) -> list[tuple[int, float, tuple[int, ...]]]:
    """A user's top-k (movie id, score, contributing watched films), best first."""
    watched = {e.movie_id for e in events}
    scores: dict[int, float] = collections.defaultdict(float)
    parts: dict[int, dict[int, float]] = collections.defaultdict(dict)
    for event, weight in _event_weights(events, config, reference):
        if weight == 0.0:
            continue
        for item in neighbors.get(event.movie_id, ()):
            nid, similarity = item[0], item[1]
            if nid in watched:
                continue
            contribution = similarity * weight
            scores[nid] += contribution
            parts[nid][event.movie_id] = parts[nid].get(event.movie_id, 0.0) + contribution
    pop = popularity.score if popularity else {}
    if popularity is not None:
        scores = _with_popularity(scores, popularity, watched, config)
    # Scores are rounded to 1e-9 so that float noise cannot reorder ties between runs.
    rounded = {movie_id: round(score, 9) for movie_id, score in scores.items()}
    ranked = sorted(rounded.items(), key=lambda kv: (-kv[1], -pop.get(kv[0], 0.0), kv[0]))
    out = []
    for movie_id, score in ranked[: config.top_k]:
        contributors = sorted(parts[movie_id].items(), key=lambda kv: (-kv[1], kv[0]))
        out.append((movie_id, score, tuple(m for m, _ in contributors[:MAX_CONTRIBUTORS])))
    return out


def _with_popularity(
    scores: dict[int, float], popularity: Popularity, watched: set[int], config: CandidateConfig
) -> dict[int, float]:
    """Scores over the user's best, plus weighted popularity, with popular films as backfill."""
    best = max(scores.values(), default=0.0)
    blended = {m: (s / best if best > 0 else 0.0) for m, s in scores.items()}
    backfill = [m for m in popularity.ranked[: config.top_k + len(watched)] if m not in watched]
    for movie_id in backfill[: config.top_k]:
        blended.setdefault(movie_id, 0.0)
    weight = config.popularity_weight
    return {m: s + weight * popularity.score.get(m, 0.0) for m, s in blended.items()}
