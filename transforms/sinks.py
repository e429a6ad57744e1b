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

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import Record

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


def read_parquet_records(path_glob: str, table: type[Record]) -> list[Record]:
    """Every record of the Parquet files matching ``path_glob`` (local or gs://)."""
    rows: list[Record] = []
    for path in sorted(m.path for r in FileSystems.match([path_glob]) for m in r.metadata_list):
        with FileSystems.open(path) as handle:
            arrow = pq.read_table(pa.BufferReader(handle.read()))
        rows.extend(table.from_arrow(arrow))
    return rows


def read_tfrecord_records(path_glob: str, table: type[Record]) -> list[Record]:
    """Every record of the TFRecord files matching ``path_glob`` (local or gs://)."""
    rows: list[Record] = []
    for path in sorted(m.path for r in FileSystems.match([path_glob]) for m in r.metadata_list):
        with FileSystems.open(path) as handle:
            rows.extend(table.from_example(record) for record in read_tfrecords(handle.read()))
    return rows


def write_bytes(path: str, data: bytes) -> None:
    """Write a file atomically through FileSystems (temporary name, then rename)."""
    temp = f"{path}.tmp-writing"
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
        if num_shards < 1:
            raise ValueError("num_shards must be >= 1")
        self._prefix = prefix
        self._suffix = suffix
        self._num_shards = num_shards
        self._encode = encode
        self._sort_key = sort_key

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        sort_key = self._sort_key
        num_shards = self._num_shards
        keyed = records | "KeyByShard" >> beam.Map(lambda r: (shard_of(sort_key(r), num_shards), r))
        every_shard = records.pipeline | "AllShards" >> beam.Create(
            [(i, None) for i in range(num_shards)]
        )
        return (
            (keyed, every_shard)
            | "WithEmptyShards" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard"
            >> beam.ParDo(
                _WriteShardFn(self._prefix, self._suffix, num_shards, self._encode, sort_key)
            )
        )
