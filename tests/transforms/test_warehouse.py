"""A warehouse date is replaced in one step: DuckDB and the Parquet partition never disagree
after a kill, whatever point of the publish it hits."""

from __future__ import annotations

import datetime
import os
import pathlib

import duckdb
import pytest
from apache_beam.io.filesystems import FileSystems

from schemas import NeighborRow
from storage.files import parquet_encoder
from storage.files import read_parquet_records
from transforms import warehouse as wh

DAY = datetime.date(2024, 5, 17)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, and no handler catches it."""


def stage(warehouse: wh.Warehouse, version: str, n: int) -> None:
    """What a neighbours job leaves in staging for DAY: n rows of model ``version``."""
    rows = [NeighborRow(movie_id=m, rank=1, neighbor_id=m + 1, score=0.5, source="poster",
                        model_version=version, run_date=DAY) for m in range(n)]  # fmt: skip
    folder = pathlib.Path(warehouse.staging_dir(NeighborRow, DAY))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "neighbors-00000-of-00001.parquet").write_bytes(parquet_encoder(NeighborRow)(rows))


def in_duckdb(warehouse: wh.Warehouse) -> list[tuple]:
    with duckdb.connect(warehouse.target) as con:
        return con.execute(
            "SELECT model_version, count(*) FROM neighbors WHERE run_date = ? GROUP BY ALL", [DAY]
        ).fetchall()


def in_parquet(warehouse: wh.Warehouse) -> list[tuple]:
    pattern = os.path.join(warehouse.partition_dir(NeighborRow, DAY), "*.parquet")
    rows = read_parquet_records(pattern, NeighborRow)
    versions = sorted({r.model_version for r in rows})
    return [(v, sum(r.model_version == v for r in rows)) for v in versions]


@pytest.fixture
def published(tmp_path) -> wh.Warehouse:
    """A warehouse whose DAY holds 5 rows of model v1, in DuckDB and in Parquet."""
    warehouse = wh.Warehouse.parse(f"duckdb://{tmp_path}/w.duckdb")
    stage(warehouse, "v1", 5)
    assert wh.publish_partitions(warehouse, [NeighborRow], DAY) == {"neighbors": 5}
    assert in_duckdb(warehouse) == in_parquet(warehouse) == [("v1", 5)]
    assert not os.path.exists(warehouse.staging_dir(NeighborRow, DAY))
    return warehouse


def test_a_job_killed_before_publishing_leaves_the_date_untouched(published):
    stage(published, "v2", 7)  # the killed job's staging
    wh.clear_staging(published, NeighborRow, DAY)  # what the next job does first
    assert in_duckdb(published) == in_parquet(published) == [("v1", 5)]
    stage(published, "v2", 7)
    assert wh.publish_partitions(published, [NeighborRow], DAY) == {"neighbors": 7}
    assert in_duckdb(published) == in_parquet(published) == [("v2", 7)]


@pytest.mark.parametrize("renames_before_kill", [0, 1])
def test_a_publish_killed_after_its_commit_is_finished_by_the_next_job(
    published, monkeypatch, renames_before_kill
):
    """Killed after DuckDB committed: before any rename, or with the old partition moved aside."""
    stage(published, "v2", 7)
    rename = FileSystems.rename
    calls = []

    def killed_rename(sources, destinations):
        if len(calls) == renames_before_kill:
            raise Killed()
        calls.append(sources)
        rename(sources, destinations)

    monkeypatch.setattr(FileSystems, "rename", killed_rename)
    with pytest.raises(Killed):
        wh.publish_partitions(published, [NeighborRow], DAY)
    monkeypatch.setattr(FileSystems, "rename", rename)
    assert in_duckdb(published) == [("v2", 7)]
    assert wh.finish_publishing(published) == [("neighbors", DAY)]
    assert in_duckdb(published) == in_parquet(published) == [("v2", 7)]
    assert wh.finish_publishing(published) == []
    leftovers = pathlib.Path(published.parquet_root, wh.STAGING_FOLDER, NeighborRow.TABLE)
    assert list(leftovers.iterdir()) == []


def test_a_publish_that_fails_before_its_commit_changes_nothing(published, monkeypatch):
    stage(published, "v2", 7)
    (pathlib.Path(published.staging_dir(NeighborRow, DAY)) / "junk.parquet").write_bytes(b"x")
    with pytest.raises(duckdb.Error):
        wh.publish_partitions(published, [NeighborRow], DAY)
    assert in_duckdb(published) == in_parquet(published) == [("v1", 5)]
    assert wh.finish_publishing(published) == []
