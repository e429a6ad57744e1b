"""The warehouse the downstream recommender reads: BigQuery on GCP, DuckDB locally.

Either way the job writes a date's rows as Parquet into a staging folder and leaves the published
date alone; after the job one step replaces the date's rows of every table.
``--warehouse=duckdb:///path/file.duckdb`` keeps the rows as Parquet next to the database
(``{db}_parquet/{table}/run_date=YYYY-MM-DD/``, staged under ``{db}_parquet/_staging/``), and
the database's tables are views over them: the staged files become a new version of the date,
published for DuckDB and the Parquet readers at once by replacing one symlink, an atomic rename
on local disk (:mod:`storage.local_warehouse`; a DuckDB warehouse is always a local file).
``--warehouse=bq://project.dataset`` stages under ``{output}/bigquery/_staging/`` (gs:// on GCP,
where no rename is atomic); the staged files are loaded into staging tables and one BigQuery
multi-statement transaction swaps the date into the day-partitioned tables
(:mod:`storage.bigquery`). A killed job leaves the old date intact, and a rerun of a date
replaces its rows. A row with a NaN or infinite number (a score) is refused before the write: it
becomes a dead letter instead.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
import math
import os
from collections.abc import Iterator
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import DeadLetter
from schemas import Kind
from schemas import Record
from storage import bigquery
from storage import local_warehouse
from storage.files import parquet_encoder
from storage.files import shard_path
from storage.files import write_bytes
from storage.shrink import ShrinkGuard
from storage.shrink import ShrinkRefused
from transforms.sinks import WriteShards

WAREHOUSE_STAGE = "warehouse"
REFUSED = "refused"
STAGING_FOLDER = "_staging"


@dataclasses.dataclass(frozen=True)
class Warehouse:
    """Where tables go: kind 'duckdb' (target: a .duckdb path) or 'bq' (target: project.dataset,
    staged under ``staging_root``)."""

    kind: str
    target: str
    staging_root: str = ""

    @classmethod
    def parse(cls, uri: str, staging_root: str = "") -> Warehouse:
        """Parse ``bq://project.dataset`` (staging its Parquet under ``staging_root``) or
        ``duckdb:///path/file.duckdb``."""
        if uri.startswith("bq://"):
            target = uri[len("bq://") :]
            if target.count(".") != 1 or not all(target.split(".")):
                raise ValueError(f"--warehouse={uri}: expected bq://PROJECT.DATASET")
            return cls("bq", target, staging_root)
        if uri.startswith("duckdb://"):
            path = uri[len("duckdb://") :]
            if not path.endswith(".duckdb"):
                raise ValueError(f"--warehouse={uri}: expected duckdb:///path/to/file.duckdb")
            return cls("duckdb", path)
        raise ValueError(
            f"--warehouse={uri}: use bq://PROJECT.DATASET or duckdb:///path/to/file.duckdb"
        )

    @property
    def parquet_root(self) -> str:
        """Folder of the Parquet that DuckDB's views read, or of the staged Parquet (BigQuery)."""
        if self.kind == "bq":
            return self.staging_root
        return self.target[: -len(".duckdb")] + "_parquet"

    def partition_dir(self, table: type[Record], run_date: datetime.date) -> str:
        """The published Parquet folder of one table's run date (DuckDB warehouse)."""
        return local_warehouse.partition_dir(self.parquet_root, table.TABLE, run_date)

    def staging_dir(self, table: type[Record], run_date: datetime.date) -> str:
        """Where a job writes one table's run date before it is published."""
        folder = local_warehouse.date_folder(run_date)
        return os.path.join(self.parquet_root, STAGING_FOLDER, table.TABLE, folder)

    @property
    def project_dataset(self) -> tuple[str, str]:
        """(project, dataset) of a BigQuery warehouse."""
        project, dataset = self.target.split(".")
        return project, dataset


