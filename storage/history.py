"""Watch-history files read without Beam: MovieLens ratings CSVs and Parquet files of events.

Every row becomes a checked :class:`schemas.WatchEvent` or a :class:`schemas.DeadLetter` with
its reason: a row that cannot be a real watch (an id that is not a positive integer, a rating
that is not a finite number from 0.5 to 5, a time before 1970) is never silently dropped. The
Beam reader (``transforms.history.ReadWatchHistory``) and the offline tools share these.

At scale events travel as :class:`EventBatch` (NumPy columns): a CSV is read in byte ranges
(:func:`csv_ranges`, :func:`read_csv_range`: Arrow parses a range, checks run on whole columns,
and a range holding a bad row is read again row by row to dead-letter it with its line number),
a Parquet file one row group at a time (:func:`parquet_row_groups`, :func:`read_row_group`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
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


CSV_RANGE_BYTES = 32 << 20
"""Bytes of a CSV history read as one range (one element of the read)."""
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a datetime can hold


@dataclasses.dataclass(frozen=True)
class EventBatch:
    """Checked watch events as NumPy columns (the at-scale form of :class:`WatchEvent`):
    ids int64, ratings float32, ``watched_at`` in Unix seconds (int64)."""

    user_id: np.ndarray
    movie_id: np.ndarray
    rating: np.ndarray
    watched_at: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)

    def take(self, index: np.ndarray) -> EventBatch:
        """The events at ``index`` (positions or a boolean mask)."""
        return EventBatch(
            self.user_id[index], self.movie_id[index], self.rating[index], self.watched_at[index]
        )

    @classmethod
    def empty(cls) -> EventBatch:
        """A batch of no events."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   np.zeros(0, np.int64))  # fmt: skip

    @classmethod
    def concat(cls, batches: Iterable[EventBatch]) -> EventBatch:
        """One batch of the events of ``batches``, in order."""
        parts = [b for b in batches if len(b)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(b, f.name) for b in parts])
                     for f in dataclasses.fields(cls)))  # fmt: skip

    @classmethod
    def of_events(cls, events: Iterable[WatchEvent]) -> EventBatch:
        """The batch of checked :class:`WatchEvent` records."""
        events = list(events)
        return cls(
            np.fromiter((e.user_id for e in events), np.int64, len(events)),
            np.fromiter((e.movie_id for e in events), np.int64, len(events)),
            np.fromiter((e.rating for e in events), np.float32, len(events)),
            np.fromiter((int(e.watched_at.timestamp()) for e in events), np.int64, len(events)),
        )

    def events(self) -> Iterator[WatchEvent]:
        """The batch as :class:`WatchEvent` records (for small batches: tests, samples)."""
        for user, movie, rating, stamp in zip(
            self.user_id.tolist(), self.movie_id.tolist(), self.rating.tolist(),
            self.watched_at.tolist(), strict=True,
        ):  # fmt: skip
            yield WatchEvent(user_id=user, movie_id=movie, rating=rating,
                             watched_at=_from_unix_seconds(stamp))  # fmt: skip


def _valid_rows(user, movie, rating, stamp) -> np.ndarray:
    """Which rows pass every check of :func:`check_event` (column-wise)."""
    with np.errstate(invalid="ignore"):
        return (
            (user >= 1) & (movie >= 1) & np.isfinite(rating)
            & (rating >= MIN_RATING) & (rating <= MAX_RATING)
            & (stamp >= 0) & (stamp <= _MAX_SECONDS)
        )  # fmt: skip


def _batch_of_columns(user, movie, rating, stamp) -> EventBatch | None:
    """The batch when every row is a valid watch, else None (read it row by row)."""
    user, movie = np.asarray(user, np.int64), np.asarray(movie, np.int64)
    rating, stamp = np.asarray(rating, np.float64), np.asarray(stamp, np.int64)
    if not _valid_rows(user, movie, rating, stamp).all():
        return None
    return EventBatch(user, movie, rating.astype(np.float32), stamp)


def csv_ranges(path: str, size: int, range_bytes: int = CSV_RANGE_BYTES) -> list[tuple]:
    """(path, start, end) byte ranges that together cover a file of ``size`` bytes."""
    step = max(1, range_bytes)
    return [(path, start, min(size, start + step)) for start in range(0, max(size, 1), step)]


def _range_lines(path: str, start: int, end: int) -> tuple[bytes, int]:
    """The bytes of the lines that start in (start, end] (the header line excluded), and the
    offset of the first of them. A line belongs to the range its first byte is in."""
    with FileSystems.open(path) as handle:
        if start:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":
                handle.readline()  # the line under way belongs to the range before
        else:
            handle.readline()  # the header
        first = handle.tell()
        data = handle.read(max(0, end - first)) if end > first else b""
        if data and not data.endswith(b"\n"):
            data += handle.readline()
    return data, first


