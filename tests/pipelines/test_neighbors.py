"""Index, nightly neighbours, candidates and the DuckDB warehouse, end to end."""

from __future__ import annotations

import datetime
import pathlib
import shutil

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from models.scann_index import exact_search
from pipelines import cowatch as cowatch_stage
from pipelines import evaluate
from pipelines import index as index_stage
from pipelines import neighbors
from pipelines.common import InputError
from pipelines.common import UsageError
from schemas import CandidateRow
from schemas import EmbeddingRow
from schemas import NeighborRow
from storage.runs import publish_run
from synthetic.catalog import make_catalog
from synthetic.catalog import make_watch_history
from synthetic.catalog import write_ratings_csv

VERSION = "test_model-0123456789ab"
N_FILMS = 300
WHEN = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def clustered_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim))
    vectors = centres[rng.integers(0, 12, n)] + 0.35 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_vectors(root: pathlib.Path, ids, vectors, poster_of=None) -> None:
    folder = root / VERSION / EmbeddingRow.TABLE / "run-0001"
    folder.mkdir(parents=True)
    poster_of = poster_of or {}
    rows = [
        EmbeddingRow(movie_id=int(m), dim=vectors.shape[1], model_name="test_model",
                     model_version=VERSION, content_sha256=f"{m:064d}",
                     poster_of=poster_of.get(int(m), int(m)),
                     embedded_at=WHEN,
                     embedding=tuple(float(x) for x in v))
        for m, v in zip(ids, vectors, strict=True)
    ]  # fmt: skip
    pq.write_table(EmbeddingRow.to_arrow(rows, list_size=vectors.shape[1]),
                   folder / "embeddings-00000-of-00001.parquet")  # fmt: skip
    publish_run(str(root / VERSION), "run-0001", "test")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nightly")
    catalog = make_catalog(N_FILMS, seed=2)
    with_vectors = [f.movie_id for f in catalog.films[: N_FILMS - 20]]  # 20 films have none
    vectors = clustered_vectors(len(with_vectors))
    write_vectors(tmp / "vectors", with_vectors, vectors)
    ratings = make_watch_history(catalog, 25, seed=3)
    write_ratings_csv(tmp / "ratings.csv", ratings)
    info = index_stage.run([f"--vectors={tmp / 'vectors'}"])
    return tmp, np.array(with_vectors), vectors, ratings, info


def nightly(tmp: pathlib.Path, *extra: str) -> dict:
    return neighbors.run([
        "--run_date=2024-05-17", f"--vectors={tmp / 'vectors'}", f"--output={tmp / 'out'}",
        f"--watch_history={tmp / 'ratings.csv'}", *extra,
    ])  # fmt: skip


def test_index_manifest_records_the_build(world):
    _, ids, _, _, info = world
    assert info["n"] == len(ids) and info["dim"] == 32 and info["model_version"] == VERSION
    assert info["params"]["mode"] == "brute_force" and info["recall_at_10"] == 1.0
    assert pathlib.Path(info["index_uri"], "index_manifest.json").exists()


def test_recall_floor_is_enforced(world, tmp_path):
    tmp = world[0]
    with pytest.raises(index_stage.RecallTooLow, match="recall@10"):
        index_stage.run([f"--vectors={tmp / 'vectors'}", f"--output={tmp_path}",
                         "--index_mode=tree_ah", "--num_leaves=40", "--num_leaves_to_search=1",
                         "--reorder_k=10", "--recall_floor=0.99"])  # fmt: skip
    assert not (tmp_path / "index_manifest.json").exists()


def test_neighbor_table_matches_exact_search(world):
    tmp, ids, vectors, _, _ = world
    report = nightly(tmp)
    con = duckdb.connect(str(tmp / "out" / "warehouse.duckdb"), read_only=True)
    rows = con.execute(f"select movie_id, rank, neighbor_id, score from {NeighborRow.TABLE} "
                       "order by movie_id, rank").fetchall()  # fmt: skip
    con.close()
    assert report["rows_loaded"]["neighbors"] == len(ids) * 10 == len(rows)
    by_film: dict[int, list] = {}
    for movie_id, rank, nid, score in rows:
        by_film.setdefault(movie_id, []).append((rank, nid, score))
    _, exact_scores = exact_search(vectors, vectors, 11)
    row_of = {m: i for i, m in enumerate(ids.tolist())}
    for i, movie_id in enumerate(ids.tolist()):
        got = by_film[movie_id]
        assert [r for r, _, _ in got] == list(range(1, 11))
        assert movie_id not in [n for _, n, _ in got]
        scores = [s for _, _, s in got]
        assert scores == sorted(scores, reverse=True)
        true = [float(vectors[i] @ vectors[row_of[n]]) for _, n, _ in got]
        np.testing.assert_allclose(scores, true, atol=1e-5)
        assert scores[-1] >= exact_scores[i][10] - 1e-5  # 10th best other film (0th is itself)