def to_bigquery_row(record: Record) -> dict:
    """A row as the JSON-like dict BigQuery loads (dates/timestamps ISO, bytes base64)."""
    row = record.to_dict()
    for name, spec in record.columns():
        value = row[name]
        if value is None:
            continue
        if spec.kind in (Kind.DATE, Kind.TIMESTAMP):
            row[name] = value.isoformat()
        elif spec.kind == Kind.BYTES:
            row[name] = base64.b64encode(value).decode("ascii")
    return row


def clear_staging(warehouse: Warehouse, table: type[Record], run_date: datetime.date) -> None:
    """Remove what an earlier, unpublished job staged for a run date (the published partition
    stays as it is until the new one replaces it)."""
    folder = warehouse.staging_dir(table, run_date)
    if "://" in folder:  # an object store has no folders to test for: delete what it holds
        staged = FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list
        if staged:
            FileSystems.delete([m.path for m in staged])
    elif FileSystems.exists(folder):
        FileSystems.delete([folder])


def non_finite_columns(record: Record) -> list[str]:
    """The record's float columns that hold NaN or an infinity."""
    bad = []
    for name, spec in record.columns():
        if spec.kind in (Kind.FLOAT32, Kind.FLOAT64):
            value = getattr(record, name)
            values = (value or ()) if spec.repeated else (value,)
            if any(v is not None and not math.isfinite(v) for v in values):
                bad.append(name)
    return bad


class _RefuseNonFiniteFn(beam.DoFn):
    """Rows whose numbers are all finite pass; the others go to REFUSED as dead letters."""

    def __init__(self, table: str, run_id: str) -> None:
        self._table = table
        self._run_id = run_id
        self._refused = beam.metrics.Metrics.counter(WAREHOUSE_STAGE, f"{table}_refused")

    def process(self, row: Record):
        bad = non_finite_columns(row)
        if not bad:
            yield row
            return
        self._refused.inc()
        yield beam.pvalue.TaggedOutput(REFUSED, _refusal(row, type(row), self._run_id))


class WriteWarehouseTable(beam.PTransform):
    """Writes one table's rows for one run date to the warehouse; outputs the rows it refused
    (a NaN or infinite number) as DeadLetter records."""

    def __init__(
        self,
        warehouse: Warehouse,
        table: type[Record],
        run_date: datetime.date,
        sort_key,
        num_shards: int = 1,
        run_id: str | None = None,
    ) -> None:
        super().__init__()
        self._warehouse = warehouse
        self._table = table
        self._run_date = run_date
        self._sort_key = sort_key
        self._num_shards = num_shards
        self._run_id = run_id or run_date.isoformat()

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        checked = rows | "RefuseNonFinite" >> beam.ParDo(
            _RefuseNonFiniteFn(self._table.TABLE, self._run_id)
        ).with_outputs(REFUSED, main="rows")
        _ = self._write(checked.rows)
        return checked[REFUSED]

    def _write(self, rows: beam.PCollection) -> beam.PCollection:
        warehouse, table = self._warehouse, self._table
        prefix = os.path.join(warehouse.staging_dir(table, self._run_date), table.TABLE)
        return rows | "WriteParquet" >> WriteShards(
            prefix, ".parquet", self._num_shards, parquet_encoder(table), self._sort_key
        )


class _WriteTableShardFn(beam.DoFn):
    """(shard, Arrow table) -> the shard's Parquet file (rows with a non-finite number left
    out, as REFUSED dead letters); the main output is the path written."""

    def __init__(self, prefix: str, shards: int, table: type[Record], run_id: str) -> None:
        self._prefix = prefix
        self._shards = shards
        self._table = table
        self._run_id = run_id
        self._refused = beam.metrics.Metrics.counter(WAREHOUSE_STAGE, f"{table.TABLE}_refused")

    def process(self, keyed: tuple[int, pa.Table]) -> Iterator:
        shard, arrow = keyed
        finite = np.ones(arrow.num_rows, bool)
        for name, spec in self._table.columns():
            if spec.kind in (Kind.FLOAT32, Kind.FLOAT64) and not spec.repeated:
                values = arrow.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                finite &= np.isfinite(values)
        if not finite.all():
            for row in self._table.from_arrow(arrow.filter(pa.array(~finite))):
                self._refused.inc()
                yield beam.pvalue.TaggedOutput(REFUSED, _refusal(row, self._table, self._run_id))
            arrow = arrow.filter(pa.array(finite))
        path = shard_path(self._prefix, shard, self._shards, ".parquet")
        buffer = io.BytesIO()
        pq.write_table(arrow, buffer, compression="zstd")
        write_bytes(path, buffer.getvalue())
        yield path


