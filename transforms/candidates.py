"""Per-user candidates: the films near (by co-watch and poster) the ones the user watched.

The scoring is :func:`models.scoring.rank_candidates`: per watched film, its (hybrid) neighbour
scores weighted by rating and recency, summed; with a popularity weight or backfill, the films'
popularity among the history's watchers (films with a vector only) blends in and fills the
places left; a film nobody has watched yet counts the watchers its nearest posters drew
(:func:`models.scoring.estimated_popularity`). Watch events of films without a vector are
counted and reported, never silently dropped. A history row that cannot be a real watch (an id
that is not a positive integer, a rating that is not a finite number from 0.5 to 5, a time
before 1970) goes to the dead-letter table with its reason.
"""

from __future__ import annotations

import datetime
import typing
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.bigquery import ReadFromBigQuery

from models.scoring import CandidateConfig
from models.scoring import Popularity
from models.scoring import rank_candidates
from models.scoring import reference_time
from schemas import CandidateRow
from schemas import DeadLetter
from schemas import WatchEvent
from storage.history import HISTORY_STAGE
from storage.history import RATINGS_HEADER
from storage.history import event_from_mapping
from storage.history import read_history_file

NO_VECTOR = "no_vector"
DEAD_LETTER = "dead_letter"
POPULARITY = "popularity"


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
            new_film_neighbors = () if watchers else lists[0]
            yield beam.pvalue.TaggedOutput(POPULARITY, (movie_id, watchers, new_film_neighbors))
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


def _popularity(films: Iterable[tuple[int, int, Sequence[tuple]]]) -> Popularity:
    counts = {movie_id: watchers for movie_id, watchers, _ in films if watchers}
    new = {movie_id: lists for movie_id, watchers, lists in films if not watchers}
    return Popularity.with_estimates(counts, new)


class BuildCandidates(beam.PTransform):
    """(events, neighbour lists) -> CandidateRow, plus events of films without a vector.

    With ``use_popularity`` the films' watcher counts (films with a neighbour list only; a film
    without watchers has its poster neighbours' estimate) blend into the scores and back-fill
    short lists (see :mod:`models.scoring`).
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
            project, dataset, table = self._uri[len("bq://") :].split(".")
            items = (
                pbegin
                | "ReadBigQuery"
                >> ReadFromBigQuery(
                    table=f"{project}:{dataset}.{table}",
                    method=ReadFromBigQuery.Method.DIRECT_READ,
                )
                | "ToEvents" >> beam.Map(event_from_mapping, run_id, 0)
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
