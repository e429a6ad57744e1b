"""Deterministic sharded writers: TFRecord and Parquet files with stable names and contents.

Each element goes to shard ``crc32(key) % num_shards``; every shard file is written (empty ones
too), sorted by key, under the name ``{prefix}-SSSSS-of-NNNNN{suffix}``, through Beam's
FileSystems (local paths and ``gs://``), first to a temporary name and then renamed into place.
Re-running the same inputs therefore yields byte-identical files.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any
from typing import NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import DeadLetter
from schemas import Record
from transforms.runs import TEMPORARY_SUFFIX
from transforms.runs import published_paths

try:
    import google_crc32c

    def _crc32c(data: bytes) -> int:
        return google_crc32c.value(data)

except ImportError:  # pragma: no cover - google-crc32c ships with google-cloud-storage
    from apache_beam.io.tfrecordio import _default_crc32c_fn as _crc32c


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """One record in TFRecord framing (length, masked CRC32C of length, data, masked CRC)."""
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", _masked_crc(length))
        + record
        + struct.pack("<I", _masked_crc(record))
    )


def read_tfrecords(data: bytes) -> Iterator[bytes]:
    """The records of a TFRecord file's bytes, checking both CRCs."""
    offset = 0
    while offset < len(data):
        header = data[offset : offset + 12]
        if len(header) < 12:
            raise ValueError(f"truncated TFRecord header at byte {offset}")
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:12])
        if _masked_crc(header[:8]) != length_crc:
            raise ValueError(f"corrupt TFRecord length CRC at byte {offset}")
        start = offset + 12
        record = data[start : start + length]
        footer = data[start + length : start + length + 4]
        if len(record) != length or len(footer) != 4:
            raise ValueError(f"truncated TFRecord at byte {offset}")
        if _masked_crc(record) != struct.unpack("<I", footer)[0]:
            raise ValueError(f"corrupt TFRecord data CRC at byte {offset}")
        yield record
        offset = start + length + 4


def shard_of(key: Any, num_shards: int) -> int:
    """The stable shard index of a key (the same in every process and run)."""
    return zlib.crc32(repr(key).encode("utf-8")) % num_shards


def shard_path(prefix: str, index: int, num_shards: int, suffix: str) -> str:
    """The deterministic name of one shard."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


def encode_tfrecord_file(records: Iterable[Record]) -> bytes:
    """A TFRecord file holding each record as a ``tf.train.Example``."""
    return b"".join(tfrecord_frame(r.to_example()) for r in records)


def parquet_encoder(
    table: type[Record], list_size: int | None = None
) -> Callable[[Iterable[Record]], bytes]:
    """An encoder writing records of ``table`` as one Parquet file."""

    def encode(records: Iterable[Record]) -> bytes:
        arrow = table.to_arrow(list(records), list_size)
        buffer = io.BytesIO()
        pq.write_table(arrow, buffer, compression="zstd")
        return buffer.getvalue()

    return encode


def read_parquet_records(
    path_glob: str, table: type[Record], include_unpublished: bool = False
) -> list[Record]:
    """Every record of the Parquet files matching ``path_glob`` (local or gs://) in published
    runs (``include_unpublished``: a stage reading its own run before publishing it)."""
    rows: list[Record] = []
    for path in published_paths(path_glob, include_unpublished):
        with FileSystems.open(path) as handle:
            arrow = pq.read_table(pa.BufferReader(handle.read()))
        rows.extend(table.from_arrow(arrow))
    return rows


def read_tfrecord_records(path_glob: str, table: type[Record]) -> list[Record]:
    """Every record of the TFRecord files matching ``path_glob`` (local or gs://) in published
    runs.

    A corrupt file raises a ValueError that names it; pipelines read with
    :class:`ReadTFRecordFiles`, which dead-letters it instead.
    """
    rows: list[Record] = []
    for path in published_paths(path_glob):
        with FileSystems.open(path) as handle:
            data = handle.read()
        try:
            rows.extend(table.from_example(record) for record in read_tfrecords(data))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return rows


def write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically through FileSystems (temporary name, then rename)."""
    temp = f"{path}{TEMPORARY_SUFFIX}"
    with FileSystems.create(temp) as handle:
        handle.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temp], [path])


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


