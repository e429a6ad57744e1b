"""Per-user candidates: the films near (by co-watch and poster) the ones the user watched.

The scoring is :func:`models.scoring.rank_candidates`, computed for a bucket of complete users at
once (:func:`models.batch_scoring.rank_batch`): per watched film, its (hybrid) neighbour scores
weighted by rating and recency, summed; with a popularity weight or backfill, the films'
popularity among the history's watchers (films with a neighbour list only) blends in and fills
the places left; a film nobody has watched yet counts the watchers its nearest posters drew
(:func:`models.scoring.estimated_popularity`). The neighbour lists reach the users as one
film-sized side input (no list is copied per event); events of films without a list are counted
and reported, never silently dropped. Each bucket's candidates are one Arrow table, written as
one Parquet shard of the warehouse table.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from models.batch_scoring import CandidateModel
from models.batch_scoring import RankedBatch
from models.batch_scoring import popularity_of
from models.batch_scoring import rank_batch
from models.scoring import CandidateConfig
from models.scoring import reference_time
from monitoring import progress
from schemas import CandidateRow
from storage.history import EventBatch
from transforms.history import SumCountsFn
from transforms.history import film_watchers

_COUNTERS = ("users", "candidate_rows", "popularity_only_rows", "events",
             "events_without_vector")  # fmt: skip


def _list_arrays(item: tuple[int, Sequence[tuple]]) -> tuple[int, np.ndarray, np.ndarray]:
    movie_id, ranked = item
    return (
        movie_id,
        np.array([n[0] for n in ranked], dtype=np.int64),
        np.array([n[1] for n in ranked], dtype=np.float64),
    )


def _model(lists: list, counts: tuple | None) -> CandidateModel:
    popularity = None
    if counts is not None:
        watchers = dict(zip(counts[0].tolist(), counts[1].tolist(), strict=True))
        by_film = {m: list(zip(ids.tolist(), scores.tolist(), strict=True))
                   for m, ids, scores in lists}  # fmt: skip
        popularity = popularity_of(watchers, by_film)
    return CandidateModel.build(lists, popularity)


def candidate_table(ranked: RankedBatch, config: CandidateConfig, run_date: datetime.date):
    """The candidate rows of a ranked batch as an Arrow table of the candidates schema."""
    c = CandidateRow.c
    return CandidateRow.arrow_of_columns({
        c.user_id: ranked.user_id, c.rank: ranked.rank, c.movie_id: ranked.movie_id,
        c.score: ranked.score, c.model_version: config.model_version, c.run_date: run_date,
        c.contributing_movie_ids: pa.ListArray.from_arrays(
            np.r_[0, np.cumsum(ranked.contributor_counts)], ranked.contributor_ids),
    }, len(ranked.user_id))  # fmt: skip


class _RankBucketFn(beam.DoFn):
    """A bucket of complete users -> (bucket, Arrow table of their candidates), counted."""

    def __init__(self, config: CandidateConfig, run_date: datetime.date) -> None:
        self._config = config
        self._run_date = run_date
        self._reference = reference_time(run_date).timestamp()
        self._counters = {n: beam.metrics.Metrics.counter("candidates", n) for n in _COUNTERS}

    def process(self, keyed: tuple[int, EventBatch], model: CandidateModel) -> Iterator:
        bucket, batch = keyed
        ranked = rank_batch(batch, model, self._config, self._reference)
        for name, value in (
            ("users", ranked.users), ("candidate_rows", len(ranked.user_id)),
            ("popularity_only_rows", ranked.backfill_rows), ("events", ranked.events),
            ("events_without_vector", ranked.events_without_list),
        ):  # fmt: skip
            self._counters[name].inc(value)
        progress.advance("users ranked", ranked.users)
        yield bucket, candidate_table(ranked, self._config, self._run_date)


class BuildCandidates(beam.PTransform):
    """((bucket, complete users), neighbour lists) -> (bucket, Arrow table of CandidateRow).

    With ``use_popularity`` the films' watcher counts (films with a neighbour list only; a film
    without watchers has its poster neighbours' estimate) blend into the scores and back-fill
    short lists (see :mod:`models.scoring`).
    """

    def __init__(
        self, config: CandidateConfig, run_date: datetime.date, use_popularity: bool = False
    ) -> None:
        super().__init__()
        self._config = config
        self._run_date = run_date
        self._use_popularity = use_popularity

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]):
        users, neighbor_lists = inputs
        lists = (
            neighbor_lists
            | "ListArrays" >> beam.Map(_list_arrays)
            | "CollectLists" >> beam.combiners.ToList()
        )
        counts = None
        if self._use_popularity:
            counts = beam.pvalue.AsSingleton(
                users
                | "FilmWatchers" >> beam.Map(film_watchers)
                | "SumWatchers" >> beam.CombineGlobally(SumCountsFn())
            )
        model = lists | "CandidateModel" >> beam.Map(_model, counts)
        return users | "RankBuckets" >> beam.ParDo(
            _RankBucketFn(self._config, self._run_date), beam.pvalue.AsSingleton(model)
        )
