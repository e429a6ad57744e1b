"""Watch history at scale: splittable reads into event batches, users grouped in buckets, and
the history's film-sized statistics (watchers, the Gram of the modelled films, a digest, a
seeded sample of users), all as Beam transforms.

A CSV is read in byte ranges and a Parquet file by row groups (each range or row group one
element, spread by a Reshuffle); rows travel as :class:`storage.history.EventBatch` NumPy
columns, never one Python object per event. :class:`GroupUsers` sends each user's events to one
of ``buckets`` keys by a hash of the user id, so every bucket holds complete users: what is
computed per user (the Gram's pairs, candidates) is computed per bucket, vectorised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import typing
import uuid
from collections.abc import Iterable
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.bigquery import ReadFromBigQuery
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from models import collab
from models.cold_start import Holdout
from monitoring import progress
from schemas import DeadLetter
from storage.files import write_bytes
from storage.history import HISTORY_STAGE
from storage.history import EventBatch
from storage.history import csv_ranges
from storage.history import event_from_mapping
from storage.history import history_problem
from storage.history import parquet_row_groups
from storage.history import read_csv_range
from storage.history import read_row_group

DEAD_LETTER = "dead_letter"
USER_BUCKETS = 512
"""Keys users are spread over: complete users per key, and the parallelism of per-user steps."""
GRAM_FILE = "gram.npz"
GRAM_GROUPS = 32
"""Keys the user buckets are regrouped into for the Gram: at most one films x films partial per
key and bundle goes to the final sum (a bundle per bucket would shuffle one per bucket)."""
BQ_BATCH = 50_000
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """A stable 64-bit hash of int64 values (splitmix64's finaliser), the same everywhere."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def user_bucket(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each user id."""
    return (mix64(user_ids) % np.uint64(buckets)).astype(np.int64)


def batch_digest(batch: EventBatch) -> tuple[int, int]:
    """(sum of the events' 64-bit hashes mod 2**64, events): an order-free digest of a batch."""
    if not len(batch):
        return 0, 0
    rating = np.round(batch.rating.astype(np.float64) * 2).astype(np.int64)
    with np.errstate(over="ignore"):
        h = mix64(batch.user_id, 1) ^ mix64(batch.movie_id, 2)
        h = mix64(h.astype(np.int64) ^ (batch.watched_at * 16 + rating), 3)
        total = int(np.sum(h, dtype=np.uint64))
    return total, len(batch)


class WatchHistory(typing.NamedTuple):
    """Batches of checked watch events and the rows that could not be read."""

    batches: beam.PCollection
    dead_letter: beam.PCollection


class _RouteRowsFn(beam.DoFn):
    """Batches to the main output, dead letters to DEAD_LETTER; counts rows read, events and
    dead letters per reason (``rows_read == events + dead_lettered``)."""

    def __init__(self) -> None:
        self._rows = beam.metrics.Metrics.counter(HISTORY_STAGE, "rows_read")
        self._events = beam.metrics.Metrics.counter(HISTORY_STAGE, "events")
        self._dead = beam.metrics.Metrics.counter(HISTORY_STAGE, "dead_lettered")

    def process(self, item: tuple[int, EventBatch | DeadLetter]) -> Iterator:
        rows, value = item
        self._rows.inc(rows)
        if isinstance(value, DeadLetter):
            self._dead.inc()
            beam.metrics.Metrics.counter(HISTORY_STAGE, f"dead_lettered_{value.reason}").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, value)
        elif len(value):
            self._events.inc(len(value))
            progress.advance("history events", len(value))
            yield value


def _files(pattern: str) -> list[tuple[str, int]]:
    """(path, size) of the files a path or glob names, sorted."""
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted((m.path, m.size_in_bytes) for m in found)


def _csv_ranges(pattern: str) -> list[tuple]:
    return [r for path, size in _files(pattern) for r in csv_ranges(path, size)]


