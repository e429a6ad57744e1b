"""TFRecord and Parquet files read and written whole, with stable shard names and contents.

Plain functions over Beam's FileSystems (local paths and ``gs://``), no pipelines: TFRecord
files (framed by :mod:`storage.tfrecord`, both CRCs checked), one Parquet file per list of
records, the stable shard of a key and the name of a shard file, and atomic writes (a temporary
name, then renamed). Readers take only the files of published runs (:mod:`storage.runs`). The
Beam writers and readers built on them are in :mod:`transforms.sinks`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import Record
from storage.runs import TEMPORARY_SUFFIX
from storage.runs import published_paths
from storage.tfrecord import read_tfrecords
from storage.tfrecord import tfrecord_frame


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


def read_parquet_table(path_glob: str, table: type[Record]) -> pa.Table:
    """The table's columns of every Parquet file matching ``path_glob`` in published runs, as
    one Arrow table (no Python object per row)."""
    parts = []
    for path in published_paths(path_glob):
        with FileSystems.open(path) as handle:
            parts.append(pq.read_table(pa.BufferReader(handle.read())).select(
                table.column_names()))  # fmt: skip
    if not parts:
        return table.arrow_schema().empty_table()
    return pa.concat_tables(parts)


def read_tfrecord_records(path_glob: str, table: type[Record]) -> list[Record]:
    """Every record of the TFRecord files matching ``path_glob`` (local or gs://) in published
    runs.

    A corrupt file raises a ValueError that names it; pipelines read with
    :class:`transforms.sinks.ReadTFRecordFiles`, which dead-letters it instead.
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