def _line_number_at(path: str, offset: int) -> int:
    """The 1-based line number of the line that starts at byte ``offset``."""
    count, done = 0, 0
    with FileSystems.open(path) as handle:
        while done < offset:
            chunk = handle.read(min(8 << 20, offset - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
    return count + 1


_CSV_TYPES = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64(),
              "timestamp": pa.int64()}  # fmt: skip


def read_csv_range(
    path: str, start: int, end: int, run_id: str
) -> Iterator[tuple[int, EventBatch | DeadLetter]]:
    """(rows read, batch) of one byte range of a ratings CSV, then (0, dead letter) per bad row;
    the rows are checked column-wise, and a range with a bad row is read row by row."""
    data, first = _range_lines(path, start, end)
    if not data.strip():
        return
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(RATINGS_HEADER)),
            convert_options=pacsv.ConvertOptions(column_types=_CSV_TYPES),
        )
        batch = _batch_of_columns(*(table.column(n).to_numpy() for n in RATINGS_HEADER))
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        batch = None  # a malformed row: read the range again row by row
    if batch is not None:
        yield len(batch), batch
        return
    line = _line_number_at(path, first)
    # a byte that is not UTF-8 becomes U+FFFD, so its row fails a check and is dead-lettered
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))
    events, dead, rows = [], [], 0
    for row in reader:
        if not row:
            continue
        rows += 1
        try:
            if len(row) != len(RATINGS_HEADER):
                raise BadWatchRow(BAD_ROW, f"{len(row)} fields, expected {len(RATINGS_HEADER)}")
            events.append(movielens_event(*row))
        except BadWatchRow as exc:
            dead.append(_history_dead_letter(run_id, exc, ",".join(row),
                                             line + reader.line_num - 1))  # fmt: skip
    yield rows - len(dead), EventBatch.of_events(events)
    for letter in dead:
        yield 1, letter


def history_problem(path: str, need_rows: bool = True, head_bytes: int = 1 << 16) -> str | None:
    """What makes a history file unreadable as a whole, or None: columns that are not the
    ratings' (a CSV header, a Parquet schema) or, with ``need_rows``, no row at all (an empty or
    header-only export; a CSV is judged by its first ``head_bytes``). Checked before any work."""
    with FileSystems.open(path) as handle:
        if path.endswith(".parquet"):
            parquet = pq.ParquetFile(handle)
            names = set(parquet.schema_arrow.names)
            c = WatchEvent.c
            if not (names >= set(RATINGS_HEADER)
                    or names >= {c.user_id, c.movie_id, c.rating, c.watched_at}):  # fmt: skip
                return (f"has the columns {','.join(sorted(names))}, not "
                        f"{','.join(RATINGS_HEADER)} (or {c.user_id},{c.movie_id},{c.rating},"
                        f"{c.watched_at})")  # fmt: skip
            if parquet.metadata.num_rows or not need_rows:
                return None
            return "holds no watch events (no rows)"
        head = handle.read(head_bytes)
    lines = [line for line in head.decode("utf-8-sig", "replace").splitlines() if line.strip()]
    if not lines:
        return "holds no watch events (an empty file)"
    if tuple(h.strip() for h in lines[0].split(",")) != RATINGS_HEADER:
        return f"has the header {lines[0].strip()[:80]}, not {','.join(RATINGS_HEADER)}"
    if len(lines) > 1 or not need_rows:
        return None
    return "holds no watch events (a header-only file)"


def parquet_row_groups(path: str) -> list[tuple[str, int, int]]:
    """(path, row group, rows before it) of every row group of a Parquet file."""
    with FileSystems.open(path) as handle:
        meta = pq.ParquetFile(handle).metadata
        out, before = [], 0
        for group in range(meta.num_row_groups):
            out.append((path, group, before))
            before += meta.row_group(group).num_rows
    return out


def _seconds(column: pa.ChunkedArray) -> np.ndarray:
    """Unix seconds of a timestamp column (or of integers already in seconds)."""
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("s", tz="UTC")).cast(pa.int64())
    return column.to_numpy()


def read_row_group(
    path: str, group: int, before: int, run_id: str
) -> Iterator[tuple[int, EventBatch | DeadLetter]]:
    """(rows read, batch) of one Parquet row group, then (1, dead letter) per bad row."""
    with FileSystems.open(path) as handle:
        table = pq.ParquetFile(handle).read_row_group(group)
    c = WatchEvent.c
    movielens = "userId" in table.column_names
    names = RATINGS_HEADER if movielens else (c.user_id, c.movie_id, c.rating, c.watched_at)
    batch = None
    if all(n in table.column_names for n in names) and not any(
        table.column(n).null_count for n in names
    ):
        try:
            columns = [table.column(n) for n in names]
            batch = _batch_of_columns(
                pc.cast(columns[0], pa.int64()).to_numpy(),
                pc.cast(columns[1], pa.int64()).to_numpy(),
                pc.cast(columns[2], pa.float64()).to_numpy(),
                _seconds(columns[3]) if not movielens
                else pc.cast(columns[3], pa.int64()).to_numpy(),
            )  # fmt: skip
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            batch = None
    if batch is not None:
        yield len(batch), batch
        return
    events, dead = [], []
    for offset, row in enumerate(table.to_pylist(), start=before + 1):
        item = event_from_mapping(row, run_id, offset)
        (dead if isinstance(item, DeadLetter) else events).append(item)
    yield len(events), EventBatch.of_events(events)
    for letter in dead:
        yield 1, letter