def _row_groups(pattern: str) -> list[tuple]:
    return [g for path, _ in _files(pattern) for g in parquet_row_groups(path)]


def _bq_batch(items: list) -> Iterator[tuple[int, EventBatch | DeadLetter]]:
    events = [i for i in items if not isinstance(i, DeadLetter)]
    yield len(events), EventBatch.of_events(events)
    for letter in items:
        if isinstance(letter, DeadLetter):
            yield 1, letter


class ReadWatchHistory(beam.PTransform):
    """Watch-event batches from CSV / Parquet files (local or gs://, a path or a glob) or a
    BigQuery table, read in splittable pieces."""

    def __init__(self, uri: str, run_id: str) -> None:
        super().__init__()
        self._uri = uri
        self._run_id = run_id
        if uri.startswith("bq://"):
            parts = uri[len("bq://") :].split(".")
            if len(parts) != 3 or not all(parts):
                raise ValueError(f"--watch_history={uri}: expected bq://PROJECT.DATASET.TABLE")
        else:  # the columns of the first file (pipelines.checks also wants rows, before)
            for path, _ in _files(uri)[:1]:
                problem = history_problem(path, need_rows=False)
                if problem:
                    raise ValueError(f"--watch_history={uri} {problem} (MovieLens ratings)")

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
                | "BatchRows" >> beam.BatchElements(min_batch_size=BQ_BATCH,
                                                    max_batch_size=BQ_BATCH)
                | "ToBatches" >> beam.FlatMap(_bq_batch)
            )  # fmt: skip
        else:  # files: byte ranges of a CSV or row groups of a Parquet file, spread out
            parquet = self._uri.endswith(".parquet")
            pieces, read = (_row_groups, read_row_group) if parquet else (_csv_ranges,
                                                                         read_csv_range)
            items = (
                pbegin
                | "HistoryPath" >> beam.Create([self._uri])
                | "Pieces" >> beam.FlatMap(pieces)
                | "SpreadPieces" >> beam.Reshuffle()
                | "ReadPiece" >> beam.FlatMap(lambda piece: read(*piece, run_id))
            )  # fmt: skip
        routed = items | "RouteBadRows" >> beam.ParDo(_RouteRowsFn()).with_outputs(
            DEAD_LETTER, main="batches"
        )
        return WatchHistory(routed.batches, routed[DEAD_LETTER])


def drop_hidden_films(
    keyed: tuple[int, EventBatch], holdout: Holdout
) -> tuple[int, EventBatch]:
    """A bucket of users without their watches of the films ``holdout`` hides."""
    bucket, batch = keyed
    films, inverse = np.unique(batch.movie_id, return_inverse=True)
    hidden = np.fromiter((holdout.is_hidden(int(m)) for m in films), bool, len(films))
    return bucket, batch.take(~hidden[inverse])


def _split_by_bucket(batch: EventBatch, buckets: int) -> Iterator[tuple[int, EventBatch]]:
    if not len(batch):
        return
    keys = user_bucket(batch.user_id, buckets)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    bounds = np.flatnonzero(np.diff(ordered)) + 1
    for part, start in zip(np.split(order, bounds), np.concatenate([[0], bounds]), strict=True):
        yield int(ordered[start]), batch.take(part)


def _merge_bucket(keyed: tuple[int, Iterable[EventBatch]]) -> tuple[int, EventBatch]:
    bucket, parts = keyed
    batch = EventBatch.concat(parts)
    order = np.lexsort((batch.movie_id, batch.watched_at, batch.user_id))
    return bucket, batch.take(order)


class GroupUsers(beam.PTransform):
    """Event batches -> (bucket, batch of complete users sorted by user, time, film)."""

    def __init__(self, buckets: int = USER_BUCKETS) -> None:
        super().__init__()
        if buckets < 1:
            raise ValueError("buckets must be >= 1")
        self._buckets = buckets

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "KeyByUserBucket" >> beam.FlatMap(_split_by_bucket, self._buckets)
            | "GroupByBucket" >> beam.GroupByKey()
            | "MergeBucket" >> beam.Map(_merge_bucket)
        )