def test_films_sharing_a_poster_are_not_each_others_neighbours(tmp_path):
    """Films whose posters were merged as duplicates carry the same vector; neither is listed
    as the other's neighbour, and each still gets a full list."""
    ids = np.arange(1, 61)
    vectors = clustered_vectors(len(ids), seed=5)
    vectors[1] = vectors[0]  # film 2 shares film 1's poster
    vectors[2] = vectors[0]  # and so does film 3
    write_vectors(tmp_path / "vectors", ids, vectors, poster_of={2: 1, 3: 1})
    index_stage.run([f"--vectors={tmp_path / 'vectors'}"])
    neighbors.run(["--run_date=2024-05-17", f"--vectors={tmp_path / 'vectors'}",
                   f"--output={tmp_path / 'out'}"])  # fmt: skip
    con = duckdb.connect(str(tmp_path / "out" / "warehouse.duckdb"), read_only=True)
    rows = con.execute(f"select movie_id, neighbor_id from {NeighborRow.TABLE}").fetchall()
    con.close()
    lists: dict[int, list[int]] = {}
    for movie_id, nid in rows:
        lists.setdefault(movie_id, []).append(nid)
    assert set(lists) == set(ids.tolist())
    assert all(len(found) == 10 for found in lists.values())
    for film in (1, 2, 3):
        assert not {1, 2, 3} & set(lists[film]), lists[film]
    others = [m for m in ids.tolist() if m > 3 and {1, 2, 3} & set(lists[m])]
    assert any({1, 2, 3} <= set(lists[m]) for m in others)  # still neighbours of other films


def test_candidates_exclude_watched_films_and_report_missing_vectors(world):
    tmp, ids, _, ratings, _ = world
    report = nightly(tmp)
    con = duckdb.connect(str(tmp / "out" / "warehouse.duckdb"), read_only=True)
    rows = con.execute(
        f"select user_id, rank, movie_id, score from {CandidateRow.TABLE}"
    ).fetchall()
    con.close()
    watched: dict[int, set[int]] = {}
    for user, movie, _, _ in ratings:
        watched.setdefault(user, set()).add(movie)
    assert rows
    with_vectors = set(ids.tolist())
    for user, rank, movie, score in rows:
        assert movie not in watched[user] and movie in with_vectors
        assert 1 <= rank <= 100 and score > 0
    missing = sum(1 for _, movie, _, _ in ratings if movie not in with_vectors)
    assert missing > 0
    assert report["candidates"]["events_without_vector"] == missing
    assert report["candidates"]["events"] == len(ratings)


def test_rerun_of_a_date_replaces_its_rows(world):
    tmp = world[0]
    nightly(tmp)
    nightly(tmp)
    con = duckdb.connect(str(tmp / "out" / "warehouse.duckdb"), read_only=True)
    dupes = con.execute(f"select movie_id, rank, count(*) c from {NeighborRow.TABLE} "
                        "group by all having c > 1").fetchall()  # fmt: skip
    cand_dupes = con.execute(f"select user_id, rank, count(*) c from {CandidateRow.TABLE} "
                             "group by all having c > 1").fetchall()  # fmt: skip
    dates = con.execute(f"select distinct run_date from {NeighborRow.TABLE}").fetchall()
    con.close()
    assert dupes == [] and cand_dupes == []
    assert dates == [(datetime.date(2024, 5, 17),)]


def test_index_loads_after_its_folder_moves(world, tmp_path):
    tmp, ids, vectors, _, info = world
    import shutil

    from models.scann_index import PosterIndex

    moved = tmp_path / "moved_index"
    shutil.copytree(info["index_uri"], moved)
    found, _ = PosterIndex.load(str(moved)).search(vectors[:5], 3)
    assert found[:, 0].tolist() == ids[:5].tolist()


