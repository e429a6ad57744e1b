"""Hybrid scoring: neighbour sources, position decay, popularity blend and backfill, tuning;
popularity estimated from posters for films nobody watched, tuned on visible films only."""

from __future__ import annotations

import dataclasses
import datetime

import numpy as np
import pytest

from models import blend as blend_lib
from models import candidate_eval as ev
from models import offline_eval
from models.cold_start import Holdout
from models.scoring import SOURCE_BOTH
from models.scoring import SOURCE_COWATCH
from models.scoring import SOURCE_POSTER
from models.scoring import CandidateConfig
from models.scoring import Popularity
from models.scoring import estimated_popularity
from models.scoring import merge_neighbors
from models.scoring import poster_similarity
from models.scoring import rank_candidates
from schemas import WatchEvent

REF = datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)


def event(movie: int, minutes_ago: int, user: int = 1, rating: float = 5.0) -> WatchEvent:
    return WatchEvent(user_id=user, movie_id=movie, rating=rating,
                      watched_at=REF - datetime.timedelta(minutes=minutes_ago))  # fmt: skip


def test_merge_neighbors_records_sources_and_keeps_poster_only_films():
    merged = merge_neighbors([(2, 0.5), (3, 0.4)], [(3, 0.9), (4, 0.8)], 0.5, k=10)
    assert [(n, src) for n, _, src in merged] == [
        (3, SOURCE_BOTH), (2, SOURCE_COWATCH), (4, SOURCE_POSTER)
    ]  # fmt: skip
    assert [s for _, s, _ in merged] == pytest.approx([0.85, 0.5, 0.4])
    cold = merge_neighbors([], [(7, 0.9), (8, 0.3)], 0.0, k=10)
    assert [(n, src) for n, _, src in cold] == [(7, SOURCE_POSTER), (8, SOURCE_POSTER)]
    assert merge_neighbors([(2, 0.5)], [(3, 0.9)], 0.0, k=10) == [(2, 0.5, SOURCE_COWATCH)]


def test_l2_similarity_is_monotonic_in_the_dot_product():
    dots = np.array([-1.0, 0.0, 0.5, 1.0])
    scores = poster_similarity(dots, "l2")
    assert np.all(np.diff(scores) > 0) and scores[-1] == 1.0 and scores[0] == 0.0


def test_position_decay_favours_the_latest_watches():
    neighbors = {1: [(10, 1.0)], 2: [(20, 1.0)]}
    events = [event(1, minutes_ago=10), event(2, minutes_ago=5)]
    no_age = CandidateConfig(half_life_days=1e12)
    flat = rank_candidates(events, neighbors, no_age, REF)
    assert [m for m, _, _ in flat] == [10, 20]  # equal scores: lower id first
    decayed = rank_candidates(
        events, neighbors, dataclasses.replace(no_age, recency_events=1.0), REF
    )
    assert [m for m, _, _ in decayed] == [20, 10]
    assert decayed[0][1] == 2 * decayed[1][1]


def test_popularity_blends_and_backfills_but_never_repeats_a_watched_film():
    popularity = Popularity.from_counts({10: 1, 30: 50, 40: 100, 1: 500})
    config = CandidateConfig(top_k=4, popularity_weight=0.0)
    ranked = rank_candidates([event(1, 5)], {1: [(10, 1.0)]}, config, REF, popularity)
    assert [m for m, _, _ in ranked] == [10, 40, 30]
    assert ranked[1][2] == () and ranked[0][2] == (1,)
    heavy = dataclasses.replace(config, popularity_weight=10.0)
    ranked = rank_candidates([event(1, 5)], {1: [(10, 1.0)]}, heavy, REF, popularity)
    assert [m for m, _, _ in ranked] == [40, 10, 30]
    assert [s for _, s, _ in ranked] == pytest.approx([2.0, 1.02, 1.0])


def test_tuning_picks_popularity_when_that_is_what_predicts_the_next_watch():
    catalogue = set(range(1, 41))
    events = []
    rng = np.random.default_rng(0)
    for user in range(1, 61):
        random_films = rng.choice(np.arange(11, 41), size=6, replace=False)
        early, last = 1 + (user + 1) % 3, 1 + user % 3
        for i, film in enumerate([early, *random_films.tolist(), last]):
            events.append(event(int(film), minutes_ago=100 - i, user=user))
    # Poster neighbours that point nowhere useful: the tuning must not rely on them.
    ids = np.arange(1, 41)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    chosen, trials = blend_lib.tune_blend(
        events, (ids, vectors), catalogue, CandidateConfig(top_k=10), k=5
    )
    assert chosen.popularity_weight > 0, trials
    assert len(trials) >= len(blend_lib.GRID["recency_events"])
    best = max(t["validation"]["HR@10"] for t in trials if t["blend"] == dataclasses.asdict(chosen))
    baseline = trials[0]["validation"]["HR@10"]
    assert best >= baseline


