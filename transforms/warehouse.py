"""The warehouse the downstream recommender reads: BigQuery on GCP, DuckDB locally.

``--warehouse=bq://project.dataset`` writes each table with WriteToBigQuery (file loads, schema
from ``schemas/``, day-partitioned on ``run_date``, the run date's partition truncated first).
``--warehouse=duckdb:///path/file.duckdb`` keeps Parquet partitions next to the database
(``{db}_parquet/{table}/run_date=YYYY-MM-DD/``). The job writes a date into a staging folder
(``{db}_parquet/_staging/``) and leaves the published partition alone; after the job one DuckDB
transaction replaces the date's rows of every table and records the partitions to swap in, and
the staging folders are then renamed into place. A killed job leaves the old date intact in
both; a publish killed after its commit is finished by the next job before it does anything else.
Either way a rerun of a date replaces its rows. A row with a NaN or infinite number (a score) is
refused before the write: it becomes a dead letter instead.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import math
import os
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas import DeadLetter
from schemas import Kind
from schemas import Record
from transforms.sinks import WriteShards
from transforms.sinks import parquet_encoder

WAREHOUSE_STAGE = "warehouse"
REFUSED = "refused"
STAGING_FOLDER = "_staging"
PENDING_TABLE = "_pending_partitions"
"""DuckDB table of the partitions whose rows are committed but whose Parquet is not yet swapped."""


@dataclasses.dataclass(frozen=True)
class Warehouse:
    """Where tables go: kind 'duckdb' (target: a .duckdb path) or 'bq' (target: project.dataset)."""

    kind: str
    target: str

    @classmethod
    def parse(cls, uri: str) -> Warehouse:
        """Parse ``bq://project.dataset`` or ``duckdb:///path/file.duckdb``."""
        if uri.startswith("bq://"):
            target = uri[len("bq://") :]
            if target.count(".") != 1 or not all(target.split(".")):
                raise ValueError(f"--warehouse={uri}: expected bq://PROJECT.DATASET")
            return cls("bq", target)
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
        """Folder of the Parquet copies (DuckDB warehouses)."""
        return self.target[: -len(".duckdb")] + "_parquet"

    def partition_dir(self, table: type[Record], run_date: datetime.date) -> str:
        """The published Parquet folder of one table's run date."""
        return self._folder(table.TABLE, run_date)

    def staging_dir(self, table: type[Record], run_date: datetime.date) -> str:
        """Where a job writes one table's run date before it is published."""
        return self._folder(table.TABLE, run_date, STAGING_FOLDER)

    def _folder(self, name: str, run_date: datetime.date, *under: str) -> str:
        return os.path.join(self.parquet_root, *under, name, f"run_date={run_date.isoformat()}")

    def bigquery_table(self, table: type[Record], run_date: datetime.date) -> str:
        """The BigQuery partition (``project:dataset.table$YYYYMMDD``) of one run date."""
        project, dataset = self.target.split(".")
        return f"{project}:{dataset}.{table.TABLE}${run_date.strftime('%Y%m%d')}"


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
    if FileSystems.exists(folder):
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
        yield beam.pvalue.TaggedOutput(
            REFUSED,
            DeadLetter(
                run_id=self._run_id, stage=WAREHOUSE_STAGE, reason=f"{bad[0]}_not_finite",
                detail=f"{self._table} row not written: {', '.join(bad)} not finite",
                input_row=json.dumps(to_bigquery_row(row), sort_keys=True), attempts=0,
                movie_id=getattr(row, "movie_id", None),
            ),
        )  # fmt: skip


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
        if warehouse.kind == "bq":
            from apache_beam.io.gcp.bigquery import BigQueryDisposition
            from apache_beam.io.gcp.bigquery import WriteToBigQuery
            from apache_beam.io.gcp.bigquery_tools import parse_table_schema_from_json

            schema = parse_table_schema_from_json(json.dumps(table.bigquery_schema()))
            return (
                rows
                | "ToBigQueryRows" >> beam.Map(to_bigquery_row)
                | "WriteToBigQuery"
                >> WriteToBigQuery(
                    table=warehouse.bigquery_table(table, self._run_date),
                    schema=schema,
                    method=WriteToBigQuery.Method.FILE_LOADS,
                    write_disposition=BigQueryDisposition.WRITE_TRUNCATE,
                    create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
                    additional_bq_parameters={
                        "timePartitioning": {"type": "DAY", "field": "run_date"}
                    },
                )
            )
        prefix = os.path.join(warehouse.staging_dir(table, self._run_date), table.TABLE)
        return rows | "WriteParquet" >> WriteShards(
            prefix, ".parquet", self._num_shards, parquet_encoder(table), self._sort_key
        )


