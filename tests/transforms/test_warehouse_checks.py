"""The check before the warehouse write: a row with a NaN or infinite score is never written;
it becomes a dead letter with its reason."""

from __future__ import annotations

import datetime
import math
import pathlib

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from schemas import CandidateRow
from schemas import NeighborRow
from tests.conftest import local_pipeline
from transforms.warehouse import Warehouse
from transforms.warehouse import WriteWarehouseTable
from transforms.warehouse import non_finite_columns

DAY = datetime.date(2024, 5, 17)


def neighbor(movie_id: int, score: float) -> NeighborRow:
    return NeighborRow(movie_id=movie_id, rank=1, neighbor_id=movie_id + 100, score=score,
                       source="poster", model_version="v1", run_date=DAY)  # fmt: skip


def candidate(user_id: int, score: float) -> CandidateRow:
    return CandidateRow(user_id=user_id, rank=1, movie_id=7, score=score, model_version="v1",
                        run_date=DAY, contributing_movie_ids=(3,))  # fmt: skip


def test_non_finite_columns_names_the_float_columns_that_are_nan_or_infinite():
    assert non_finite_columns(neighbor(1, 0.5)) == []
    assert non_finite_columns(neighbor(1, math.nan)) == ["score"]
    assert non_finite_columns(candidate(1, -math.inf)) == ["score"]


def test_rows_with_a_non_finite_score_are_dead_lettered_not_written(tmp_path):
    warehouse = Warehouse.parse(f"duckdb://{tmp_path}/w.duckdb")
    neighbors = [neighbor(1, 0.9), neighbor(2, math.nan), neighbor(3, math.inf), neighbor(4, 0.1)]
    candidates = [candidate(10, 1.5), candidate(11, -math.inf)]
    pipeline = local_pipeline()
    refused_neighbors = (
        pipeline
        | "Neighbors" >> beam.Create(neighbors)
        | "WriteNeighbors"
        >> WriteWarehouseTable(warehouse, NeighborRow, DAY, lambda r: (r.movie_id, r.rank),
                               run_id="nightly-test")  # fmt: skip
    )
    refused_candidates = (
        pipeline
        | "Candidates" >> beam.Create(candidates)
        | "WriteCandidates"
        >> WriteWarehouseTable(warehouse, CandidateRow, DAY, lambda r: (r.user_id, r.rank))
    )
    assert_that(
        refused_neighbors | "NeighborDead" >> beam.Map(lambda d: (d.movie_id, d.stage, d.reason)),
        equal_to([(2, "warehouse", "score_not_finite"), (3, "warehouse", "score_not_finite")]),
        label="RefusedNeighbors",
    )
    assert_that(
        refused_candidates | "CandidateDead" >> beam.Map(lambda d: (d.run_id, d.reason)),
        equal_to([(DAY.isoformat(), "score_not_finite")]),
        label="RefusedCandidates",
    )
    pipeline.run()
    written = {}
    for path in pathlib.Path(warehouse.parquet_root).rglob("*.parquet"):
        table = pq.read_table(path)
        written.setdefault(path.name.split("-")[0], []).extend(table.to_pylist())
    assert sorted(r["movie_id"] for r in written["neighbors"]) == [1, 4]
    assert [r["user_id"] for r in written["candidates"]] == [10]
    assert all(math.isfinite(r["score"]) for rows in written.values() for r in rows)
