"""A warehouse date is replaced in one step: at every step of a publish, and after a kill at any
of them, DuckDB and the Parquet partitions hold the same rows of the date, all of one version,
and the next run cleans up what the kill left."""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import pathlib
import shutil

import duckdb
import pytest

from schemas import CandidateRow
from schemas import NeighborRow
from storage import local_warehouse
from storage.files import parquet_encoder
from storage.files import read_parquet_records
from transforms import warehouse as wh

DAY = datetime.date(2024, 5, 17)
TABLES = (NeighborRow, CandidateRow)
FILE_SYSTEM_CHANGES = ("rename", "replace", "symlink", "link", "unlink", "rmdir", "mkdir")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, and no handler catches it."""


def rows_of(table, version: str, n: int, day: datetime.date = DAY) -> list:
    if table is NeighborRow:
        return [NeighborRow(movie_id=m, rank=1, neighbor_id=m + 1, score=0.5, source="poster",
                            model_version=version, run_date=day) for m in range(n)]  # fmt: skip
    return [CandidateRow(user_id=u, rank=1, movie_id=7, score=0.5, model_version=version,
                         run_date=day, contributing_movie_ids=(3,)) for u in range(n)]  # fmt: skip


def stage(warehouse: wh.Warehouse, version: str, n: int, tables=TABLES, day=DAY) -> None:
    """What a neighbours job leaves in staging for ``day``: n rows of model ``version`` a table,
    in two shards."""
    for table in tables:
        folder = pathlib.Path(warehouse.staging_dir(table, day))
        folder.mkdir(parents=True, exist_ok=True)
        rows = rows_of(table, version, n, day)
        for shard in range(2):
            path = folder / f"{table.TABLE}-0000{shard}-of-00002.parquet"
            path.write_bytes(parquet_encoder(table)(rows[shard::2]))


def in_duckdb(warehouse: wh.Warehouse, table, day=DAY) -> list[tuple]:
    """(model version, rows) of the date in the DuckDB table."""
    if not os.path.exists(warehouse.target):
        return []
    with duckdb.connect(warehouse.target) as con:
        return con.execute(
            f"SELECT model_version, count(*) FROM {table.TABLE} WHERE run_date = ? GROUP BY ALL",
            [day],
        ).fetchall()


def in_parquet(warehouse: wh.Warehouse, table, day=DAY) -> list[tuple]:
    """(model version, rows) of the date in its Parquet partition."""
    pattern = os.path.join(warehouse.partition_dir(table, day), "*.parquet")
    rows = read_parquet_records(pattern, table)
    versions = sorted({r.model_version for r in rows})
    return [(v, sum(r.model_version == v for r in rows)) for v in versions]


def held(warehouse: wh.Warehouse, tables=TABLES) -> list[tuple]:
    """What the date holds, the same in DuckDB and in Parquet, and the same in every table."""
    seen = set()
    for table in tables:
        rows = in_duckdb(warehouse, table)
        assert rows == in_parquet(warehouse, table), f"{table.TABLE}: DuckDB and Parquet differ"
        seen.add(tuple(rows))
    assert len(seen) == 1, f"the tables hold different versions: {seen}"
    return list(seen.pop())


@contextlib.contextmanager
def interposed(monkeypatch, before):
    """Call ``before(operation)`` ahead of every file-system change a publish makes."""
    busy = []

    def wrap(name, original):
        def changed(*args, **kwargs):
            if not busy:
                busy.append(name)
                try:
                    before(name)
                finally:
                    busy.clear()
            return original(*args, **kwargs)

        return changed

    with monkeypatch.context() as patch:
        for name in FILE_SYSTEM_CHANGES:
            patch.setattr(os, name, wrap(name, getattr(os, name)))
        patch.setattr(shutil, "copyfile", wrap("copyfile", shutil.copyfile))
        yield


def leftovers(warehouse: wh.Warehouse) -> list[str]:
    """Whatever is in the Parquet folder beside the published versions and their links."""
    root = pathlib.Path(warehouse.parquet_root)
    found = [str(p.relative_to(root)) for p in (root / wh.STAGING_FOLDER).rglob("*.parquet")]
    for folder in (root / local_warehouse.VERSIONS).iterdir():
        live = os.readlink(root / local_warehouse.DATES / folder.name)
        found += [f"{folder.name}/{n}" for n in os.listdir(folder) if n != os.path.basename(live)]
    for link in root.glob("[!_]*/run_date=*"):
        if not link.is_symlink() or not link.exists():
            found.append(str(link.relative_to(root)))
    return found


@pytest.fixture
def published(tmp_path) -> wh.Warehouse:
    """A warehouse whose DAY holds 5 rows of model v1 a table, in DuckDB and in Parquet."""
    warehouse = wh.Warehouse.parse(f"duckdb://{tmp_path}/w.duckdb")
    stage(warehouse, "v1", 5)
    assert wh.publish_partitions(warehouse, TABLES, DAY) == {"neighbors": 5, "candidates": 5}
    assert held(warehouse) == [("v1", 5)]
    assert leftovers(warehouse) == []
    return warehouse


def test_a_job_killed_before_publishing_leaves_the_date_untouched(published):
    stage(published, "v2", 7)  # the killed job's staging
    wh.clear_staging(published, NeighborRow, DAY)  # what the next job does first
    wh.clear_staging(published, CandidateRow, DAY)
    assert held(published) == [("v1", 5)]
    stage(published, "v2", 7)
    assert wh.publish_partitions(published, TABLES, DAY) == {"neighbors": 7, "candidates": 7}
    assert held(published) == [("v2", 7)]
    assert leftovers(published) == []


def test_every_step_of_a_publish_shows_one_whole_version_in_duckdb_and_parquet(
    published, monkeypatch
):
    stage(published, "v2", 7)
    steps = []
    with interposed(monkeypatch, lambda op: steps.append((op, held(published)))):
        wh.publish_partitions(published, TABLES, DAY)
    steps.append(("done", held(published)))
    shown = [version for _, version in steps]
    assert set(map(tuple, shown)) == {(("v1", 5),), (("v2", 7),)}
    switch = shown.index([("v2", 7)])
    assert shown[switch:] == [[("v2", 7)]] * (len(shown) - switch), "the date switched back"
    assert steps[switch - 1][0] == "replace", "the date changed at another step than the swap"
    assert len(steps) > 10


def test_a_publish_killed_at_any_step_leaves_one_version_and_the_next_run_replaces_it(
    tmp_path, monkeypatch
):
    kill_at = 0
    while True:
        warehouse = wh.Warehouse.parse(f"duckdb://{tmp_path}/{kill_at}/w.duckdb")
        stage(warehouse, "v1", 5)
        wh.publish_partitions(warehouse, TABLES, DAY)
        stage(warehouse, "v2", 7)
        steps = []

        def kill(op, steps=steps, kill_at=kill_at):
            if len(steps) == kill_at:
                raise Killed()
            steps.append(op)

        try:
            with interposed(monkeypatch, kill):
                wh.publish_partitions(warehouse, TABLES, DAY)
            finished = True
        except Killed:
            finished = False
        swapped = "replace" in steps
        assert held(warehouse) == ([("v2", 7)] if swapped else [("v1", 5)]), steps
        wh.clear_unpublished(warehouse)  # the next job, first
        for table in TABLES:
            wh.clear_staging(warehouse, table, DAY)
        assert held(warehouse) == ([("v2", 7)] if swapped else [("v1", 5)]), steps
        assert leftovers(warehouse) == [], steps
        stage(warehouse, "v3", 4)
        assert wh.publish_partitions(warehouse, TABLES, DAY) == {"neighbors": 4, "candidates": 4}
        assert held(warehouse) == [("v3", 4)]
        assert leftovers(warehouse) == []
        if finished:
            break
        kill_at += 1
    assert kill_at > 10, "the publish made fewer file-system changes than expected"


def test_a_publish_whose_staged_files_are_bad_changes_nothing(published):
    stage(published, "v2", 7)
    (pathlib.Path(published.staging_dir(CandidateRow, DAY)) / "junk.parquet").write_bytes(b"x")
    with pytest.raises(duckdb.Error):
        wh.publish_partitions(published, TABLES, DAY)
    assert held(published) == [("v1", 5)]
    wh.clear_staging(published, CandidateRow, DAY)
    stage(published, "v2", 7, tables=[CandidateRow], day=DAY + datetime.timedelta(days=1))
    os.rename(published.staging_dir(CandidateRow, DAY + datetime.timedelta(days=1)),
              published.staging_dir(CandidateRow, DAY))  # fmt: skip
    with pytest.raises(ValueError, match="7 of 7 candidates rows are not of 2024-05-17"):
        wh.publish_partitions(published, TABLES, DAY)
    assert held(published) == [("v1", 5)]
    versions = pathlib.Path(published.parquet_root, local_warehouse.VERSIONS, "run_date=2024-05-17")
    assert os.listdir(versions) == ["v0001"]


def test_a_neighbours_only_publish_keeps_the_dates_candidates(published):
    stage(published, "v2", 7, tables=[NeighborRow])
    assert wh.publish_partitions(published, [NeighborRow], DAY) == {"neighbors": 7}
    assert in_duckdb(published, NeighborRow) == in_parquet(published, NeighborRow) == [("v2", 7)]
    assert in_duckdb(published, CandidateRow) == in_parquet(published, CandidateRow) == [("v1", 5)]
    assert leftovers(published) == []


def test_readers_see_each_date_once_in_duckdb_and_in_parquet(published):
    later = DAY + datetime.timedelta(days=1)
    stage(published, "v2", 3, day=later)
    wh.publish_partitions(published, TABLES, later)
    stage(published, "v3", 2)
    wh.publish_partitions(published, TABLES, DAY)
    everything = os.path.join(published.parquet_root, NeighborRow.TABLE, "*", "*.parquet")
    files = sorted((r.run_date, r.model_version) for path in glob.glob(everything)
                   for r in read_parquet_records(path, NeighborRow))  # fmt: skip
    sql = "SELECT run_date, model_version FROM {} ORDER BY ALL"
    hive = duckdb.sql(sql.format(f"'{everything}'")).fetchall()  # run_date from the folder name
    with duckdb.connect(published.target) as con:
        rows = con.execute(sql.format(NeighborRow.TABLE)).fetchall()
        tables = sorted(name for (name,) in con.execute("SHOW TABLES").fetchall())
    assert rows == files == hive == [(DAY, "v3")] * 2 + [(later, "v2")] * 3
    assert tables == ["candidates", "neighbors"]
