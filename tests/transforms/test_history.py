"""The history read at scale: byte ranges and row groups, user buckets, film-sized statistics."""

from __future__ import annotations

import datetime

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from models import collab
from storage import history as history_files
from storage.history import EventBatch
from storage.history import read_csv_range
from storage.history import read_history_file
from tests.conftest import local_pipeline
from transforms import history
from transforms.history import ComputeHistoryStats
from transforms.history import GroupUsers
from transforms.history import ReadWatchHistory
from transforms.history import StatsConfig
from transforms.history import stats_of_batch

T0 = 1_600_000_000


def random_history(events: int = 3000, seed: int = 0) -> EventBatch:
    """A history of a few hundred users and films, with repeat watches."""
    rng = np.random.default_rng(seed)
    return EventBatch(
        user_id=rng.integers(1, 200, events),
        movie_id=(rng.zipf(1.3, events) % 300 + 1).astype(np.int64),
        rating=(rng.integers(1, 11, events) / 2).astype(np.float32),
        watched_at=T0 + rng.integers(0, 10**8, events),
    )


def write_csv(path, batch: EventBatch, bad: tuple[str, ...] = ()) -> list[str]:
    lines = [f"{u},{m},{r},{t}" for u, m, r, t in zip(
        batch.user_id, batch.movie_id, batch.rating.tolist(), batch.watched_at, strict=True)]
    lines = lines[:100] + list(bad) + lines[100:]
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(lines) + "\n")
    return lines


def test_byte_ranges_read_every_row_once_with_line_numbers(tmp_path, monkeypatch):
    batch = random_history(2000)
    path = tmp_path / "ratings.csv"
    lines = write_csv(path, batch, bad=("7,3,nan,1700000000", "x,3,4.0,1700000000"))
    size = path.stat().st_size
    got, dead = [], []
    for step in (97, 4096, size + 10):
        got, dead = [], []
        for _, start, end in history_files.csv_ranges(str(path), size, step):
            for _, item in read_csv_range(str(path), start, end, "run"):
                (got if isinstance(item, EventBatch) else dead).append(item)
        merged = EventBatch.concat(got)
        assert len(merged) == len(lines) - 2, step
        found = zip(merged.user_id, merged.movie_id, merged.watched_at, strict=True)
        assert sorted(found) == sorted(
            zip(batch.user_id, batch.movie_id, batch.watched_at, strict=True))  # fmt: skip
        assert sorted((d.reason, d.line_number) for d in dead) == [
            ("bad_user_id", 103), ("rating_not_finite", 102)]  # fmt: skip
    slow = [e for e in read_history_file(str(path), "run") if not hasattr(e, "reason")]
    assert len(slow) == len(merged)


def test_parquet_row_groups_are_read_in_pieces(tmp_path):
    batch = random_history(1000)
    table = pa.table({"userId": batch.user_id, "movieId": batch.movie_id,
                      "rating": batch.rating, "timestamp": batch.watched_at})  # fmt: skip
    path = tmp_path / "ratings.parquet"
    pq.write_table(table, path, row_group_size=128)
    pipeline = local_pipeline()
    read = pipeline | ReadWatchHistory(str(path), "run")
    count = read.batches | beam.Map(len) | beam.CombineGlobally(sum)
    assert_that(count, equal_to([1000]))
    pipeline.run()


def test_beam_statistics_equal_the_in_memory_ones(tmp_path):
    batch = random_history(3000)
    path = tmp_path / "ratings.csv"
    write_csv(path, batch)
    config = StatsConfig(min_watches=2, max_films=40, sample_users=15, sample_seed=3)
    pipeline = local_pipeline()
    read = pipeline | ReadWatchHistory(str(path), "run")
    users = read.batches | GroupUsers(buckets=7)
    _ = users | ComputeHistoryStats(config, save_to=str(tmp_path / "stats"))
    pipeline.run()
    found = history.HistoryStats.load(str(tmp_path / "stats"))
    expected = stats_of_batch(batch, config)
    assert found.digest == expected.digest and found.events == 3000
    assert found.users == expected.users == len(np.unique(batch.user_id))
    assert np.array_equal(found.film_ids, expected.film_ids)
    assert np.array_equal(found.watchers, expected.watchers)
    assert np.array_equal(found.gram.films, expected.gram.films) and len(found.gram.films) == 40
    assert np.array_equal(found.gram.gram, expected.gram.gram)
    assert np.allclose(found.gram.sequence, expected.gram.sequence, atol=1e-4)
    assert found.gram.sequence.sum() > 0
    assert len(np.unique(found.sample.user_id)) == 15
    assert sorted(found.sample.user_id.tolist()) == sorted(expected.sample.user_id.tolist())
    # the Gram is X^T X of the binary users x films matrix (repeat watches count once)
    pairs = {(u, m) for u, m in zip(batch.user_id.tolist(), batch.movie_id.tolist(),
                                    strict=True)}  # fmt: skip
    films = found.gram.films.tolist()
    a, b = films[0], films[1]
    both = len({u for u, m in pairs if m == a} & {u for u, m in pairs if m == b})
    assert found.gram.gram[0, 1] == both
    assert found.gram.gram[0, 0] == len({u for u, m in pairs if m == a})
    # another order of the same events has the same digest; one event more another
    shuffled = batch.take(np.random.default_rng(1).permutation(len(batch)))
    assert stats_of_batch(shuffled, config).digest == expected.digest
    assert stats_of_batch(batch.take(np.arange(1, len(batch))), config).digest != expected.digest