def test_blend_json_round_trip_and_unknown_settings():
    blend = blend_lib.Blend(poster_weight=0.3, popularity_weight=0.05, recency_events=20.0)
    assert blend_lib.Blend.from_json(blend.to_json()) == blend
    assert blend_lib.Blend.from_json('{"blend": ' + blend.to_json() + "}") == blend
    with pytest.raises(ValueError, match="unknown blend settings"):
        blend_lib.Blend.from_json('{"weight": 1}')
    with pytest.raises(ValueError, match="similarity"):
        blend_lib.Blend.from_json('{"similarity": "manhattan"}')
    with pytest.raises(ValueError, match=">= 0"):
        blend_lib.Blend(popularity_weight=-1.0)


def test_paired_bootstrap_interval_covers_the_difference():
    a = np.array([1.0, 1.0, 0.0, 1.0] * 50)
    b = np.array([0.0, 1.0, 0.0, 0.0] * 50)
    result = ev.paired_bootstrap(a, b, seed=1)
    assert result["difference"] == 0.5
    assert 0.4 < result["low"] < 0.5 < result["high"] < 0.6


def test_cold_recall_counts_hidden_films_found():
    visible = {1: [event(1, 5)], 2: [event(2, 5, user=2)], 3: []}
    targets = {1: {10, 11}, 2: {12}, 3: {10}}
    lists = {1: [(10, 0.9), (13, 0.5)], 2: [(11, 0.9)]}
    recommend = ev.cold_neighbour_recommender(lists, CandidateConfig(top_k=20))
    recall = ev.cold_recall(visible, targets, recommend, k=20)
    assert recall.tolist() == [0.5, 0.0]


def test_estimated_popularity_is_the_geometric_mean_of_the_nearest_posters_watchers():
    counts = {1: 3, 2: 15, 3: 100}
    neighbours = {9: [(1, 0.9), (4, 0.85), (2, 0.8), (3, 0.1)], 8: [(7, 0.9)]}
    estimates = estimated_popularity(counts, neighbours, [9, 8, 6], k=2)
    # 9: films 1 and 2 (4 has no count): sqrt(4 x 16) - 1; 8 and 6: no neighbour with a count.
    assert estimates == pytest.approx({9: 7.0, 8: 0.0, 6: 0.0})
    popularity = Popularity.with_estimates(counts, neighbours)
    # Up to 20 neighbours: 9 counts 1, 2 and 3, (4 x 16 x 101) ** (1/3) - 1 = 17.6 watchers.
    assert popularity.ranked == (3, 9, 2, 1, 8)
    assert popularity.score[9] == pytest.approx((4 * 16 * 101) ** (1 / 3) / 100 - 0.01)
    assert popularity.score[8] == 0.0


def _popular_look_history(seed: int = 0) -> tuple[list[WatchEvent], np.ndarray, np.ndarray]:
    """80 films of two tastes; within a taste, films with a 'popular' poster look draw most of
    its users. Posters place films by taste first, look second."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, 81)
    taste, popular = ids % 2, ids % 4 < 2
    vectors = np.stack([taste, 1 - taste, 0.4 * popular, 0.4 * ~popular], axis=1)
    vectors = (vectors + 0.05 * rng.normal(size=vectors.shape)).astype(np.float32)
    events = []
    for user in range(1, 201):
        same = taste == user % 2
        chance = np.where(same, np.where(popular, 0.5, 0.04), 0.02)
        for minute, film in enumerate(ids[rng.random(len(ids)) < chance]):
            events.append(event(int(film), minutes_ago=100 - minute, user=user))
    return events, ids, vectors


def test_cold_popularity_weight_is_tuned_on_visible_films_and_helps_when_posters_predict_it():
    events, ids, vectors = _popular_look_history()
    catalogue = set(ids.tolist())
    holdout = Holdout(0.3, seed=0)
    hidden = holdout.hidden(catalogue)
    # A perfect audience model: each film's co-watch vector is where its poster lies.
    queries = {int(m): v for m, v in zip(ids, vectors, strict=True) if m not in hidden}
    config = CandidateConfig(top_k=100)
    poster = {"audience": (ids, vectors)}

    def evaluate(history):
        return offline_eval.cold_evaluation(
            history, catalogue, holdout, {}, poster, "audience", config, queries, k=10, top=5
        )

    result = evaluate(events)
    assert result.popularity_weight > 0, result.trials
    pop = result.recall[offline_eval.HYBRID_COLD_POP].mean()
    assert pop > result.recall[offline_eval.HYBRID_COLD].mean() > result.recall["random"].mean()
    # Who watched the hidden films can change the score, never the tuning.
    shuffled = [
        dataclasses.replace(e, user_id=201 - e.user_id) if e.movie_id in hidden else e
        for e in events
    ]
    again = evaluate(shuffled)
    assert again.trials == result.trials and again.popularity_weight == result.popularity_weight