class GroupByShard(beam.PTransform):
    """records -> (shard index, records) for every one of ``num_shards`` shards.

    A record's shard is ``shard_of(shard_key(record), num_shards)``; every shard is present, an
    empty one holding only ``None`` (so that each still gets its file).
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
        keyed = records | "KeyByShard" >> beam.Map(
            lambda r: (shard_of(shard_key(r), num_shards), r)
        )
        every_shard = records.pipeline | "AllShards" >> beam.Create(
            [(i, None) for i in range(num_shards)]
        )
        return (keyed, every_shard) | "WithEmptyShards" >> beam.Flatten() | beam.GroupByKey()


class WriteGroupedShards(beam.PTransform):
    """(shard index, records) -> one deterministic file per shard; outputs (path, record count).

    Records are sorted by ``sort_key`` within a file; ``None`` values are skipped.
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

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        return groups | "WriteShard" >> beam.ParDo(self._fn)


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


class TFRecordOutputs(NamedTuple):
    """The outputs of :class:`ReadTFRecordFiles`."""

    records: beam.PCollection
    dead_letter: beam.PCollection


def matched_paths(path_glob: str) -> list[str]:
    """The files matching a glob (local or gs://) in published runs, sorted."""
    return published_paths(path_glob)


class _ReadTFRecordFileFn(beam.DoFn):
    """One TFRecord file's records; corruption becomes a DeadLetter naming the file."""

    def __init__(self, table: type[Record], run_id: str, stage: str, namespace: str) -> None:
        self._table = table
        self._run_id = run_id
        self._stage = stage
        self._records = beam.metrics.Metrics.counter(namespace, "records_read")
        self._dead = beam.metrics.Metrics.counter(namespace, "unreadable_records")

    def process(self, path: str) -> Iterator[Record | beam.pvalue.TaggedOutput]:
        with FileSystems.open(path) as handle:
            data = handle.read()
        frames = read_tfrecords(data)
        index = 0
        while True:
            try:
                raw = next(frames)
            except StopIteration:
                return
            except ValueError as exc:  # framing or CRC: the rest of the file cannot be trusted
                detail = (
                    f"{path}: {exc}; the {index} records before it were read, the rest of the "
                    "file is skipped (re-run the stage that wrote it)"
                )
                yield self._dead_letter(CORRUPT_FILE, detail, f"file={path} record={index}")
                return
            try:
                record = self._table.from_example(raw)
            except Exception as exc:  # any unparseable record is dead-lettered, with the reason
                detail = f"{path}: record {index} is not a {self._table.TABLE} example: {exc}"
                yield self._dead_letter(BAD_RECORD, detail, f"file={path} record={index}")
            else:
                self._records.inc()
                yield record
            index += 1

    def _dead_letter(self, reason: str, detail: str, input_row: str) -> beam.pvalue.TaggedOutput:
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
            ),
        )


class ReadTFRecordFiles(beam.PTransform):
    """The records of the TFRecord files matching a glob, read file by file (spread over workers).

    A file whose framing or CRC is corrupt becomes one DeadLetter (stage ``stage``, reason
    ``corrupt_tfrecord``) naming the file and the record where the corruption starts; the
    records before it are kept and the job goes on. A record that is not an example of ``table``
    becomes a DeadLetter too (reason ``bad_record``).
    """

    def __init__(
        self, path_glob: str, table: type[Record], run_id: str, stage: str = "read",
        namespace: str = "sinks",
    ) -> None:  # fmt: skip
        super().__init__()
        if not path_glob:
            raise ValueError("ReadTFRecordFiles needs a file glob")
        self._glob = path_glob
        self._table = table
        self._run_id = run_id
        self._stage = stage
        self._namespace = namespace

    def expand(self, pbegin: beam.pvalue.PBegin) -> TFRecordOutputs:
        """Wire matching, spreading and reading of the files."""
        outputs = (
            pbegin
            | "Glob" >> beam.Create([self._glob])
            | "MatchFiles" >> beam.FlatMap(matched_paths)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFiles"
            >> beam.ParDo(
                _ReadTFRecordFileFn(self._table, self._run_id, self._stage, self._namespace)
            ).with_outputs(DEAD_LETTER_TAG, main="records")
        )
        return TFRecordOutputs(outputs.records, outputs[DEAD_LETTER_TAG])
