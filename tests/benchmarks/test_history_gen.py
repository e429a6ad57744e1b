"""The MovieLens-shaped watch-history generator of the nightly scale benchmark."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from benchmarks.history_gen import MIN_FILMS_PER_USER
from benchmarks.history_gen import WINDOW_SECONDS
from benchmarks.history_gen import WINDOW_START
from benchmarks.history_gen import generate_history
from benchmarks.history_gen import history_stats
from benchmarks.history_gen import write_history_csv
from schemas import WatchEvent
from storage.history import RATINGS_HEADER
from storage.history import read_history_file

EVENTS = 20_000


@pytest.fixture(scope="module")
def history():
    return generate_history(EVENTS, seed=3)


def test_event_count_is_the_one_asked(history):
    assert abs(history.events - EVENTS) <= 0.03 * EVENTS


def test_no_user_watches_a_film_twice(history):
    pairs = history.user_ids * (history.film_ids.max() + 1) + history.movie_ids
    assert np.unique(pairs).size == history.events


def test_every_user_watches_at_least_twenty_films(history):
    per_user = np.bincount(history.user_ids)[1:]
    assert per_user.min() >= MIN_FILMS_PER_USER


def test_no_film_reaches_almost_every_user(history):
    stats = history_stats(history)
    assert 0.2 < stats["top_film_user_share"] < 0.9
    assert stats["users"] == np.unique(history.user_ids).size


def test_ratings_are_half_stars_and_times_in_the_window(history):
    assert set(np.unique(history.ratings).tolist()) <= {x / 2 for x in range(1, 11)}
    assert history.ratings.min() >= 0.5 and history.ratings.max() <= 5.0
    assert history.timestamps.min() >= WINDOW_START
    assert history.timestamps.max() < WINDOW_START + WINDOW_SECONDS
    assert np.isin(history.movie_ids, history.film_ids).all()


def test_the_csv_reads_back_as_valid_events(history, tmp_path):
    path = tmp_path / "ratings.csv"
    write_history_csv(history, str(path))
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == RATINGS_HEADER and len(rows) == history.events + 1
    assert rows[1] == [
        str(history.user_ids[0]), str(history.movie_ids[0]), f"{history.ratings[0]:.1f}",
        str(history.timestamps[0]),
    ]  # fmt: skip
    parsed = list(read_history_file(str(path), "test"))
    assert len(parsed) == history.events and all(isinstance(e, WatchEvent) for e in parsed)


def test_the_same_seed_gives_the_same_history(history):
    again = generate_history(EVENTS, seed=3)
    other = generate_history(EVENTS, seed=4)
    for name in ("user_ids", "movie_ids", "ratings", "timestamps"):
        assert np.array_equal(getattr(history, name), getattr(again, name))
    assert not np.array_equal(history.movie_ids, other.movie_ids)