def film_watchers(keyed: tuple[int, EventBatch]) -> tuple[np.ndarray, np.ndarray]:
    """(film ids, distinct watchers) of a bucket of complete users."""
    _, batch = keyed
    pairs = np.unique(np.stack([batch.user_id, batch.movie_id], axis=1), axis=0)
    return np.unique(pairs[:, 1], return_counts=True) if len(pairs) else (
        np.zeros(0, np.int64), np.zeros(0, np.int64))  # fmt: skip


class SumCountsFn(beam.CombineFn):
    """(ids, counts) arrays summed by id (film-sized accumulators)."""

    def create_accumulator(self):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accs):
        accs = list(accs)
        ids = np.concatenate([a[0] for a in accs]).astype(np.int64)
        counts = np.concatenate([a[1] for a in accs]).astype(np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)

    def extract_output(self, acc):
        return acc


class DigestFn(beam.CombineFn):
    """(hash sum mod 2**64, events) of event batches, in any order."""

    def create_accumulator(self):
        return 0, 0

    def add_input(self, acc, batch):
        total, count = batch_digest(batch)
        return (acc[0] + total) % 2**64, acc[1] + count

    def merge_accumulators(self, accs):
        totals = list(accs)
        return sum(a[0] for a in totals) % 2**64, sum(a[1] for a in totals)

    def extract_output(self, acc):
        return acc


class _GramPartialFn(beam.DoFn):
    """Adds buckets of complete users to one Gram per bundle, written to a file under
    ``folder`` when the bundle ends (its path is the output: a films x films array never travels
    through the runner's data plane); users are buffered and added many at a time (denser
    products, fewer scattered writes)."""

    FLUSH_EVENTS = 4_000_000

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def start_bundle(self) -> None:
        self._gram = None
        self._films = None
        self._buffer: list[EventBatch] = []
        self._buffered = 0

    def process(self, group: tuple[int, Iterable[EventBatch]], films: np.ndarray) -> None:
        if self._gram is None:
            self._gram = np.zeros((len(films), len(films)), np.float32)
            self._films = films
        for batch in group[1]:
            self._buffer.append(batch)
            self._buffered += len(batch)
            if self._buffered >= self.FLUSH_EVENTS:
                self._flush()

    def _flush(self) -> None:
        batch = EventBatch.concat(self._buffer)
        self._buffer, self._buffered = [], 0
        collab.accumulate_users(self._gram, self._films, batch.user_id, batch.movie_id)
        progress.advance("history users grouped", len(np.unique(batch.user_id)))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._gram is not None:
            self._flush()
            path = _partial_path(self._folder, "gram")
            write_npz(path, gram=self._gram)
            yield WindowedValue(path, MIN_TIMESTAMP, [GlobalWindow()])
        self._gram = None


class _SequencePartialFn(beam.DoFn):
    """Each bundle's users' sequence counts (what they watched next) as one sparse partial:
    (flat index, value) arrays, summed as they grow; written to a file under ``folder`` when
    the bundle ends (its path is the output)."""

    COMPACT_PAIRS = 20_000_000

    def __init__(self, folder: str) -> None:
        self._folder = folder

    def start_bundle(self) -> None:
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._pairs = 0

    def process(self, group: tuple[int, Iterable[EventBatch]], films: np.ndarray) -> None:
        for batch in group[1]:
            keys, values = collab.sequence_steps(films, batch.user_id, batch.movie_id,
                                                 batch.watched_at)  # fmt: skip
            self._keys.append(keys)
            self._values.append(values)
            self._pairs += len(keys)
            if self._pairs >= self.COMPACT_PAIRS:
                keys, values = collab.merge_steps(self._keys, self._values)
                self._keys, self._values, self._pairs = [keys], [values], len(keys)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._keys:
            keys, values = collab.merge_steps(self._keys, self._values)
            path = _partial_path(self._folder, "sequence")
            write_npz(path, keys=keys, values=values)
            yield WindowedValue(path, MIN_TIMESTAMP, [GlobalWindow()])
        self._keys, self._values, self._pairs = [], [], 0


