"""The collaborative peers: EASE and RP3beta against tiny known answers, rows and ranking."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import scipy.sparse

from benchmarks import collab_peers
from models import candidate_eval as ev
from schemas import WatchEvent

START = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
TOY = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 0, 0]], dtype=np.float64)


def watch(user: int, movie: int, day: int, rating: float = 5.0) -> WatchEvent:
    return WatchEvent(
        user_id=user, movie_id=movie, rating=rating, watched_at=START + datetime.timedelta(day)
    )


def test_ease_matches_the_closed_form_and_has_a_zero_diagonal():
    weights = collab_peers.ease_weights(scipy.sparse.csr_matrix(TOY), l2=2.0)
    inverse = np.linalg.inv(TOY.T @ TOY + 2.0 * np.eye(3))
    expected = np.eye(3) - inverse / np.diag(inverse)
    np.testing.assert_allclose(np.diag(weights), 0.0, atol=1e-12)
    np.testing.assert_allclose(weights, expected, atol=1e-12)


def test_ease_columns_are_ridge_regressions_on_the_other_films():
    weights = collab_peers.ease_weights(scipy.sparse.csr_matrix(TOY), l2=2.0)
    for film in range(3):
        others = [j for j in range(3) if j != film]
        x = TOY[:, others]
        ridge = np.linalg.solve(x.T @ x + 2.0 * np.eye(2), x.T @ TOY[:, film])
        np.testing.assert_allclose(weights[others, film], ridge, atol=1e-12)


def test_rp3beta_is_the_normalised_random_walk_over_popularity_to_the_beta():
    weights = collab_peers.rp3beta_weights(scipy.sparse.csr_matrix(TOY), 1.0, 0.5, k=5).toarray()
    walk = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            for u in range(len(TOY)):
                to_user = TOY[u, i] / TOY[:, i].sum()
                walk[i, j] += to_user * TOY[u, j] / TOY[u].sum()
    expected = walk / np.sqrt(TOY.sum(axis=0))[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(weights, expected, atol=1e-12)


def test_rp3beta_keeps_the_top_k_of_each_row():
    weights = collab_peers.rp3beta_weights(scipy.sparse.csr_matrix(TOY), 0.5, 0.0, k=1).toarray()
    full = collab_peers.rp3beta_weights(scipy.sparse.csr_matrix(TOY), 0.5, 0.0, k=5).toarray()
    assert ((weights > 0).sum(axis=1) == 1).all()
    np.testing.assert_allclose(weights.max(axis=1), full.max(axis=1))


@pytest.fixture
def cowatched() -> ev.Split:
    """Users 1-4 watch films 10, 11, 12 together; 5-6 watch 20, 21; user 9 has 10 and 11 (each
    user's last watch, film 30, is held out)."""
    events = [watch(u, m, d) for u in (1, 2, 3, 4) for d, m in enumerate((10, 11, 12, 30))]
    events += [watch(u, m, d) for u in (5, 6) for d, m in enumerate((20, 21, 30))]
    events += [watch(9, 10, 0), watch(9, 11, 1), watch(9, 30, 2)]
    return ev.leave_last_out(events, {10, 11, 12, 20, 21, 30})


@pytest.mark.parametrize(
    "weights_of",
    [
        lambda x: collab_peers.ease_weights(x, l2=1.0),
        lambda x: collab_peers.rp3beta_weights(x, 1.0, 0.0, k=5),
    ],
    ids=["ease", "rp3beta"],
)
def test_a_film_cowatched_with_the_users_films_ranks_first(cowatched, weights_of):
    matrix = collab_peers.history_matrix(cowatched.train, np.array([10, 11, 12, 20, 21, 30]))
    scorer = collab_peers.item_scorer(weights_of)
    scores = next(scorer(matrix, cowatched, [{}], [None]))[None]
    recommend = collab_peers.ranked_recommender(scores, matrix, k=3)
    ranked = recommend(9, cowatched.train[9], cowatched.held_out[9])
    assert ranked[0] == 12
    assert not {10, 11} & set(ranked)


def test_weighted_rows_are_the_hybrids_weights_scaled_to_one(cowatched):
    matrix = collab_peers.history_matrix(cowatched.train, np.array([10, 11, 12, 20, 21, 30]))
    rows = collab_peers.user_rows(matrix, cowatched, 1.0, collab_peers.CandidateConfig())
    user = list(matrix.users).index(9)
    films = list(matrix.films)
    latest, older = rows[user, films.index(11)], rows[user, films.index(10)]
    assert latest == pytest.approx(1.0)
    assert older == pytest.approx(0.5 * 0.5 ** (1 / 365.0))
    binary = collab_peers.user_rows(matrix, cowatched, None, collab_peers.CandidateConfig())
    assert (binary != matrix.binary).nnz == 0


def test_ranking_breaks_ties_by_watchers_then_lower_id():
    histories = {1: [watch(1, 3, 0)], 2: [watch(2, 3, 0), watch(2, 2, 1)], 3: [watch(3, 1, 0)]}
    matrix = collab_peers.history_matrix(histories, np.array([1, 2, 3, 4]))
    recommend = collab_peers.ranked_recommender(np.zeros((3, 4)), matrix, k=3)
    assert recommend(3, histories[3], watch(3, 4, 2)) == [3, 2, 4]


def test_ials_reports_the_make_target_when_the_peer_env_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(collab_peers.peers.PYTHON_ENV, str(tmp_path / "missing" / "python"))
    reason = collab_peers.ials_available()
    assert reason is not None
    assert "make bench-peers" in reason
