"""Nearest-neighbour lists for every film, from a ScaNN index loaded once per worker.

``FindNeighbors`` spreads (movie id, vector) rows across workers; each worker loads the index in
``setup()`` and queries in batches. Each film gets its ``k`` best neighbours (itself excluded,
optionally only films sharing a genre), scored by the chosen similarity, ties broken by the lower
neighbour id. The published neighbour table keeps the top 10; candidate generation uses more.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

import apache_beam as beam
import numpy as np

from models.scann_index import PosterIndex
from models.scoring import SIMILARITIES
from models.scoring import SOURCE_POSTER
from models.scoring import merge_neighbors
from models.scoring import poster_similarity
from models.scoring import similarity_scores
from monitoring import progress
from schemas import NeighborRow
from storage.files import read_parquet_table

PUBLISHED_K = 10
PROGRESS_TASK = "films searched"


@dataclasses.dataclass(frozen=True)
class NeighborConfig:
    """How neighbour lists are built."""

    index_uri: str
    k: int = 50
    similarity: str = "cosine"
    same_genre: bool = False
    overfetch: int = 4
    batch_size: int = 256
    shared_posters: Mapping[int, int] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"--similarity must be one of {SIMILARITIES}, not {self.similarity!r}")
        if self.k < PUBLISHED_K:
            raise ValueError(f"--neighbors_k must be at least {PUBLISHED_K}")


def largest_group(shared_posters: Mapping[int, int]) -> int:
    """How many films share the most-shared poster (1 when every film has its own)."""
    sizes: dict[int, int] = {}
    for group in shared_posters.values():
        sizes[group] = sizes.get(group, 0) + 1
    return max(sizes.values(), default=1)


def drop_shared_posters(
    movie_and_neighbors: tuple[int, list], shared_posters: Mapping[int, int]
) -> tuple[int, list]:
    """A film's list without the films that share its poster (they are its own duplicates)."""
    movie_id, ranked = movie_and_neighbors
    group = shared_posters.get(movie_id, movie_id)
    return movie_id, [item for item in ranked if shared_posters.get(item[0], item[0]) != group]


def rank_neighbors(
    movie_id: int,
    candidate_ids: Sequence[int],
    scores: Sequence[float],
    k: int,
    genres: Mapping[int, frozenset[str]] | None = None,
    shared_posters: Mapping[int, int] | None = None,
) -> list[tuple[int, float]]:
    """The film's top-k (neighbour id, score): itself and the films sharing its poster excluded,
    genre filter, ties by id."""
    own = genres.get(movie_id, frozenset()) if genres is not None else None
    shared = shared_posters or {}
    group = shared.get(movie_id, movie_id)
    pairs = []
    for nid, score in zip(candidate_ids, scores, strict=True):
        nid = int(nid)
        if nid == movie_id or nid < 0 or shared.get(nid, nid) == group:
            continue
        if own is not None and not own & genres.get(nid, frozenset()):
            continue
        pairs.append((nid, float(score)))
    pairs.sort(key=lambda p: (-p[1], p[0]))
    return pairs[:k]


class _QueryIndexFn(beam.DoFn):
    """Loads the index once per DoFn instance and answers batches of film vectors."""

    def __init__(self, config: NeighborConfig) -> None:
        self._config = config
        self._films = beam.metrics.Metrics.counter("neighbors", "films_queried")
        self._short = beam.metrics.Metrics.counter("neighbors", "films_with_fewer_than_k")

    def setup(self) -> None:
        self._index = PosterIndex.load(self._config.index_uri)
        progress.set_total(PROGRESS_TASK, len(self._index.ids))

    def process(self, batch: list[tuple[int, np.ndarray]], genres=None) -> Iterator:
        config = self._config
        extra = largest_group(config.shared_posters) - 1
        fetch = min(len(self._index.ids), config.k + 1 + extra)
        if config.same_genre:
            fetch = min(len(self._index.ids), config.k * config.overfetch + 1 + extra)
        ids = [movie_id for movie_id, _ in batch]
        vectors = np.stack([vector for _, vector in batch]).astype(np.float32)
        found, dots = self._index.search(vectors, fetch)
        scores = similarity_scores(dots, config.similarity)
        for movie_id, row_ids, row_scores in zip(ids, found, scores, strict=True):
            ranked = rank_neighbors(
                movie_id, row_ids, row_scores, config.k, genres, config.shared_posters
            )
            self._films.inc()
            if len(ranked) < config.k:
                self._short.inc()
            yield movie_id, ranked
        progress.advance(PROGRESS_TASK, len(batch))


