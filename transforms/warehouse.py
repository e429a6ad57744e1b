"""The warehouse the downstream recommender reads: BigQuery on GCP, DuckDB locally.

``--warehouse=bq://project.dataset`` writes each table with WriteToBigQuery (file loads, schema
from ``schemas/``, day-partitioned on ``run_date``, the run date's partition truncated first).
``--warehouse=duckdb:///path/file.duckdb`` writes Parquet partitions next to the database
(``{db}_parquet/{table}/run_date=YYYY-MM-DD/``) and, after the job, replaces that date's rows in
the DuckDB table in one transaction. Either way a rerun of a date replaces its rows.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas import Kind
from schemas import Record
from transforms.sinks import WriteShards
from transforms.sinks import parquet_encoder


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
        """The Parquet folder of one table's run date."""
        return os.path.join(self.parquet_root, table.TABLE, f"run_date={run_date.isoformat()}")

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


def clear_partition(warehouse: Warehouse, table: type[Record], run_date: datetime.date) -> None:
    """Remove a run date's earlier Parquet files so a rerun leaves only its own."""
    folder = warehouse.partition_dir(table, run_date)
    if FileSystems.exists(folder):
        FileSystems.delete([folder])


class WriteWarehouseTable(beam.PTransform):
    """Writes one table's rows for one run date to the warehouse."""

    def __init__(
        self,
        warehouse: Warehouse,
        table: type[Record],
        run_date: datetime.date,
        sort_key,
        num_shards: int = 1,
    ) -> None:
        super().__init__()
        self._warehouse = warehouse
        self._table = table
        self._run_date = run_date
        self._sort_key = sort_key
        self._num_shards = num_shards

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
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
        prefix = os.path.join(warehouse.partition_dir(table, self._run_date), table.TABLE)
        return rows | "WriteParquet" >> WriteShards(
            prefix, ".parquet", self._num_shards, parquet_encoder(table), self._sort_key
        )


def load_into_duckdb(warehouse: Warehouse, table: type[Record], run_date: datetime.date) -> int:
    """Replace a run date's rows of ``table`` in the DuckDB file with its Parquet partition."""
    import duckdb

    folder = warehouse.partition_dir(table, run_date)
    files = os.path.join(folder, "*.parquet")
    os.makedirs(os.path.dirname(warehouse.target) or ".", exist_ok=True)
    empty = table.to_arrow([])  # noqa: F841 - read by DuckDB's replacement scan below
    with duckdb.connect(warehouse.target) as con:
        con.execute(f"CREATE TABLE IF NOT EXISTS {table.TABLE} AS SELECT * FROM empty")
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {table.TABLE} WHERE {table.c.run_date} = ?", [run_date])
        con.execute(f"INSERT INTO {table.TABLE} SELECT * FROM read_parquet(?)", [files])
        con.execute("COMMIT")
        (count,) = con.execute(
            f"SELECT count(*) FROM {table.TABLE} WHERE {table.c.run_date} = ?", [run_date]
        ).fetchone()
    return int(count)