PARTIALS_FOLDER = "partials"


def _partial_path(folder: str, kind: str) -> str:
    return FileSystems.join(folder, PARTIALS_FOLDER, f"{kind}-{uuid.uuid4().hex}.npz")


def _write_gram(
    _, gram_paths: list[str], sequence_paths: list[str], films: np.ndarray, folder: str
) -> str:  # fmt: skip
    """Sum the bundles' Gram and sequence partials into ``folder``/gram.npz (the form
    :meth:`HistoryStats.save` writes), delete the partials (and any a retried bundle left);
    returns the file's path. Holds two films x films arrays: the solve's machine does anyway."""
    gram = np.zeros((len(films), len(films)), np.float32)
    for path in sorted(gram_paths):
        gram += read_npz(path)["gram"]
    parts = [read_npz(path) for path in sorted(sequence_paths)]
    keys, values = collab.merge_steps([p["keys"] for p in parts], [p["values"] for p in parts])
    path = FileSystems.join(folder, GRAM_FILE)
    write_npz(path, gram=gram, sequence_keys=keys, sequence_values=values)
    pattern = FileSystems.join(folder, PARTIALS_FOLDER, "*.npz")
    leftover = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
    if leftover:
        FileSystems.delete(leftover)
    return path


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Which films the Gram holds, and the users sampled for the evaluation."""

    min_watches: int = 2
    max_films: int = 10_000
    sample_users: int = 0
    sample_seed: int = 0
    gram: bool = True


def _user_keys(keyed: tuple[int, EventBatch], seed: int, n: int) -> np.ndarray:
    """The ``n`` smallest (hash, user) keys of a bucket's users, as a 2-column array."""
    users = np.unique(keyed[1].user_id)
    keys = mix64(users, 1000 + seed).astype(np.float64)
    order = np.lexsort((users, keys))[:n]
    return np.stack([keys[order], users[order].astype(np.float64)], axis=1)


class SmallestKeysFn(beam.CombineFn):
    """The ``n`` smallest rows of (key, user) arrays: a seeded sample of users."""

    def __init__(self, n: int) -> None:
        self._n = n

    def create_accumulator(self):
        return np.zeros((0, 2))

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accs):
        rows = np.concatenate(list(accs))
        return rows[np.lexsort((rows[:, 1], rows[:, 0]))][: self._n]

    def extract_output(self, acc):
        return np.sort(acc[:, 1].astype(np.int64))


def _sample_events(keyed: tuple[int, EventBatch], users: np.ndarray) -> Iterator[EventBatch]:
    batch = keyed[1]
    chosen = batch.take(np.isin(batch.user_id, users))
    if len(chosen):
        yield chosen