def test_builds_for_dataflow_offline_with_bigquery(world, tmp_path):
    tmp = world[0]
    result = neighbors.run([
        "--run_date=2024-05-17", f"--vectors={tmp / 'vectors'}", f"--output={tmp_path}",
        f"--watch_history={tmp / 'ratings.csv'}", "--warehouse=bq://poster-recs-test.recs",
        "--runner=DataflowRunner", "--dry_run=True", "--project=poster-recs-test",
        "--region=us-central1", "--temp_location=gs://poster-recs-test/tmp",
    ])  # fmt: skip
    assert result == {}


@pytest.mark.parametrize("stage", ["cowatch", "evaluate"])
def test_the_history_stages_build_for_dataflow_offline(world, tmp_path, stage):
    tmp = world[0]
    dataflow = ["--runner=DataflowRunner", "--dry_run=True", "--project=poster-recs-test",
                "--region=us-central1", "--temp_location=gs://poster-recs-test/tmp"]  # fmt: skip
    history = f"--watch_history={tmp / 'ratings.csv'}"
    if stage == "cowatch":
        result = cowatch_stage.run([history, f"--output={tmp_path / 'v'}", *dataflow])
    else:
        result = evaluate.run([history, f"--vectors={tmp / 'vectors'}",
                               f"--output={tmp_path / 'e'}", *dataflow])  # fmt: skip
    assert result == {}
    assert not list(tmp_path.rglob("*.npz")), "a dry run computes nothing"


def test_bad_warehouse_uri_is_a_clear_error(world):
    with pytest.raises(ValueError, match="bq://PROJECT.DATASET or duckdb"):
        nightly(world[0], "--warehouse=postgres://x")


def test_hybrid_neighbours_record_sources_and_cover_films_nobody_watched(world, tmp_path):
    tmp, ids, _, ratings, _ = world
    root = tmp_path / "vectors"
    shutil.copytree(tmp / "vectors", root)
    history = str(tmp / "ratings.csv")
    found = cowatch_stage.run([f"--watch_history={history}", f"--output={root}",
                               "--cowatch_dim=8"])  # fmt: skip
    blend = ('{"poster_weight": 0.5, "popularity_weight": 0.1, "recency_events": 5.0, '
             '"similarity": "l2"}')  # fmt: skip
    report = neighbors.run([
        "--run_date=2024-05-17", f"--vectors={root}", f"--model_version={VERSION}",
        f"--output={tmp_path / 'out'}", f"--watch_history={history}", "--candidates_k=150",
        "--neighbors_k=10",
        f"--cowatch_version={found['model_version']}", f"--blend={blend}",
    ])  # fmt: skip
    assert report["blend"]["similarity"] == "l2" and report["cowatch_version"]
    con = duckdb.connect(str(tmp_path / "out" / "warehouse.duckdb"), read_only=True)
    rows = con.execute("SELECT movie_id, source, count(*) FROM neighbors GROUP BY ALL").fetchall()
    per_film = {}
    for movie, source, count in rows:
        per_film.setdefault(movie, {})[source] = count
    watched = {r[1] for r in ratings}
    assert set(ids.tolist()) <= set(per_film)
    assert all(sum(v.values()) == 10 for v in per_film.values())
    unwatched = [m for m in ids.tolist() if m not in watched]
    assert unwatched, "the fixture needs films with a vector that nobody watched"
    for movie in unwatched:
        assert set(per_film[movie]) == {"poster"}
    sources = {s for v in per_film.values() for s in v}
    assert {"cowatch", "cowatch+poster"} & sources and "poster" in sources
    seen = {(r[0], r[1]) for r in ratings}
    candidates = con.execute(
        "SELECT user_id, movie_id, score, rank, len(contributing_movie_ids) FROM candidates"
    ).fetchall()
    assert candidates and not any((u, m) in seen for u, m, *_ in candidates)
    assert all(np.isfinite(score) for _, _, score, _, _ in candidates)
    backfilled = [c for c in candidates if c[4] == 0]
    assert backfilled, "popularity must fill the lists the neighbours leave short"
    assert report["candidates"].get("popularity_only_rows", 0) == len(backfilled)


