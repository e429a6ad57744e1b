"""Candidate scoring and neighbour ranking: pure functions checked by hand."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from models.scoring import CandidateConfig
from models.scoring import rank_candidates
from models.scoring import recency_weight
from models.scoring import reference_time
from models.scoring import similarity_scores
from schemas import DeadLetter
from schemas import WatchEvent
from transforms.candidates import parse_ratings_csv
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


def test_ratings_csv_rows_and_bad_rows():
    text = "userId,movieId,rating,timestamp\n1,10,4.5,964982703\n1,x,3,1\n2,11,3.0,964982224\n"
    items = list(parse_ratings_csv(text, "run"))
    assert [type(i) for i in items] == [WatchEvent, DeadLetter, WatchEvent]
    assert items[0].watched_at == datetime.datetime.fromtimestamp(964982703, tz=UTC)
    assert items[1].line_number == 3 and items[1].stage == "watch_history"
    with pytest.raises(ValueError, match="header"):
        list(parse_ratings_csv("a,b\n1,2\n", "run"))


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
