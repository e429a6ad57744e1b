"""Per-user candidates: films whose posters look like the ones the user watched.

score(user, film) = sum over the user's watched films w of
    similarity(w, film) x 0.5 ** (age of the watch in days / half-life) x rating weight(w),
with films the user watched excluded, the top K kept, and ties broken by the lower movie id.
Watch events of films without a vector are counted and reported, never silently dropped.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import io
import json
import typing
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

import apache_beam as beam

from schemas import CandidateRow
from schemas import DeadLetter
from schemas import WatchEvent

NO_VECTOR = "no_vector"
DEAD_LETTER = "dead_letter"
MAX_CONTRIBUTORS = 10
RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")


@dataclasses.dataclass(frozen=True)
class CandidateConfig:
    """How candidates are scored."""

    top_k: int = 100
    half_life_days: float = 365.0
    min_rating: float = 0.0
    model_version: str = ""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.half_life_days <= 0:
            raise ValueError("--candidates_k must be >= 1 and --half_life_days > 0")


def rating_weight(rating: float, min_rating: float) -> float:
    """How much a watch counts by its rating: rating / 5, and 0 below ``min_rating``."""
    return 0.0 if rating < min_rating else rating / 5.0


def recency_weight(
    watched_at: datetime.datetime, reference: datetime.datetime, half_life_days: float
) -> float:
    """0.5 ** (age in days / half-life); watches after the reference count fully."""
    age_days = max(0.0, (reference - watched_at).total_seconds() / 86_400.0)
    return 0.5 ** (age_days / half_life_days)


def reference_time(run_date: datetime.date) -> datetime.datetime:
    """The instant a run date's recency decay is measured from: the end of that day, UTC."""
    start = datetime.datetime.combine(run_date, datetime.time(), tzinfo=datetime.UTC)
    return start + datetime.timedelta(days=1)


def rank_candidates(
    events: Sequence[WatchEvent],
    neighbors: Mapping[int, Sequence[tuple[int, float]]],
    config: CandidateConfig,
    reference: datetime.datetime,
) -> list[tuple[int, float, tuple[int, ...]]]:
    """A user's top-k (movie id, score, contributing watched films), best first."""
    watched = {e.movie_id for e in events}
    scores: dict[int, float] = collections.defaultdict(float)
    parts: dict[int, dict[int, float]] = collections.defaultdict(dict)
    for event in sorted(events, key=lambda e: (e.movie_id, e.watched_at)):
        weight = rating_weight(event.rating, config.min_rating) * recency_weight(
            event.watched_at, reference, config.half_life_days
        )
        if weight == 0.0:
            continue
        for nid, similarity in neighbors.get(event.movie_id, ()):
            if nid in watched:
                continue
            contribution = similarity * weight
            scores[nid] += contribution
            parts[nid][event.movie_id] = parts[nid].get(event.movie_id, 0.0) + contribution
    # Scores are rounded to 1e-9 so that float noise cannot reorder ties between runs.
    rounded = {movie_id: round(score, 9) for movie_id, score in scores.items()}
    ranked = sorted(rounded.items(), key=lambda kv: (-kv[1], kv[0]))[: config.top_k]
    out = []
    for movie_id, score in ranked:
        contributors = sorted(parts[movie_id].items(), key=lambda kv: (-kv[1], kv[0]))
        out.append((movie_id, score, tuple(m for m, _ in contributors[:MAX_CONTRIBUTORS])))
    return out


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
        neighbors = lists[0] if lists else []
        for event in events:
            yield event.user_id, (event, neighbors)


class _RankUserFn(beam.DoFn):
    def __init__(self, config: CandidateConfig, run_date: datetime.date) -> None:
        self._config = config
        self._run_date = run_date
        self._users = beam.metrics.Metrics.counter("candidates", "users")
        self._rows = beam.metrics.Metrics.counter("candidates", "candidate_rows")

    def process(self, user_and_watches: tuple[int, Iterable]) -> Iterator[CandidateRow]:
        user_id, watches = user_and_watches
        watches = list(watches)
        events = [event for event, _ in watches]
        neighbors = {event.movie_id: lists for event, lists in watches if lists}
        ranked = rank_candidates(events, neighbors, self._config, reference_time(self._run_date))
        self._users.inc()
        self._rows.inc(len(ranked))
        for rank, (movie_id, score, contributors) in enumerate(ranked, start=1):
            yield CandidateRow(
                user_id=user_id,
                rank=rank,
                movie_id=movie_id,
                score=score,
                model_version=self._config.model_version,
                run_date=self._run_date,
                contributing_movie_ids=contributors,
            )


class BuildCandidates(beam.PTransform):
    """(events, neighbour lists) -> CandidateRow, plus events of films without a vector."""

    def __init__(self, config: CandidateConfig, run_date: datetime.date) -> None:
        super().__init__()
        self._config = config
        self._run_date = run_date

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]):
        events, neighbor_lists = inputs
        keyed_events = events | "KeyEventsByFilm" >> beam.Map(lambda e: (e.movie_id, e))
        joined = (
            {"events": keyed_events, "neighbors": neighbor_lists}
            | "JoinByFilm" >> beam.CoGroupByKey()
            | "AttachNeighbors"
            >> beam.ParDo(_JoinNeighborsFn()).with_outputs(NO_VECTOR, main="watches")
        )
        rows = (
            joined.watches
            | "GroupByUser" >> beam.GroupByKey()
            | "RankForUser" >> beam.ParDo(_RankUserFn(self._config, self._run_date))
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
