"""Candidate scoring and neighbour ranking: pure functions checked by hand."""

from __future__ import annotations

import datetime

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from models.scoring import CandidateConfig
from models.scoring import rank_candidates
from models.scoring import recency_weight
from models.scoring import reference_time
from models.scoring import similarity_scores
from schemas import WatchEvent
from tests.conftest import local_pipeline
from tests.storage.test_history import BAD_HISTORY
from transforms.history import ReadWatchHistory
from transforms.neighbors import rank_neighbors

UTC = datetime.UTC
REF = datetime.datetime(2024, 1, 1, tzinfo=UTC)


def event(movie_id: int, rating: float = 5.0, days_ago: float = 0.0) -> WatchEvent:
    when = REF - datetime.timedelta(days=days_ago)
    return WatchEvent(user_id=1, movie_id=movie_id, rating=rating, watched_at=when)


def test_watched_films_are_excluded_and_scores_add_up():
    neighbors = {1: [(2, 0.9), (3, 0.5), (10, 0.4)], 2: [(1, 0.9), (3, 0.8)]}
    ranked = rank_candidates([event(1), event(2)], neighbors, CandidateConfig(top_k=5), REF)
    assert [m for m, _, _ in ranked] == [3, 10]
    assert ranked[0][1] == pytest.approx(0.5 + 0.8)
    assert ranked[0][2] == (2, 1)  # the larger contribution first
    assert ranked[1] == (10, pytest.approx(0.4), (1,))


def test_recency_decay_halves_each_half_life():
    config = CandidateConfig(half_life_days=30)
    neighbors = {1: [(5, 1.0)], 2: [(6, 1.0)]}
    ranked = dict(
        (m, s) for m, s, _ in rank_candidates([event(1, days_ago=0), event(2, days_ago=60)],
                                              neighbors, config, REF)
    )  # fmt: skip
    assert ranked[5] == pytest.approx(1.0)
    assert ranked[6] == pytest.approx(0.25)
    assert recency_weight(REF + datetime.timedelta(days=3), REF, 30) == 1.0


def test_rating_weight_and_floor():
    neighbors = {1: [(5, 1.0)], 2: [(6, 1.0)]}
    config = CandidateConfig(min_rating=3.0)
    ranked = rank_candidates([event(1, rating=2.5), event(2, rating=4.0)], neighbors, config, REF)
    assert [(m, round(s, 6)) for m, s, _ in ranked] == [(6, 0.8)]


def test_ties_are_broken_by_movie_id_and_top_k_is_respected():
    neighbors = {1: [(9, 0.5), (4, 0.5), (7, 0.5)]}
    ranked = rank_candidates([event(1)], neighbors, CandidateConfig(top_k=2), REF)
    assert [m for m, _, _ in ranked] == [4, 7]


def test_reference_time_is_the_end_of_the_run_date():
    assert reference_time(datetime.date(2024, 5, 17)) == datetime.datetime(2024, 5, 18, tzinfo=UTC)


def test_rank_neighbors_excludes_self_filters_genres_and_breaks_ties():
    ids = [5, 1, 3, 2, 4]
    scores = [1.0, 0.7, 0.7, 0.9, 0.1]
    assert rank_neighbors(5, ids, scores, k=3) == [(2, 0.9), (1, 0.7), (3, 0.7)]
    genres = {5: frozenset({"Drama"}), 1: frozenset({"Comedy"}), 2: frozenset({"Drama", "War"}),
              3: frozenset({"Drama"}), 4: frozenset()}  # fmt: skip
    assert rank_neighbors(5, ids, scores, k=3, genres=genres) == [(2, 0.9), (3, 0.7)]


def test_similarities_order_the_same_way():
    dots = np.array([0.9, 0.5, -0.2])
    assert list(similarity_scores(dots, "cosine")) == list(dots)
    l2 = similarity_scores(dots, "l2")
    assert list(np.argsort(-l2)) == [0, 1, 2]
    assert l2[0] == pytest.approx(-np.sqrt(0.2))


def test_read_watch_history_routes_and_counts_every_row(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(BAD_HISTORY)
    pipeline = local_pipeline()
    history = pipeline | ReadWatchHistory(str(path), "run")
    films = history.batches | "Films" >> beam.FlatMap(lambda b: b.movie_id.tolist())
    assert_that(films, equal_to([10, 20]), label="Events")
    reasons = history.dead_letter | "Reasons" >> beam.Map(lambda d: d.reason)
    expected = ["rating_not_finite"] * 2 + ["rating_out_of_range"] * 2 + [
        "timestamp_invalid"] * 2 + ["bad_user_id"] * 2 + ["bad_movie_id"] * 2 + ["bad_row"]
    assert_that(reasons, equal_to(expected), label="DeadLetters")
    result = pipeline.run()
    counters = result.metrics().query(MetricsFilter().with_namespace("watch_history"))["counters"]
    totals = {c.key.metric.name: c.committed for c in counters}
    assert totals["rows_read"] == 13 and totals["events"] == 2 and totals["dead_lettered"] == 11
    assert totals["dead_lettered_rating_out_of_range"] == 2