@dataclasses.dataclass(frozen=True)
class HistoryStats:
    """What :class:`ComputeHistoryStats` found: film-sized arrays, a digest, a sample."""

    film_ids: np.ndarray
    watchers: np.ndarray
    gram: collab.FilmGram
    digest: str
    events: int
    users: int
    latest: int
    sample: EventBatch

    def save(self, folder: str) -> None:
        """Write the statistics under ``folder`` (NumPy files and a JSON summary)."""
        _write_summary(folder, self.film_ids, self.watchers, self.gram.films, self.digest,
                       self.events, self.users, self.latest, self.sample)  # fmt: skip
        sequence = {}
        if self.gram.sequence is not None:  # sparse: most film pairs never follow each other
            keys = np.flatnonzero(self.gram.sequence)
            values = self.gram.sequence.reshape(-1)[keys]
            sequence = {"sequence_keys": keys, "sequence_values": values}
        write_npz(FileSystems.join(folder, GRAM_FILE), gram=self.gram.gram, **sequence)

    @classmethod
    def load(cls, folder: str, gram: bool = True) -> HistoryStats:
        """The statistics :meth:`save` wrote (``gram=False``: an empty Gram, not read)."""
        films = read_npz(FileSystems.join(folder, "films.npz"))
        sample = read_npz(FileSystems.join(folder, "sample.npz"))
        with FileSystems.open(FileSystems.join(folder, "stats.json")) as handle:
            summary = json.loads(handle.read())
        arrays = read_npz(FileSystems.join(folder, GRAM_FILE)) if gram else {
            "gram": np.zeros((0, 0), np.float32)}  # fmt: skip
        sequence = None
        if "sequence_keys" in arrays:
            sequence = collab.dense_steps(
                films["gram_films"], (arrays["sequence_keys"], arrays["sequence_values"]))
        fg = collab.FilmGram(films["gram_films"], arrays["gram"], sequence)
        return cls(
            film_ids=films["film_ids"], watchers=films["watchers"], gram=fg,
            digest=summary["digest"],
            events=summary["events"], users=summary["users"], latest=summary["latest"],
            sample=EventBatch(**{k: sample[k] for k in sample}),
        )  # fmt: skip


def write_npz(path: str, **arrays: np.ndarray) -> None:
    """NumPy arrays as one .npz file (local or gs://), written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (local or gs://)."""
    with FileSystems.open(path) as handle:
        data = np.load(io.BytesIO(handle.read()))
        return {k: data[k] for k in data.files}


def _write_summary(
    folder: str, film_ids: np.ndarray, watchers: np.ndarray, gram_films: np.ndarray, digest: str,
    events: int, users: int, latest: int, sample: EventBatch,
) -> None:  # fmt: skip
    """Everything of :meth:`HistoryStats.save` but the Gram."""
    write_npz(FileSystems.join(folder, "films.npz"), film_ids=film_ids, watchers=watchers,
              gram_films=gram_films)  # fmt: skip
    write_npz(FileSystems.join(folder, "sample.npz"), **dataclasses.asdict(sample))
    summary = {"digest": digest, "events": events, "users": users, "latest": latest}
    write_bytes(FileSystems.join(folder, "stats.json"), json.dumps(summary).encode())


def _digest_text(digest: tuple[int, int]) -> str:
    total, events = digest
    return hashlib.sha256(f"{total}:{events}".encode()).hexdigest()


def _save_summary(
    _, folder: str, counts, digest, sample, films, latest, users, gram_file: str | None
) -> str:  # fmt: skip
    """Write the statistics but the Gram (``gram_file``: already written, or None when the
    Gram is not computed: an empty one is written)."""
    if gram_file is None:
        films = films[:0]
        write_npz(FileSystems.join(folder, GRAM_FILE), gram=np.zeros((0, 0), np.float32),
                  sequence_keys=np.zeros(0, np.int64), sequence_values=np.zeros(0, np.float32))
    _write_summary(folder, counts[0], counts[1], films, _digest_text(digest), digest[1], users,
                   latest, EventBatch.concat(sample))  # fmt: skip
    return folder


