"""The local warehouse's layout: a warehouse written by the earlier layout (rows copied into
DuckDB tables, partition folders renamed into place) is taken over by its next publish."""

from __future__ import annotations

import datetime
import os
import pathlib

import duckdb
import pytest

from schemas import CandidateRow
from schemas import NeighborRow
from storage import local_warehouse
from storage.files import parquet_encoder
from storage.shrink import ShrinkGuard
from storage.shrink import ShrinkRefused

DAY = datetime.date(2024, 5, 17)
LATER = datetime.date(2024, 5, 18)


def neighbors(version: str, n: int, day: datetime.date) -> list[NeighborRow]:
    return [NeighborRow(movie_id=m, rank=1, neighbor_id=m + 1, score=0.5, source="poster",
                        model_version=version, run_date=day) for m in range(n)]  # fmt: skip


def write(folder: pathlib.Path, rows: list[NeighborRow]) -> None:
    folder.mkdir(parents=True)
    (folder / "neighbors-00000-of-00001.parquet").write_bytes(parquet_encoder(NeighborRow)(rows))


def test_a_warehouse_of_the_earlier_layout_is_taken_over_by_its_next_publish(tmp_path):
    database, root = str(tmp_path / "w.duckdb"), tmp_path / "w_parquet"
    write(root / "neighbors" / "run_date=2024-05-17", neighbors("old", 5, DAY))
    with duckdb.connect(database) as con:
        con.register("rows", NeighborRow.to_arrow(neighbors("old", 5, DAY)))
        con.execute("CREATE TABLE neighbors AS SELECT * FROM rows")
        con.execute("CREATE TABLE _pending_partitions (table_name VARCHAR, run_date DATE)")
    write(root / "_staging" / "neighbors" / "run_date=2024-05-18", neighbors("new", 3, LATER))

    staged = {NeighborRow: str(root / "_staging" / "neighbors" / "run_date=2024-05-18")}
    assert local_warehouse.publish_date(database, str(root), staged, LATER) == {"neighbors": 3}

    with duckdb.connect(database) as con:
        rows = con.execute("SELECT run_date, model_version, count(*) FROM neighbors"
                           " GROUP BY ALL ORDER BY ALL").fetchall()  # fmt: skip
        kinds = con.execute("SELECT table_name, table_type FROM information_schema.tables")
        kinds = kinds.fetchall()
    assert rows == [(DAY, "old", 5), (LATER, "new", 3)]
    assert kinds == [("neighbors", "VIEW")]
    for day in (DAY, LATER):
        partition = local_warehouse.partition_dir(str(root), "neighbors", day)
        assert os.path.islink(partition) and len(os.listdir(partition)) == 1
    assert local_warehouse.clear_unpublished(database, str(root)) == []


def test_clearing_a_warehouse_that_was_never_published_does_nothing(tmp_path):
    assert local_warehouse.clear_unpublished(str(tmp_path / "w.duckdb"), str(tmp_path)) == []
    assert os.listdir(tmp_path) == []


def candidates(users: range, day: datetime.date) -> list[CandidateRow]:
    return [CandidateRow(user_id=u, rank=r, movie_id=10 + r, score=1.0, model_version="v",
                         run_date=day, contributing_movie_ids=()) for u in users
            for r in (1, 2)]  # fmt: skip


def test_a_date_whose_candidates_shrank_is_refused_and_nothing_is_replaced(tmp_path):
    database, root = str(tmp_path / "w.duckdb"), tmp_path / "w_parquet"
    guard = ShrinkGuard(max_shrink=0.5)

    def publish(users: range, day: datetime.date, tag: str, shrink=guard) -> dict:
        folder = root / "_staging" / tag
        folder.mkdir(parents=True)
        (folder / "candidates-00000-of-00001.parquet").write_bytes(
            parquet_encoder(CandidateRow)(candidates(users, day))
        )
        return local_warehouse.publish_date(
            database, str(root), {CandidateRow: str(folder)}, day, shrink
        )

    assert publish(range(1, 11), DAY, "a") == {"candidates": 20}
    with pytest.raises(ShrinkRefused, match=r"4 users and 8 rows.*2024-05-17 has 10 users and 20"):
        publish(range(1, 5), LATER, "b")
    with pytest.raises(ShrinkRefused, match=r"4 users .*2024-05-17 has 10 users"):
        publish(range(1, 5), DAY, "c")  # a rerun of the date itself is compared with it
    with pytest.raises(ShrinkRefused, match="no candidates"):
        publish(range(0), LATER, "d")
    assert publish(range(1, 7), LATER, "e") == {"candidates": 12}  # 6 of 10: within the half
    with duckdb.connect(database) as con:
        per_day = con.execute("SELECT run_date, count(*) FROM candidates GROUP BY ALL"
                              " ORDER BY ALL").fetchall()  # fmt: skip
    assert per_day == [(DAY, 20), (LATER, 12)]
    assert publish(range(1, 2), LATER, "f", ShrinkGuard(allow=True)) == {"candidates": 2}
    with pytest.raises(ValueError, match="--max_shrink"):
        ShrinkGuard(max_shrink=1.5)