class FindNeighbors(beam.PTransform):
    """(movie id, vector) -> (movie id, [(neighbour id, score), ...] best first)."""

    def __init__(self, config: NeighborConfig, genres: beam.PCollection | None = None) -> None:
        super().__init__()
        self._config = config
        self._genres = genres

    def expand(self, vectors: beam.PCollection) -> beam.PCollection:
        side = {}
        if self._config.same_genre:
            if self._genres is None:
                raise ValueError("same-genre neighbours need the films' genres (--posters)")
            side["genres"] = beam.pvalue.AsDict(self._genres)
        return (
            vectors
            | "Spread" >> beam.Reshuffle()
            | "Batch"
            >> beam.BatchElements(
                min_batch_size=self._config.batch_size, max_batch_size=self._config.batch_size
            )
            | "QueryIndex" >> beam.ParDo(_QueryIndexFn(self._config), **side)
        )


def neighbor_rows(
    movie_and_neighbors: tuple[int, list[tuple[int, float]]],
    model_version: str,
    run_date: datetime.date,
) -> Iterator[NeighborRow]:
    """The published rows (top 10) of one film's neighbour list ((id, score[, source]) items)."""
    movie_id, ranked = movie_and_neighbors
    for rank, item in enumerate(ranked[:PUBLISHED_K], start=1):
        yield NeighborRow(
            movie_id=movie_id,
            rank=rank,
            neighbor_id=item[0],
            score=item[1],
            source=item[2] if len(item) > 2 else SOURCE_POSTER,
            model_version=model_version,
            run_date=run_date,
        )


class _MergeFn(beam.DoFn):
    """One film's co-watch and poster lists -> its hybrid list (with sources), counted."""

    def __init__(self, poster_weight: float, similarity: str, k: int) -> None:
        self._poster_weight = poster_weight
        self._similarity = similarity
        self._k = k
        self._films = {
            name: beam.metrics.Metrics.counter("neighbors", f"films_{name}")
            for name in ("with_cowatch", "poster_only", "cowatch_only")
        }

    def process(self, joined: tuple[int, dict]) -> Iterator:
        movie_id, groups = joined
        cowatch = next(iter(groups["cowatch"]), [])
        dots = next(iter(groups["poster"]), [])
        scores = poster_similarity(np.array([d for _, d in dots], np.float64), self._similarity)
        poster = list(zip([nid for nid, _ in dots], np.asarray(scores).tolist(), strict=True))
        if cowatch:
            self._films["with_cowatch" if poster else "cowatch_only"].inc()
        else:
            self._films["poster_only"].inc()
        yield movie_id, merge_neighbors(cowatch, poster, self._poster_weight, self._k)


class MergeNeighbors(beam.PTransform):
    """(co-watch lists, poster dot lists) -> every film's hybrid list of (id, score, source).

    A film with watch history gets co-watch neighbours plus ``poster_weight`` x poster
    neighbours; a film nobody watched yet gets its poster neighbours alone.
    """

    def __init__(self, poster_weight: float, similarity: str, k: int) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
        self._args = (poster_weight, similarity, k)

    def expand(self, lists: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        cowatch, poster = lists
        return (
            {"cowatch": cowatch, "poster": poster}
            | "JoinLists" >> beam.CoGroupByKey()
            | "Merge" >> beam.ParDo(_MergeFn(*self._args))
        )


def read_lists(path_glob: str) -> Iterator[tuple[int, list[tuple[int, float]]]]:
    """(movie id, [(neighbour id, score), ...] best first) of a neighbour table's Parquet files."""
    c = NeighborRow.c
    table = read_parquet_table(path_glob, NeighborRow)
    movie = table.column(c.movie_id).to_numpy()
    rank = table.column(c.rank).to_numpy()
    neighbour = table.column(c.neighbor_id).to_numpy()
    score = table.column(c.score).to_numpy()
    order = np.lexsort((rank, movie))
    movie, neighbour, score = movie[order], neighbour[order], score[order]
    starts = np.flatnonzero(np.r_[True, movie[1:] != movie[:-1]]) if len(movie) else []
    ends = np.r_[starts[1:], len(movie)] if len(movie) else []
    for start, end in zip(starts, ends, strict=True):
        yield int(movie[start]), list(zip(neighbour[start:end].tolist(),
                                          score[start:end].tolist(), strict=True))  # fmt: skip