class ComputeHistoryStats(beam.PTransform):
    """(bucket, complete users) -> the folder ``save_to`` where one :class:`HistoryStats` is
    written (:meth:`HistoryStats.load` reads it): every film's distinct watchers, the Gram of
    the modelled films and their sequence counts, an order-free digest of the events, the
    number of users, the latest watch, and the events of a seeded sample of users. The Gram's
    partials go through files under ``save_to``, not through the runner."""

    def __init__(self, config: StatsConfig, save_to: str) -> None:
        super().__init__()
        if config.min_watches < 1 or config.max_films < 1 or config.sample_users < 0:
            raise ValueError("--cowatch_min_watches and --cowatch_max_films must be >= 1")
        self._config = config
        self._save_to = save_to

    def expand(self, users: beam.PCollection) -> beam.PCollection:
        config, folder = self._config, self._save_to
        counts = (
            users
            | "FilmWatchers" >> beam.Map(film_watchers)
            | "SumWatchers" >> beam.CombineGlobally(SumCountsFn())
        )
        films = counts | "ModelledFilms" >> beam.Map(
            lambda c: collab.select_films(c[0], c[1], config.min_watches, config.max_films)
        )
        side = beam.pvalue.AsSingleton
        gram_file = users.pipeline | "NoGram" >> beam.Create([None])
        if config.gram:
            groups = (
                users
                | "GramGroups" >> beam.Map(lambda kv: (kv[0] % GRAM_GROUPS, kv[1]))
                | "GroupForGram" >> beam.GroupByKey()
            )
            partials = (
                groups | "GramPartials" >> beam.ParDo(_GramPartialFn(folder), side(films)))
            steps = (
                groups
                | "SequencePartials" >> beam.ParDo(_SequencePartialFn(folder), side(films)))
            gram_file = gram_file | "WriteGram" >> beam.Map(
                _write_gram, beam.pvalue.AsList(partials), beam.pvalue.AsList(steps),
                side(films), folder)  # fmt: skip
        digest = (
            users
            | "Batches" >> beam.Map(lambda kv: kv[1])
            | "Digest" >> beam.CombineGlobally(DigestFn())
        )
        latest = (
            users
            | "LatestWatch" >> beam.Map(lambda kv: int(kv[1].watched_at.max(initial=0)))
            | "Latest" >> beam.CombineGlobally(lambda xs: max(xs, default=0))
        )
        user_count = (
            users
            | "UsersPerBucket" >> beam.Map(lambda kv: len(np.unique(kv[1].user_id)))
            | "Users" >> beam.CombineGlobally(sum)
        )
        n = config.sample_users
        sampled = (
            users
            | "UserKeys" >> beam.Map(_user_keys, config.sample_seed, n)
            | "SampleUsers" >> beam.CombineGlobally(SmallestKeysFn(n))
        )
        sample = (
            users
            | "SampleEvents" >> beam.FlatMap(_sample_events, beam.pvalue.AsSingleton(sampled))
            | "CollectSample" >> beam.combiners.ToList()
        )
        return (
            users.pipeline
            | "StatsSeed" >> beam.Create([None])
            | "Stats" >> beam.Map(
                _save_summary, folder, side(counts), side(digest), side(sample), side(films),
                side(latest), side(user_count), side(gram_file),
            )
        )  # fmt: skip


def stats_of_batch(batch: EventBatch, config: StatsConfig = StatsConfig()) -> HistoryStats:
    """What :class:`ComputeHistoryStats` finds, computed in memory (small histories: tests)."""
    keyed = (0, batch)
    film_ids, watchers = film_watchers(keyed)
    films = collab.select_films(film_ids, watchers, config.min_watches, config.max_films)
    gram = collab.gram_of_users(films, batch.user_id, batch.movie_id)
    steps = collab.sequence_steps(films, batch.user_id, batch.movie_id, batch.watched_at)
    sampled = SmallestKeysFn(config.sample_users)
    users = sampled.extract_output(_user_keys(keyed, config.sample_seed, config.sample_users))
    digest = batch_digest(batch)
    sequence = collab.dense_steps(films, steps) if len(films) else np.zeros_like(gram)
    return HistoryStats(
        film_ids=film_ids, watchers=watchers, gram=collab.FilmGram(films, gram, sequence),
        digest=_digest_text(digest), events=digest[1], users=len(np.unique(batch.user_id)),
        latest=int(batch.watched_at.max(initial=0)),
        sample=EventBatch.concat(list(_sample_events(keyed, users))),
    )  # fmt: skip
