"""Per-user candidates: the films near (by co-watch and poster) the ones the user watched.

The scoring is :func:`models.scoring.rank_candidates`: per watched film, its (hybrid) neighbour
scores weighted by rating and recency, summed; with a popularity weight or backfill, the films'
popularity among the history's watchers (films with a vector only) blends in and fills the
places left. Watch events of films without a vector are counted and reported, never silently
dropped.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
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
            user, movie, rating, stamp = row
            yield WatchEvent(
                user_id=int(user),
                movie_id=int(movie),
                rating=float(rating),
                watched_at=datetime.datetime.fromtimestamp(int(stamp), tz=datetime.UTC),
            )
        except (ValueError, OverflowError) as exc:
            yield DeadLetter(
                run_id=run_id, stage="watch_history", reason="bad_row", detail=str(exc),
                input_row=",".join(row), attempts=0, line_number=reader.line_num,
            )  # fmt: skip


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
            when = datetime.datetime.fromtimestamp(int(row["timestamp"]), tz=datetime.UTC)
            return WatchEvent(
                user_id=int(row["userId"]), movie_id=int(row["movieId"]),
                rating=float(row["rating"]), watched_at=when,
            )  # fmt: skip
        return WatchEvent.from_dict(
            {k: row[k] for k in (c.user_id, c.movie_id, c.rating, c.watched_at)}
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        return DeadLetter(
            run_id=run_id, stage="watch_history", reason="bad_row", detail=repr(exc),
            input_row=json.dumps({k: str(v) for k, v in row.items()}), attempts=0, line_number=line,
        )  # fmt: skip


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


def _route(item: WatchEvent | DeadLetter):
    if isinstance(item, DeadLetter):
        return beam.pvalue.TaggedOutput(DEAD_LETTER, item)
    return item


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
        routed = items | "RouteBadRows" >> beam.Map(_route).with_outputs(DEAD_LETTER, main="events")
        return WatchHistory(routed.events, routed[DEAD_LETTER])
