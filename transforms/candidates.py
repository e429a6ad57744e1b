"""Per-user candidates: the films near (by co-watch and poster) the ones the user watched.

The scoring is :func:`models.scoring.rank_candidates`: per watched film, its (hybrid) neighbour
scores weighted by rating and recency, summed; with a popularity weight or backfill, the films'
popularity among the history's watchers (films with a vector only) blends in and fills the
places left. Watch events of films without a vector are counted and reported, never silently
dropped. A history row that cannot be a real watch (an id that is not a positive integer, a
rating that is not a finite number from 0.5 to 5, a time before 1970) goes to the dead-letter
table with its reason.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import typing
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping

import apache_beam as beam

from models.scoring import CandidateConfig
from models.scoring import Popularity
from models.scoring import rank_candidates
from models.scoring import reference_time
from schemas import CandidateRow
from schemas import DeadLetter
from schemas import WatchEvent

NO_VECTOR = "no_vector"
DEAD_LETTER = "dead_letter"
RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
POPULARITY = "popularity"
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


class _JoinNeighborsFn(beam.DoFn):
    """Per film: every watch event of it, with the film's neighbour list (or none)."""

    def __init__(self) -> None:
        self._missing = beam.metrics.Metrics.counter("candidates", "events_without_vector")
        self._events = beam.metrics.Metrics.counter("candidates", "events")

    def process(self, joined: tuple[int, dict]) -> Iterator:
        movie_id, groups = joined
        lists = list(groups["neighbors"])
        events = list(groups["events"])
        self._events.inc(len(events))
        if not lists:
            self._missing.inc(len(events))
            for event in events:
                yield beam.pvalue.TaggedOutput(NO_VECTOR, event)
        else:
            watchers = len({event.user_id for event in events})
            yield beam.pvalue.TaggedOutput(POPULARITY, (movie_id, watchers))
        neighbors = lists[0] if lists else []
        for event in events:
            yield event.user_id, (event, neighbors)


class _RankUserFn(beam.DoFn):
    def __init__(self, config: CandidateConfig, run_date: datetime.date) -> None:
        self._config = config
        self._run_date = run_date
        self._users = beam.metrics.Metrics.counter("candidates", "users")
        self._rows = beam.metrics.Metrics.counter("candidates", "candidate_rows")
        self._backfill = beam.metrics.Metrics.counter("candidates", "popularity_only_rows")

    def process(
        self, user_and_watches: tuple[int, Iterable], popularity: Popularity | None = None
    ) -> Iterator[CandidateRow]:
        user_id, watches = user_and_watches
        watches = list(watches)
        events = [event for event, _ in watches]
        neighbors = {event.movie_id: lists for event, lists in watches if lists}
        ranked = rank_candidates(
            events, neighbors, self._config, reference_time(self._run_date), popularity
        )
        self._users.inc()
        self._rows.inc(len(ranked))
        for rank, (movie_id, score, contributors) in enumerate(ranked, start=1):
            if not contributors:
                self._backfill.inc()
            yield CandidateRow(
                user_id=user_id,
                rank=rank,
                movie_id=movie_id,
                score=score,
                model_version=self._config.model_version,
                run_date=self._run_date,
                contributing_movie_ids=contributors,
            )


def _popularity(counts: Iterable[tuple[int, int]]) -> Popularity:
    return Popularity.from_counts(dict(counts))


class BuildCandidates(beam.PTransform):
    """(events, neighbour lists) -> CandidateRow, plus events of films without a vector.

    With ``use_popularity`` the films' watcher counts (films with a neighbour list only) blend
    into the scores and back-fill short lists (see :mod:`models.scoring`).
    """

    def __init__(
        self, config: CandidateConfig, run_date: datetime.date, use_popularity: bool = False
    ) -> None:
        super().__init__()
        self._config = config
        self._run_date = run_date
        self._use_popularity = use_popularity

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]):
        events, neighbor_lists = inputs
        keyed_events = events | "KeyEventsByFilm" >> beam.Map(lambda e: (e.movie_id, e))
        joined = (
            {"events": keyed_events, "neighbors": neighbor_lists}
            | "JoinByFilm" >> beam.CoGroupByKey()
            | "AttachNeighbors"
            >> beam.ParDo(_JoinNeighborsFn()).with_outputs(NO_VECTOR, POPULARITY, main="watches")
        )
        side = {}
        if self._use_popularity:
            popularity = (
                joined[POPULARITY]
                | "CollectCounts" >> beam.combiners.ToList()
                | "Popularity" >> beam.Map(_popularity)
            )
            side["popularity"] = beam.pvalue.AsSingleton(popularity)
        rows = (
            joined.watches
            | "GroupByUser" >> beam.GroupByKey()
            | "RankForUser" >> beam.ParDo(_RankUserFn(self._config, self._run_date), **side)
        )
        return rows, joined[NO_VECTOR]