def _refusal(row: Record, table: type[Record], run_id: str) -> DeadLetter:
    bad = non_finite_columns(row)
    return DeadLetter(
        run_id=run_id, stage=WAREHOUSE_STAGE, reason=f"{bad[0]}_not_finite",
        detail=f"{table.TABLE} row not written: {', '.join(bad)} not finite",
        input_row=json.dumps(to_bigquery_row(row), sort_keys=True), attempts=0,
        movie_id=getattr(row, "movie_id", None),
    )  # fmt: skip


def _at_least_one_file(written: list[str], prefix: str, shards: int, table: type[Record]) -> None:
    """An empty shard 0 when no shard was written, so the date is published (with no rows)."""
    if not written:
        write_bytes(shard_path(prefix, 0, shards, ".parquet"), parquet_encoder(table)([]))


class WriteWarehouseShards(beam.PTransform):
    """Writes one table's rows for one run date, given as (shard, Arrow table) pairs (a shard
    per bucket of users: user-sized tables are never gathered in one place); outputs the rows
    it refused (a NaN or infinite number) as DeadLetter records."""

    def __init__(
        self, warehouse: Warehouse, table: type[Record], run_date: datetime.date, shards: int,
        run_id: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self._prefix = os.path.join(warehouse.staging_dir(table, run_date), table.TABLE)
        self._table = table
        self._shards = shards
        self._run_id = run_id or run_date.isoformat()

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        fn = _WriteTableShardFn(self._prefix, self._shards, self._table, self._run_id)
        written = tables | "WriteShard" >> beam.ParDo(fn).with_outputs(REFUSED, main="paths")
        _ = (
            written.paths
            | "WrittenShards" >> beam.combiners.ToList()
            | "AtLeastOneFile" >> beam.Map(
                _at_least_one_file, self._prefix, self._shards, self._table)
        )  # fmt: skip
        return written[REFUSED]


def clear_unpublished(warehouse: Warehouse) -> list[str]:
    """Delete what a killed publish left beside the published dates of a DuckDB warehouse."""
    return local_warehouse.clear_unpublished(warehouse.target, warehouse.parquet_root)


def publish_partitions(
    warehouse: Warehouse, tables: Sequence[type[Record]], run_date: datetime.date,
    guard: ShrinkGuard | None = None,
) -> dict[str, int]:  # fmt: skip
    """Replace a run date of ``tables`` with what the job staged, in one step that DuckDB and
    the Parquet partitions see at once (:mod:`storage.local_warehouse`; ``guard``: refused, as
    :mod:`storage.shrink` says, when the candidates shrank). Returns the rows now held per
    table for the date."""
    staged = {table: warehouse.staging_dir(table, run_date) for table in tables}
    return local_warehouse.publish_date(
        warehouse.target, warehouse.parquet_root, staged, run_date, guard
    )


def publish_bigquery(
    warehouse: Warehouse, tables: Sequence[type[Record]], run_date: datetime.date,
    guard: ShrinkGuard | None = None,
) -> dict[str, int]:  # fmt: skip
    """Replace a run date of ``tables`` in the BigQuery dataset with what the job staged (one
    transaction, refused as :func:`publish_partitions` is), then delete the staged files.
    Returns the rows now held per table for the date."""
    project, dataset = warehouse.project_dataset
    staged = {}
    for table in tables:
        pattern = FileSystems.join(warehouse.staging_dir(table, run_date), "*.parquet")
        staged[table] = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    try:
        counts = bigquery.publish_date(project, dataset, staged, run_date, guard=guard)
    except ShrinkRefused:
        for table in tables:
            clear_staging(warehouse, table, run_date)
        raise
    for table in tables:
        clear_staging(warehouse, table, run_date)
    return counts
