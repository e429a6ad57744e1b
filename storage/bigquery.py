"""BigQuery tables replaced one run date at a time: staged Parquet files loaded into staging
tables, then one multi-statement transaction that swaps the date in every table at once.

Plain functions over the google-cloud-bigquery client, no pipelines. The client finds its
credentials as every Google client does (Application Default Credentials) and its endpoint in
``BIGQUERY_EMULATOR_HOST`` when that is set. Each table is created from its schema in
``schemas/`` when missing, day-partitioned on ``run_date``; the dataset must exist.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from collections.abc import Sequence

from google.api_core import exceptions as api_exceptions
from google.cloud import bigquery

from schemas import CandidateRow
from schemas import Record
from storage.shrink import Counts
from storage.shrink import ShrinkGuard
from storage.shrink import ShrinkRefused

PARTITION_COLUMN = "run_date"
STAGING_PREFIX = "_staging_"
"""Staging tables are named ``_staging_{table}_{YYYYMMDD}`` in the warehouse dataset."""


def client(project: str, credentials=None) -> bigquery.Client:
    """A BigQuery client for ``project`` (its jobs run there), with Application Default
    Credentials unless ``credentials`` are given."""
    return bigquery.Client(project=project, credentials=credentials)


def dataset_exists(bq: bigquery.Client, project: str, dataset: str) -> bool:
    """Whether ``project.dataset`` exists (False also when it is not visible to the caller)."""
    try:
        bq.get_dataset(f"{project}.{dataset}")
    except api_exceptions.NotFound:
        return False
    return True


def schema_of(table: type[Record]) -> list[bigquery.SchemaField]:
    """The table's BigQuery schema, from its one definition in ``schemas/``."""
    return [bigquery.SchemaField.from_api_repr(f) for f in table.bigquery_schema()["fields"]]


def table_resource(table: type[Record], project: str, dataset: str) -> bigquery.Table:
    """The published table: its schema, day-partitioned on ``run_date``."""
    resource = bigquery.Table(f"{project}.{dataset}.{table.TABLE}", schema=schema_of(table))
    resource.time_partitioning = bigquery.TimePartitioning(
        type_=bigquery.TimePartitioningType.DAY, field=PARTITION_COLUMN
    )
    return resource


def staging_table_id(table: type[Record], project: str, dataset: str,
                     run_date: datetime.date) -> str:  # fmt: skip
    """The table a run date's rows are loaded into before the swap."""
    return f"{project}.{dataset}.{STAGING_PREFIX}{table.TABLE}_{run_date:%Y%m%d}"


def load_staged(bq: bigquery.Client, files: Sequence[str], table: type[Record],
                destination: str) -> None:  # fmt: skip
    """Load Parquet files (gs:// URIs, or local files uploaded) into ``destination``, replacing
    what it held."""
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.PARQUET,
        schema=schema_of(table),
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
        parquet_options=bigquery.ParquetOptions.from_api_repr({"enableListInference": True}),
    )
    if all(f.startswith("gs://") for f in files):
        bq.load_table_from_uri(list(files), destination, job_config=config).result()
        return
    for i, path in enumerate(files):
        if i:
            config.write_disposition = bigquery.WriteDisposition.WRITE_APPEND
        with open(path, "rb") as handle:
            bq.load_table_from_file(handle, destination, job_config=config).result()


def replace_date_script(tables: Sequence[type[Record]], project: str, dataset: str,
                        run_date: datetime.date) -> str:  # fmt: skip
    """One transaction: each table's rows of ``run_date`` deleted and its staged rows inserted."""
    date = f"DATE '{run_date.isoformat()}'"  # a datetime.date: no quoting to escape
    statements = ["BEGIN TRANSACTION;"]
    for table in tables:
        columns = ", ".join(name for name, _ in table.columns())
        target = f"`{project}.{dataset}.{table.TABLE}`"
        staged = f"`{staging_table_id(table, project, dataset, run_date)}`"
        statements += [
            f"DELETE FROM {target} WHERE {PARTITION_COLUMN} = {date};",
            f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {staged} "
            f"WHERE {PARTITION_COLUMN} = {date};",
        ]
    statements.append("COMMIT TRANSACTION;")
    return "\n".join(statements)