class WatchHistory(typing.NamedTuple):
    """Watch events and the rows that could not be read."""

    events: beam.PCollection
    dead_letter: beam.PCollection


def _event_from_mapping(row: Mapping, run_id: str, line: int) -> WatchEvent | DeadLetter:
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
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        data = handle.read()
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(data))
        for line, row in enumerate(table.to_pylist(), start=1):
            yield _event_from_mapping(row, run_id, line)
    else:
        yield from parse_ratings_csv(data.decode("utf-8-sig"), run_id)


class _RouteRowsFn(beam.DoFn):
    """Events to the main output, dead letters to DEAD_LETTER; counts rows read, events, and
    dead letters per reason (``rows_read == events + dead_lettered``)."""

    def __init__(self) -> None:
        self._rows = beam.metrics.Metrics.counter(HISTORY_STAGE, "rows_read")
        self._events = beam.metrics.Metrics.counter(HISTORY_STAGE, "events")
        self._dead = beam.metrics.Metrics.counter(HISTORY_STAGE, "dead_lettered")

    def process(self, item: WatchEvent | DeadLetter) -> Iterator:
        self._rows.inc()
        if isinstance(item, DeadLetter):
            self._dead.inc()
            beam.metrics.Metrics.counter(HISTORY_STAGE, f"dead_lettered_{item.reason}").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)
        else:
            self._events.inc()
            yield item


class ReadWatchHistory(beam.PTransform):
    """Watch events from CSV / Parquet files (local or gs://) or a BigQuery table."""

    def __init__(self, uri: str, run_id: str) -> None:
        super().__init__()
        self._uri = uri
        self._run_id = run_id
        if uri.startswith("bq://"):
            parts = uri[len("bq://") :].split(".")
            if len(parts) != 3 or not all(parts):
                raise ValueError(f"--watch_history={uri}: expected bq://PROJECT.DATASET.TABLE")
        elif not uri.endswith(".parquet"):
            from apache_beam.io.filesystems import FileSystems

            with FileSystems.open(uri) as handle:
                header = handle.readline().decode("utf-8-sig").strip().split(",")
            if tuple(h.strip() for h in header) != RATINGS_HEADER:
                raise ValueError(
                    f"--watch_history={uri}: the header must be {','.join(RATINGS_HEADER)} "
                    f"(MovieLens ratings), got {','.join(header)}"
                )

    def expand(self, pbegin: beam.pvalue.PBegin) -> WatchHistory:
        run_id = self._run_id
        if self._uri.startswith("bq://"):
            from apache_beam.io.gcp.bigquery import ReadFromBigQuery

            project, dataset, table = self._uri[len("bq://") :].split(".")
            items = (
                pbegin
                | "ReadBigQuery"
                >> ReadFromBigQuery(
                    table=f"{project}:{dataset}.{table}",
                    method=ReadFromBigQuery.Method.DIRECT_READ,
                )
                | "ToEvents" >> beam.Map(_event_from_mapping, run_id, 0)
            )
        else:
            items = (
                pbegin
                | "HistoryPath" >> beam.Create([self._uri])
                | "ParseHistory" >> beam.FlatMap(read_history_file, run_id)
            )
        routed = items | "RouteBadRows" >> beam.ParDo(_RouteRowsFn()).with_outputs(
            DEAD_LETTER, main="events"
        )
        return WatchHistory(routed.events, routed[DEAD_LETTER])