def test_changing_users_histories_updates_the_gram_exactly():
    batch = random_history(2000)
    batch = batch.take(np.lexsort((batch.movie_id, batch.watched_at, batch.user_id)))
    stats = stats_of_batch(batch, StatsConfig(min_watches=1, max_films=500))
    users = np.unique(batch.user_id)[:5]
    before = [batch.movie_id[batch.user_id == u] for u in users]  # in the order watched
    after = [films[1:] for films in before]
    changed = stats.gram.with_histories_changed(before, after)
    keep = ~np.isin(np.arange(len(batch)), [np.flatnonzero(batch.user_id == u)[0] for u in users])
    rest = batch.take(keep)
    again = collab.gram_of_users(stats.gram.films, rest.user_id, rest.movie_id)
    # a user who watched the dropped film again keeps it: compare on the users' film sets
    for u, films in zip(users, after, strict=True):
        assert set(rest.movie_id[rest.user_id == u]) == set(films)
    assert np.array_equal(changed.gram, again)
    steps = collab.sequence_of_users(stats.gram.films, rest.user_id, rest.movie_id,
                                     rest.watched_at)  # fmt: skip
    assert np.allclose(changed.sequence, steps, atol=1e-4)
    assert not np.allclose(changed.sequence, stats.gram.sequence, atol=1e-4)


def test_the_sequence_counts_what_each_user_watched_next():
    films = np.array([10, 20, 30, 40])
    users = np.array([1, 1, 1, 2, 2, 1])
    movies = np.array([30, 10, 20, 40, 10, 99])  # 99 is not modelled, but takes a place
    times = np.array([3, 1, 2, 5, 6, 4])  # user 1: 10, 20, 30, 99; user 2: 40, 10
    s = collab.sequence_of_users(films, users, movies, times)
    expected = np.zeros((4, 4), np.float32)
    expected[0, 1] = 1.0  # 10 -> 20, next
    expected[1, 2] = 1.0  # 20 -> 30, next
    expected[0, 2] = 0.5  # 10 -> 30, two places later
    expected[3, 0] = 1.0  # user 2: 40 -> 10 (nothing crosses users)
    assert np.array_equal(s, expected)


def test_event_batches_round_trip_watch_events():
    batch = random_history(50)
    events = list(batch.events())
    assert isinstance(events[0].watched_at, datetime.datetime)
    again = EventBatch.of_events(events)
    for name in ("user_id", "movie_id", "rating", "watched_at"):
        assert np.array_equal(getattr(again, name), getattr(batch, name))


def test_a_row_that_is_not_utf8_is_dead_lettered_not_fatal(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"userId,movieId,rating,timestamp\n1,10,4.0,1700000000\n"
                     b"2,1\xff1,3.5,1700000000\n3,20,5.0,1700000000\n")  # fmt: skip
    got = list(read_csv_range(str(path), 0, path.stat().st_size, "run"))
    batches = [item for _, item in got if isinstance(item, EventBatch)]
    dead = [item for _, item in got if not isinstance(item, EventBatch)]
    assert EventBatch.concat(batches).movie_id.tolist() == [10, 20]
    assert [(d.reason, d.line_number) for d in dead] == [("bad_movie_id", 3)]
    assert sum(rows for rows, _ in got) == 3


def test_histories_changed_by_adding_and_dropping_films_update_the_gram_exactly():
    batch = random_history(1500)
    batch = batch.take(np.lexsort((batch.movie_id, batch.watched_at, batch.user_id)))
    stats = stats_of_batch(batch, StatsConfig(min_watches=1, max_films=300))
    films = stats.gram.films
    users = np.unique(batch.user_id)[:6]
    rng = np.random.default_rng(4)
    before = [batch.movie_id[batch.user_id == u] for u in users]
    # drop a film and add two others (one of them maybe outside the Gram), or change nothing
    after = [np.concatenate([h[1:], rng.choice(films, 2), [10**9]]) if i % 3 else h
             for i, h in enumerate(before)]  # fmt: skip
    changed = stats.gram.with_histories_changed(before, after)
    keep = ~np.isin(batch.user_id, users)
    users_all = np.concatenate([batch.user_id[keep], np.repeat(users, [len(h) for h in after])])
    movies_all = np.concatenate([batch.movie_id[keep], *after])
    again = collab.gram_of_users(films, users_all, movies_all)
    assert np.array_equal(changed.gram, again)
    assert not np.array_equal(changed.gram, stats.gram.gram)