def rows_of_date(bq: bigquery.Client, table: type[Record], project: str, dataset: str,
                 run_date: datetime.date) -> int:  # fmt: skip
    """How many rows ``table`` holds for ``run_date``."""
    sql = (f"SELECT COUNT(*) AS n FROM `{project}.{dataset}.{table.TABLE}` "
           f"WHERE {PARTITION_COLUMN} = @run_date")  # fmt: skip
    return next(iter(bq.query(sql, job_config=_date_parameter(run_date)).result()))[0]


def _check_shrink(
    bq: bigquery.Client, guard: ShrinkGuard, project: str, dataset: str, run_date: datetime.date
) -> None:
    """The guard's comparison, counted by BigQuery: the staging table against the latest
    published date on or before ``run_date``."""
    user = CandidateRow.c.user_id
    staging = staging_table_id(CandidateRow, project, dataset, run_date)
    rows, users = next(iter(bq.query(
        f"SELECT COUNT(*), COUNT(DISTINCT {user}) FROM `{staging}`"
    ).result()))  # fmt: skip
    table = f"`{project}.{dataset}.{CandidateRow.TABLE}`"
    latest = next(iter(bq.query(
        f"SELECT MAX({PARTITION_COLUMN}) FROM {table} WHERE {PARTITION_COLUMN} <= @run_date",
        job_config=_date_parameter(run_date),
    ).result()))[0]  # fmt: skip
    previous = None
    if latest is not None:
        before_rows, before_users = next(iter(bq.query(
            f"SELECT COUNT(*), COUNT(DISTINCT {user}) FROM {table}"
            f" WHERE {PARTITION_COLUMN} = @run_date", job_config=_date_parameter(latest),
        ).result()))  # fmt: skip
        previous = Counts(int(before_rows), int(before_users))
    guard.check(run_date, Counts(int(rows), int(users)), latest, previous)


def _date_parameter(run_date: datetime.date) -> bigquery.QueryJobConfig:
    return bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("run_date", "DATE", run_date)]
    )


def publish_date(
    project: str,
    dataset: str,
    staged: Mapping[type[Record], Sequence[str]],
    run_date: datetime.date,
    bq: bigquery.Client | None = None,
    guard: ShrinkGuard | None = None,
) -> dict[str, int]:
    """Replace ``run_date`` in every table of ``staged`` (table -> its Parquet files) in one
    transaction; returns the rows each table now holds for the date.

    Tables are created (partitioned) when missing. A job killed before the commit leaves every
    table as it was; the staging tables are dropped after the commit. With ``guard``, the
    staged candidates are first compared with the latest published date's
    (:mod:`storage.shrink`): a refusal drops the staging tables and changes nothing else.
    """
    bq = bq or client(project)
    tables = list(staged)
    for table in tables:
        bq.create_table(table_resource(table, project, dataset), exists_ok=True)
        load_staged(bq, staged[table], table, staging_table_id(table, project, dataset, run_date))
    if guard is not None and CandidateRow in staged:
        try:
            _check_shrink(bq, guard, project, dataset, run_date)
        except ShrinkRefused:
            for table in tables:
                bq.delete_table(staging_table_id(table, project, dataset, run_date),
                                not_found_ok=True)  # fmt: skip
            raise
    bq.query(replace_date_script(tables, project, dataset, run_date)).result()
    for table in tables:
        bq.delete_table(staging_table_id(table, project, dataset, run_date), not_found_ok=True)
    return {t.TABLE: rows_of_date(bq, t, project, dataset, run_date) for t in tables}
