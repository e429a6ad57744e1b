"""The BigQuery warehouse's publish step against the BigQuery emulator: staged Parquet loaded
through google-cloud-bigquery, one transaction per run date, docs/nightly.md's consumer queries."""

from __future__ import annotations

import datetime
import uuid

import pytest

from schemas import CandidateRow
from schemas import NeighborRow
from storage import bigquery
from storage.files import parquet_encoder
from storage.shrink import ShrinkGuard
from storage.shrink import ShrinkRefused
from tests.cloud.emulators import BUCKET
from tests.cloud.emulators import PROJECT
from tests.cloud.queries import consumer_queries

DAY1 = datetime.date(2024, 5, 17)
DAY2 = datetime.date(2024, 5, 18)


def neighbours(day: datetime.date, films: range, k: int = 3) -> list[NeighborRow]:
    return [
        NeighborRow(movie_id=m, rank=r, neighbor_id=1000 + 10 * m + r, score=1.0 - r / 10,
                    source="poster", model_version="small_cnn-test", run_date=day)
        for m in films for r in range(1, k + 1)
    ]  # fmt: skip


def candidates(day: datetime.date, users: range, k: int = 2) -> list[CandidateRow]:
    return [
        CandidateRow(user_id=u, rank=r, movie_id=500 + r, score=2.0 - r / 10,
                     model_version="small_cnn-test", run_date=day,
                     contributing_movie_ids=(7, 8) if r == 1 else ())
        for u in users for r in range(1, k + 1)
    ]  # fmt: skip


@pytest.fixture
def dataset(cloud):
    """A new, empty dataset of the emulator."""
    name = f"recs_{uuid.uuid4().hex[:8]}"
    cloud.bigquery_client().create_dataset(f"{PROJECT}.{name}")
    return name


def stage_on_gcs(cloud, rows: list, table, folder: str) -> list[str]:
    """Upload rows as one Parquet file (as the job stages them); its gs:// URI."""
    name = f"{folder}/{table.TABLE}-00000-of-00001.parquet"
    cloud.storage_client().bucket(BUCKET).blob(name).upload_from_string(
        parquet_encoder(table)(rows)
    )
    return [f"gs://{BUCKET}/{name}"]


def rows(client, sql: str) -> list[tuple]:
    return [tuple(r.values()) for r in client.query(sql).result()]


def test_a_rerun_of_a_date_replaces_its_rows_in_both_tables_and_keeps_other_dates(cloud, dataset):
    bq = cloud.bigquery_client()

    def publish(day, films, users, tag):
        staged = {
            NeighborRow: stage_on_gcs(cloud, neighbours(day, films), NeighborRow, tag),
            CandidateRow: stage_on_gcs(cloud, candidates(day, users), CandidateRow, tag),
        }
        return bigquery.publish_date(PROJECT, dataset, staged, day, bq=bq)

    assert publish(DAY1, range(1, 5), range(1, 4), "a") == {"neighbors": 12, "candidates": 6}
    assert publish(DAY2, range(1, 3), range(1, 2), "b") == {"neighbors": 6, "candidates": 2}
    # The same date again, with other rows: replaced, not appended; the other date is untouched.
    assert publish(DAY1, range(2, 4), range(3, 6), "c") == {"neighbors": 6, "candidates": 6}
    per_day = rows(bq, f"SELECT run_date, COUNT(*) FROM `{PROJECT}.{dataset}.neighbors` "
                       "GROUP BY run_date ORDER BY run_date")  # fmt: skip
    assert per_day == [(DAY1, 6), (DAY2, 6)]
    assert rows(bq, f"SELECT DISTINCT movie_id FROM `{PROJECT}.{dataset}.neighbors` "
                    f"WHERE run_date = '{DAY1}' ORDER BY 1") == [(2,), (3,)]  # fmt: skip

    neighbours_sql, candidates_sql = consumer_queries(PROJECT, dataset, 3, 4, DAY1)
    assert rows(bq, neighbours_sql) == [(1, 1031, 0.9), (2, 1032, 0.8), (3, 1033, 0.7)]
    assert [(r["rank"], r["movie_id"]) for r in bq.query(candidates_sql).result()] == [
        (1, 501), (2, 502)
    ]  # fmt: skip
    repeated = rows(bq, f"SELECT contributing_movie_ids FROM `{PROJECT}.{dataset}.candidates` "
                        f"WHERE user_id = 4 AND run_date = '{DAY1}' ORDER BY rank")  # fmt: skip
    assert repeated == [([7, 8],), ([],)]

    table = bq.get_table(f"{PROJECT}.{dataset}.neighbors")
    assert table.time_partitioning.field == "run_date"
    assert table.time_partitioning.type_ == "DAY"
    assert [f.name for f in table.schema] == [f["name"] for f in
                                              NeighborRow.bigquery_schema()["fields"]]  # fmt: skip
    names = {t.table_id for t in bq.list_tables(f"{PROJECT}.{dataset}")}
    assert names == {"neighbors", "candidates"}  # staging tables dropped


def test_local_staged_files_are_uploaded(cloud, dataset, tmp_path):
    paths = []
    for i, films in enumerate((range(1, 3), range(3, 6))):
        path = tmp_path / f"neighbors-{i:05d}-of-00002.parquet"
        path.write_bytes(parquet_encoder(NeighborRow)(neighbours(DAY1, films, k=2)))
        paths.append(str(path))
    counts = bigquery.publish_date(PROJECT, dataset, {NeighborRow: paths}, DAY1,
                                   bq=cloud.bigquery_client())  # fmt: skip
    assert counts == {"neighbors": 10}


def test_the_transaction_names_every_table_once(cloud):
    script = bigquery.replace_date_script((NeighborRow, CandidateRow), "p", "d", DAY1)
    lines = script.splitlines()
    assert lines[0] == "BEGIN TRANSACTION;" and lines[-1] == "COMMIT TRANSACTION;"
    assert sum(line.startswith("DELETE FROM `p.d.neighbors`") for line in lines) == 1
    assert sum("FROM `p.d._staging_candidates_20240517`" in line for line in lines) == 1


def test_a_date_whose_candidates_shrank_is_refused_and_nothing_is_replaced(cloud, dataset):
    bq = cloud.bigquery_client()
    guard = ShrinkGuard(max_shrink=0.5)

    def publish(day, users, tag, shrink=guard):
        staged = {CandidateRow: stage_on_gcs(cloud, candidates(day, users), CandidateRow, tag)}
        return bigquery.publish_date(PROJECT, dataset, staged, day, bq=bq, guard=shrink)

    assert publish(DAY1, range(1, 11), "a") == {"candidates": 20}
    with pytest.raises(ShrinkRefused, match=r"4 users and 8 rows.*2024-05-17 has 10 users and 20"):
        publish(DAY2, range(1, 5), "b")
    assert publish(DAY2, range(1, 7), "c") == {"candidates": 12}  # 6 of 10: within the half
    with pytest.raises(ShrinkRefused, match="no candidates"):
        publish(DAY2, range(0), "d")
    per_day = rows(bq, f"SELECT run_date, COUNT(*) FROM `{PROJECT}.{dataset}.candidates` "
                       "GROUP BY run_date ORDER BY run_date")  # fmt: skip
    assert per_day == [(DAY1, 20), (DAY2, 12)]
    names = {t.table_id for t in bq.list_tables(f"{PROJECT}.{dataset}")}
    assert names == {"candidates"}  # a refusal drops its staging table
    assert publish(DAY2, range(1, 2), "e", ShrinkGuard(allow=True)) == {"candidates": 2}