def _swap_in(warehouse: Warehouse, name: str, run_date: datetime.date) -> None:
    """Rename a staged partition into place (the old one aside, then deleted); idempotent, so a
    swap killed half-way is finished by running it again."""
    staged = warehouse._folder(name, run_date, STAGING_FOLDER)
    live = warehouse._folder(name, run_date)
    replaced = staged + ".replaced"
    if FileSystems.exists(staged):
        if FileSystems.exists(live):
            if FileSystems.exists(replaced):
                FileSystems.delete([replaced])
            FileSystems.rename([live], [replaced])
        parent = os.path.dirname(live)
        if not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)
        FileSystems.rename([staged], [live])
    if FileSystems.exists(replaced):
        FileSystems.delete([replaced])


def _finish_pending(con, warehouse: Warehouse) -> list[tuple[str, datetime.date]]:
    """Swap in every partition whose rows DuckDB committed but whose Parquet is not in place."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {PENDING_TABLE} (table_name VARCHAR, run_date DATE)")
    pending = con.execute(f"SELECT table_name, run_date FROM {PENDING_TABLE} ORDER BY ALL")
    done = pending.fetchall()
    for name, run_date in done:
        _swap_in(warehouse, name, run_date)
        con.execute(
            f"DELETE FROM {PENDING_TABLE} WHERE table_name = ? AND run_date = ?", [name, run_date]
        )
    return done


def finish_publishing(warehouse: Warehouse) -> list[tuple[str, datetime.date]]:
    """Finish the publish a killed job committed in DuckDB but did not swap into Parquet."""
    import duckdb

    if not FileSystems.exists(warehouse.target):
        return []
    with duckdb.connect(warehouse.target) as con:
        return _finish_pending(con, warehouse)


def publish_partitions(
    warehouse: Warehouse, tables: Sequence[type[Record]], run_date: datetime.date
) -> dict[str, int]:
    """Replace a run date of ``tables`` in one step with what the job staged: DuckDB's rows in
    one transaction (which also records the swap), then each staged Parquet folder renamed into
    place. Returns the rows now held per table for the date."""
    import duckdb

    os.makedirs(os.path.dirname(warehouse.target) or ".", exist_ok=True)
    with duckdb.connect(warehouse.target) as con:
        _finish_pending(con, warehouse)
        for table in tables:
            con.register("empty_rows", table.to_arrow([]))
            con.execute(f"CREATE TABLE IF NOT EXISTS {table.TABLE} AS SELECT * FROM empty_rows")
            con.unregister("empty_rows")
        con.execute("BEGIN TRANSACTION")
        for table in tables:
            files = os.path.join(warehouse.staging_dir(table, run_date), "*.parquet")
            con.execute(f"DELETE FROM {table.TABLE} WHERE {table.c.run_date} = ?", [run_date])
            con.execute(f"INSERT INTO {table.TABLE} SELECT * FROM read_parquet(?)", [files])
            con.execute(f"INSERT INTO {PENDING_TABLE} VALUES (?, ?)", [table.TABLE, run_date])
        con.execute("COMMIT")
        _finish_pending(con, warehouse)
        return {
            table.TABLE: con.execute(
                f"SELECT count(*) FROM {table.TABLE} WHERE {table.c.run_date} = ?", [run_date]
            ).fetchone()[0]
            for table in tables
        }
