"""Watch-history files: MovieLens CSV and Parquet rows become checked events or dead letters."""

from __future__ import annotations

import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import DeadLetter
from schemas import WatchEvent
from storage.history import parse_ratings_csv
from storage.history import read_history_file

UTC = datetime.UTC
REF = datetime.datetime(2024, 1, 1, tzinfo=UTC)


def event(movie_id: int, rating: float = 5.0) -> WatchEvent:
    return WatchEvent(user_id=1, movie_id=movie_id, rating=rating, watched_at=REF)


def test_ratings_csv_rows_and_bad_rows():
    text = "userId,movieId,rating,timestamp\n1,10,4.5,964982703\n1,x,3,1\n2,11,3.0,964982224\n"
    items = list(parse_ratings_csv(text, "run"))
    assert [type(i) for i in items] == [WatchEvent, DeadLetter, WatchEvent]
    assert items[0].watched_at == datetime.datetime.fromtimestamp(964982703, tz=UTC)
    assert items[1].line_number == 3 and items[1].stage == "watch_history"
    with pytest.raises(ValueError, match="header"):
        list(parse_ratings_csv("a,b\n1,2\n", "run"))


BAD_HISTORY = """userId,movieId,rating,timestamp
1,10,4.5,964982703
1,11,nan,964982703
1,12,inf,964982703
1,13,5.5,964982703
1,14,0,964982703
1,15,3,-1
1,16,3,nan
0,17,3,964982703
x,18,3,964982703
1,,3,964982703
1,99999999999999999999,3,964982703
1,19,3
2,20,0.5,0
"""


def test_history_rows_that_cannot_be_real_watches_are_dead_lettered_with_their_reason():
    items = list(parse_ratings_csv(BAD_HISTORY, "run"))
    events = [i for i in items if isinstance(i, WatchEvent)]
    dead = [i for i in items if isinstance(i, DeadLetter)]
    assert [(e.user_id, e.movie_id, e.rating) for e in events] == [(1, 10, 4.5), (2, 20, 0.5)]
    assert [(d.line_number, d.reason) for d in dead] == [
        (3, "rating_not_finite"), (4, "rating_not_finite"), (5, "rating_out_of_range"),
        (6, "rating_out_of_range"), (7, "timestamp_invalid"), (8, "timestamp_invalid"),
        (9, "bad_user_id"), (10, "bad_user_id"), (11, "bad_movie_id"), (12, "bad_movie_id"),
        (13, "bad_row"),
    ]  # fmt: skip
    assert all(d.stage == "watch_history" and d.detail for d in dead)
    assert dead[2].input_row == "1,13,5.5,964982703" and "0.5..5.0" in dead[2].detail


def test_parquet_history_rows_are_checked_the_same_way(tmp_path):
    movielens = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({
        "userId": [1, 1, 1, None], "movieId": [10, 11, 12, 13],
        "rating": [4.0, float("nan"), 3.0, 3.0], "timestamp": [964982703, 964982703, -60, 5],
    }), movielens)  # fmt: skip
    schema_named = tmp_path / "events.parquet"
    pq.write_table(WatchEvent.to_arrow([
        event(10), event(11, rating=9.0), event(12, rating=float("-inf")),
        WatchEvent(user_id=1, movie_id=-3, rating=4.0, watched_at=REF),
        WatchEvent(user_id=1, movie_id=13, rating=4.0,
                   watched_at=datetime.datetime(1960, 1, 1, tzinfo=UTC)),
    ]), schema_named)  # fmt: skip
    for path, kept in ((movielens, [10]), (schema_named, [10])):
        items = list(read_history_file(str(path), "run"))
        assert [i.movie_id for i in items if isinstance(i, WatchEvent)] == kept
    reasons = [getattr(i, "reason", None) for i in read_history_file(str(movielens), "run")]
    assert reasons == [None, "rating_not_finite", "timestamp_invalid", "bad_user_id"]
    reasons = [getattr(i, "reason", None) for i in read_history_file(str(schema_named), "run")]
    assert reasons == [
        None, "rating_out_of_range", "rating_not_finite", "bad_movie_id", "timestamp_invalid"
    ]
