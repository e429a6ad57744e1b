"""Deterministic sharded writers: TFRecord and Parquet files with stable names and contents.

Each element goes to shard ``crc32(key) % num_shards``; every shard file is written (empty ones
too), sorted by key, under the name ``{prefix}-SSSSS-of-NNNNN{suffix}``, through Beam's
FileSystems (local paths and ``gs://``), first to a temporary name and then renamed into place.
Re-running the same inputs therefore yields byte-identical files.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from schemas import DeadLetter
from schemas import Record
from storage.files import read_tfrecords
from storage.files import shard_of
from storage.files import shard_path
from storage.files import write_bytes
from storage.posters import read_film_index
from storage.runs import published_paths


class _WriteShardFn(beam.DoFn):
    def __init__(self, prefix, suffix, num_shards, encode, sort_key) -> None:
        self._prefix = prefix
        self._suffix = suffix
        self._num_shards = num_shards
        self._encode = encode
        self._sort_key = sort_key
        self._records = beam.metrics.Metrics.counter("sinks", "records_written")

    def process(self, shard_and_values: tuple[int, Iterable]) -> Iterator[tuple[str, int]]:
        index, values = shard_and_values
        records = sorted((v for v in values if v is not None), key=self._sort_key)
        path = shard_path(self._prefix, index, self._num_shards, self._suffix)
        write_bytes(path, self._encode(records))
        self._records.inc(len(records))
        yield path, len(records)


def _write_empty_shards(
    written: list[tuple[str, int]],
    prefix: str,
    suffix: str,
    num_shards: int,
    encode: Callable[[Iterable[Any]], bytes],
) -> Iterator[tuple[str, int]]:
    """(path, 0) of each shard that no group wrote, after writing it (empty)."""
    present = {path for path, _ in written}
    for index in range(num_shards):
        path = shard_path(prefix, index, num_shards, suffix)
        if path not in present:
            write_bytes(path, encode([]))
            yield path, 0


class GroupByShard(beam.PTransform):
    """records -> (shard index, records), for each shard that holds a record.

    A record's shard is ``shard_of(shard_key(record), num_shards)``. No Flatten sits in front of
    the GroupByKey (the FnApiRunner would copy every record once more through a stage of its
    own); :class:`WriteGroupedShards` writes the shards that no record reached.
    """

    def __init__(self, num_shards: int, shard_key: Callable[[Any], Any]) -> None:
        super().__init__()
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        self._num_shards = num_shards
        self._shard_key = shard_key

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        shard_key = self._shard_key
        num_shards = self._num_shards
        return (
            records
            | "KeyByShard" >> beam.Map(lambda r: (shard_of(shard_key(r), num_shards), r))
            | "GroupByKey" >> beam.GroupByKey()
        )


class WriteGroupedShards(beam.PTransform):
    """(shard index, records) -> one deterministic file per shard; outputs (path, record count).

    Records are sorted by ``sort_key`` within a file; ``None`` values are skipped. Every one of
    ``num_shards`` files is written: a shard with no group is written empty, once the groups are.
    """

    def __init__(
        self,
        prefix: str,
        suffix: str,
        num_shards: int,
        encode: Callable[[Iterable[Any]], bytes],
        sort_key: Callable[[Any], Any],
    ) -> None:
        super().__init__()
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        self._fn = _WriteShardFn(prefix, suffix, num_shards, encode, sort_key)
        self._files = (prefix, suffix, num_shards, encode)

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        written = groups | "WriteShard" >> beam.ParDo(self._fn)
        empty = (
            written
            | "WrittenShards" >> beam.combiners.ToList()
            | "WriteEmptyShards" >> beam.FlatMap(_write_empty_shards, *self._files)
        )
        return (written, empty) | "EveryShard" >> beam.Flatten()


class WriteShards(beam.PTransform):
    """Writes records to ``num_shards`` deterministic files; outputs (path, record count)."""

    def __init__(
        self,
        prefix: str,
        suffix: str,
        num_shards: int,
        encode: Callable[[Iterable[Any]], bytes],
        sort_key: Callable[[Any], Any],
    ) -> None:
        super().__init__()
        self._group = GroupByShard(num_shards, sort_key)
        self._write = WriteGroupedShards(prefix, suffix, num_shards, encode, sort_key)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "GroupByShard" >> self._group | "WriteShards" >> self._write


DEAD_LETTER_TAG = "dead_letter"
CORRUPT_FILE = "corrupt_tfrecord"
BAD_RECORD = "bad_record"
UNREADABLE_SHARD = "unreadable_shard"


class TFRecordOutputs(NamedTuple):
    """The outputs of :class:`ReadTFRecordFiles`."""

    records: beam.PCollection
    dead_letter: beam.PCollection


def matched_paths(path_glob: str) -> list[str]:
    """The files matching a glob (local or gs://) in published runs, sorted."""
    return published_paths(path_glob)


def indexed_paths(path_glob: str) -> list[str]:
    """The matched files, and every shard the film indexes of their run folders list (so a
    shard that has gone missing is read, and its films dead-lettered, not skipped), sorted."""
    paths = set(matched_paths(path_glob))
    for folder in sorted({posixpath.dirname(p) for p in paths}):
        for name in read_film_index(folder) or {}:
            paths.add(FileSystems.join(folder, name))
    return sorted(paths)


class _ReadTFRecordFileFn(beam.DoFn):
    """One TFRecord file's records; corruption becomes a DeadLetter naming the file.

    With ``film_index`` (poster shards of a scrape run that recorded which films each shard
    holds, :func:`storage.posters.read_film_index`), every film of the shard that is not read
    (a corrupt or truncated file, a missing file, a record that does not parse) becomes a
    DeadLetter of its own, reason ``unreadable_shard``, naming the film: no film vanishes.
    """

    def __init__(
        self, table: type[Record], run_id: str, stage: str, namespace: str,
        film_index: bool = False,
    ) -> None:  # fmt: skip
        self._table = table
        self._run_id = run_id
        self._stage = stage
        self._film_index = film_index
        self._indexes: dict[str, dict[str, frozenset[int]] | None] = {}
        self._records = beam.metrics.Metrics.counter(namespace, "records_read")
        self._dead = beam.metrics.Metrics.counter(namespace, "unreadable_records")
        self._lost = beam.metrics.Metrics.counter(namespace, "unreadable_films")

    def _expected(self, path: str) -> frozenset[int] | None:
        """The films the scrape put in this shard, or None without a film index."""
        if not self._film_index:
            return None
        folder = posixpath.dirname(path)
        if folder not in self._indexes:
            self._indexes[folder] = read_film_index(folder)
        index = self._indexes[folder]
        return None if index is None else index.get(posixpath.basename(path), frozenset())

    def process(self, path: str) -> Iterator[Record | beam.pvalue.TaggedOutput]:
        expected = self._expected(path)
        try:
            with FileSystems.open(path) as handle:
                data = handle.read()
        except (OSError, BeamIOError) as exc:
            if expected is None:
                raise
            yield from self._unread(path, expected, set(), f"the file cannot be read ({exc})")
            return
        frames = read_tfrecords(data)
        index, read_ids, problems = 0, set(), []
        while True:
            try:
                raw = next(frames)
            except StopIteration:
                break
            except ValueError as exc:  # framing or CRC: the rest of the file cannot be trusted
                if expected is not None:
                    problems.append(f"{exc} after {index} records")
                    break
                detail = (
                    f"{path}: {exc}; the {index} records before it were read, the rest of the "
                    "file is skipped (re-run the stage that wrote it)"
                )
                yield self._dead_letter(CORRUPT_FILE, detail, f"file={path} record={index}")
                return
            try:
                record = self._table.from_example(raw)
            except Exception as exc:  # any unparseable record is dead-lettered, with the reason
                if expected is not None:
                    problems.append(f"record {index} is not a {self._table.TABLE} example: {exc}")
                else:
                    detail = f"{path}: record {index} is not a {self._table.TABLE} example: {exc}"
                    yield self._dead_letter(BAD_RECORD, detail, f"file={path} record={index}")
            else:
                self._records.inc()
                read_ids.add(getattr(record, "movie_id", None))
                yield record
            index += 1
        if expected is not None:
            why = "; ".join(problems) or "it is not in the file"
            yield from self._unread(path, expected, read_ids, why)

    def _unread(
        self, path: str, expected: frozenset[int], read_ids: set, why: str
    ) -> Iterator[beam.pvalue.TaggedOutput]:
        """A DeadLetter for each film the shard should hold and did not give."""
        missing = sorted(expected - read_ids)
        for movie_id in missing:
            self._lost.inc()
            detail = (
                f"{path}: film {movie_id} was written to this shard by the scrape but could not "
                f"be read: {why} ({len(missing)} of its {len(expected)} films lost; re-run the "
                "scrape to write it again)"
            )
            yield self._dead_letter(
                UNREADABLE_SHARD, detail, f"file={path} movie_id={movie_id}", movie_id
            )

    def _dead_letter(
        self, reason: str, detail: str, input_row: str, movie_id: int | None = None
    ) -> beam.pvalue.TaggedOutput:
        self._dead.inc()
        return beam.pvalue.TaggedOutput(
            DEAD_LETTER_TAG,
            DeadLetter(
                run_id=self._run_id,
                stage=self._stage,
                reason=reason,
                detail=" ".join(detail.split())[:2000],
                input_row=input_row,
                attempts=0,
                movie_id=movie_id,
            ),
        )


class ReadTFRecordFiles(beam.PTransform):
    """The records of the TFRecord files matching a glob, read file by file (spread over workers).

    A file whose framing or CRC is corrupt becomes one DeadLetter (stage ``stage``, reason
    ``corrupt_tfrecord``) naming the file and the record where the corruption starts; the
    records before it are kept and the job goes on. A record that is not an example of ``table``
    becomes a DeadLetter too (reason ``bad_record``). With ``film_index`` (poster shards), each
    film a shard should hold and did not give is one DeadLetter instead (``unreadable_shard``).
    """

    def __init__(
        self, path_glob: str, table: type[Record], run_id: str, stage: str = "read",
        namespace: str = "sinks", film_index: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if not path_glob:
            raise ValueError("ReadTFRecordFiles needs a file glob")
        self._glob = path_glob
        self._table = table
        self._run_id = run_id
        self._stage = stage
        self._namespace = namespace
        self._film_index = film_index

    def expand(self, pbegin: beam.pvalue.PBegin) -> TFRecordOutputs:
        """Wire matching, spreading and reading of the files."""
        match = indexed_paths if self._film_index else matched_paths
        outputs = (
            pbegin
            | "Glob" >> beam.Create([self._glob])
            | "MatchFiles" >> beam.FlatMap(match)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFiles"
            >> beam.ParDo(
                _ReadTFRecordFileFn(self._table, self._run_id, self._stage, self._namespace,
                                    self._film_index)  # fmt: skip
            ).with_outputs(DEAD_LETTER_TAG, main="records")
        )
        return TFRecordOutputs(outputs.records, outputs[DEAD_LETTER_TAG])