def test_bad_history_rows_are_dead_lettered_and_counted_not_scored(world, tmp_path):
    tmp, ids, _, ratings, _ = world
    bad = ["1,5,nan,1700000000", "1,5,11,1700000000", "1,5,4.0,-3", "x,5,4.0,1700000000"]
    history = tmp_path / "ratings.csv"
    history.write_text((tmp / "ratings.csv").read_text() + "\n".join(bad) + "\n")
    report = neighbors.run([
        "--run_date=2024-05-17", f"--vectors={tmp / 'vectors'}", f"--output={tmp_path / 'out'}",
        f"--watch_history={history}",
    ])  # fmt: skip
    counts = report["watch_history"]
    assert counts["rows_read"] == len(ratings) + len(bad)
    assert counts["rows_read"] == counts["events"] + counts["dead_lettered"]
    assert counts["dead_lettered"] == len(bad) and report["candidates"]["events"] == len(ratings)
    assert report["warehouse_refused"] == {}
    files = sorted((tmp_path / "out" / "dead_letter").rglob("*.parquet"))
    dead = [row for path in files for row in pq.read_table(path).to_pylist()]
    assert sorted(d["reason"] for d in dead) == [
        "bad_user_id", "rating_not_finite", "rating_out_of_range", "timestamp_invalid"
    ]


def test_the_job_reads_the_flags_once(world):
    tmp = world[0]
    job = neighbors.build_job(neighbors.COMMAND.parse([
        "--run_date=2024-05-17", f"--vectors={tmp / 'vectors'}", f"--output={tmp / 'job'}",
    ]))  # fmt: skip
    assert job.version == VERSION and job.run_id == "nightly-2024-05-17"
    assert job.index_uri == str(tmp / "vectors" / VERSION / "index")
    assert job.warehouse.kind == "duckdb" and job.warehouse_uri.startswith("duckdb://")
    assert job.candidates is None  # no watch history: no candidates table
    with_history = neighbors.build_job(neighbors.COMMAND.parse([
        "--run_date=2024-05-17", f"--vectors={tmp / 'vectors'}", f"--output={tmp / 'job'}",
        f"--watch_history={tmp / 'ratings.csv'}", "--candidates_k=7",
    ]))  # fmt: skip
    assert with_history.candidates.top_k == 7 and with_history.candidates.model_version == VERSION


def test_a_cowatch_version_without_a_blend_is_refused_before_any_work(world):
    tmp = world[0]
    with pytest.raises(UsageError, match="--cowatch_version needs --blend"):
        neighbors.build_job(neighbors.COMMAND.parse([
            "--run_date=2024-05-17", f"--vectors={tmp / 'vectors'}", f"--output={tmp / 'job'}",
            "--cowatch_version=cowatch-0123456789ab",
        ]))  # fmt: skip


def test_a_night_whose_history_lost_most_users_does_not_replace_the_candidates(world, tmp_path):
    tmp = world[0]
    out = tmp_path / "out"

    def night(date: str, history: pathlib.Path, *extra: str) -> dict:
        return neighbors.run([
            f"--run_date={date}", f"--vectors={tmp / 'vectors'}", f"--output={out}",
            f"--watch_history={history}", *extra,
        ])  # fmt: skip

    def published() -> list[tuple]:
        with duckdb.connect(str(out / "warehouse.duckdb"), read_only=True) as con:
            sql = (f"select run_date, count(distinct user_id), count(*) from "
                   f"{CandidateRow.TABLE} group by all order by all")  # fmt: skip
            return con.execute(sql).fetchall()

    night("2024-05-17", tmp / "ratings.csv")
    before = published()
    few = [r for r in world[3] if r[0] <= 5]  # 5 of the 25 users: a broken export
    write_ratings_csv(tmp_path / "few.csv", few)
    with pytest.raises(InputError, match=r"refused to publish 2024-05-18: its candidates have 5 "
                                         r"users .* 2024-05-17 has 25 users"):
        night("2024-05-18", tmp_path / "few.csv")
    assert published() == before
    night("2024-05-18", tmp_path / "few.csv", "--allow_shrink")
    assert [d.isoformat() for d, _, _ in published()] == ["2024-05-17", "2024-05-18"]
