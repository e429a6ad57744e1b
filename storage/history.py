"""Watch-history files read without Beam: MovieLens ratings CSVs and Parquet files of events.

Every row becomes a checked :class:`schemas.WatchEvent` or a :class:`schemas.DeadLetter` with
its reason: a row that cannot be a real watch (an id that is not a positive integer, a rating
that is not a finite number from 0.5 to 5, a time before 1970) is never silently dropped. The
Beam reader (``transforms.candidates.ReadWatchHistory``) and the offline tools share these.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from collections.abc import Iterator
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import DeadLetter
from schemas import WatchEvent

RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
HISTORY_STAGE = "watch_history"
MIN_RATING = 0.5
MAX_RATING = 5.0
"""MovieLens ratings run from 0.5 to 5 stars."""

BAD_ROW = "bad_row"
BAD_USER_ID = "bad_user_id"
BAD_MOVIE_ID = "bad_movie_id"
RATING_NOT_FINITE = "rating_not_finite"
RATING_OUT_OF_RANGE = "rating_out_of_range"
TIMESTAMP_INVALID = "timestamp_invalid"
_MAX_ID = 2**63 - 1
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class BadWatchRow(ValueError):
    """A history row that cannot be a watch event; ``reason`` is its dead-letter reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _read_field(reason: str, name: str, convert, value: object):
    try:
        return convert(value)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise BadWatchRow(reason, f"{name} {value!r} cannot be read: {exc}") from None


def _from_unix_seconds(value: object) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(value), tz=datetime.UTC)


def check_event(event: WatchEvent) -> WatchEvent:
    """The event, or BadWatchRow when an id, the rating or the time cannot be a real watch's."""
    c = WatchEvent.c
    for name, value, reason in (
        (c.user_id, event.user_id, BAD_USER_ID),
        (c.movie_id, event.movie_id, BAD_MOVIE_ID),
    ):
        if not isinstance(value, int) or not 1 <= value <= _MAX_ID:
            raise BadWatchRow(reason, f"{name} {value!r} is not a positive 64-bit integer id")
    rating = event.rating
    if not isinstance(rating, int | float) or not math.isfinite(rating):
        raise BadWatchRow(RATING_NOT_FINITE, f"{c.rating} {rating!r} is not a finite number")
    if not MIN_RATING <= rating <= MAX_RATING:
        raise BadWatchRow(
            RATING_OUT_OF_RANGE, f"{c.rating} {rating} is outside {MIN_RATING}..{MAX_RATING}"
        )
    when = event.watched_at
    if not isinstance(when, datetime.datetime) or when < _EPOCH:
        shown = when.isoformat() if isinstance(when, datetime.datetime) else repr(when)
        raise BadWatchRow(TIMESTAMP_INVALID, f"{c.watched_at} {shown} is not a time since 1970")
    return event


def movielens_event(user: object, movie: object, rating: object, stamp: object) -> WatchEvent:
    """A checked event from MovieLens ratings values (timestamp in Unix seconds)."""
    return check_event(
        WatchEvent(
            user_id=_read_field(BAD_USER_ID, "userId", int, user),
            movie_id=_read_field(BAD_MOVIE_ID, "movieId", int, movie),
            rating=_read_field(RATING_NOT_FINITE, "rating", float, rating),
            watched_at=_read_field(TIMESTAMP_INVALID, "timestamp", _from_unix_seconds, stamp),
        )
    )


def _history_dead_letter(run_id: str, exc: Exception, input_row: str, line: int) -> DeadLetter:
    return DeadLetter(
        run_id=run_id, stage=HISTORY_STAGE, reason=getattr(exc, "reason", BAD_ROW),
        detail=str(exc) if isinstance(exc, BadWatchRow) else repr(exc), input_row=input_row,
        attempts=0, line_number=line,
    )  # fmt: skip


def parse_ratings_csv(text: str, run_id: str) -> Iterator[WatchEvent | DeadLetter]:
    """MovieLens ratings rows (userId,movieId,rating,timestamp) as events or dead letters."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != RATINGS_HEADER:
        raise ValueError(f"watch history header must be {','.join(RATINGS_HEADER)}, got {header}")
    for row in reader:
        if not row:
            continue
        try:
            if len(row) != len(RATINGS_HEADER):
                raise BadWatchRow(BAD_ROW, f"{len(row)} fields, expected {len(RATINGS_HEADER)}")
            yield movielens_event(*row)
        except BadWatchRow as exc:
            yield _history_dead_letter(run_id, exc, ",".join(row), reader.line_num)


def event_from_mapping(row: Mapping, run_id: str, line: int) -> WatchEvent | DeadLetter:
    """An event from a dict with MovieLens (userId...) or schema (user_id...) column names."""
    c = WatchEvent.c
    try:
        if "userId" in row:
            return movielens_event(row["userId"], row["movieId"], row["rating"], row["timestamp"])
        fields = {k: row[k] for k in (c.user_id, c.movie_id, c.rating, c.watched_at)}
        return check_event(WatchEvent.from_dict(fields))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        input_row = json.dumps({k: str(v) for k, v in row.items()})
        return _history_dead_letter(run_id, exc, input_row, line)


def read_history_file(path: str, run_id: str) -> Iterator[WatchEvent | DeadLetter]:
    """Events (or dead letters) of a local or gs:// ratings CSV or Parquet file."""
    with FileSystems.open(path) as handle:
        data = handle.read()
    if path.endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(data))
        for line, row in enumerate(table.to_pylist(), start=1):
            yield event_from_mapping(row, run_id, line)
    else:
        yield from parse_ratings_csv(data.decode("utf-8-sig"), run_id)
