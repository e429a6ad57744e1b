"""Real MovieLens users get candidates from vectors of the real posters; evaluation printed."""

from __future__ import annotations

import csv
import datetime
import random

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from models.image_ops import decode_and_resize_numpy
from models.registry import embed_images
from models.registry import load_embedding_model
from pipelines import evaluate
from pipelines import index as index_stage
from pipelines import neighbors
from schemas import CandidateRow
from schemas import EmbeddingRow
from storage.runs import publish_run

WEIGHTS = "weights/squeezenet_v1.1_imagenet_notop_keras1.h5"
WHEN = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
POSTERS = 500
"""A seeded sample of the set's posters (of 2,923): embedding them all would take most of this
file's time."""


def write_table(root, em, ids, vectors):
    folder = root / em.version / EmbeddingRow.TABLE / "run-0001"
    folder.mkdir(parents=True)
    rows = [
        EmbeddingRow(movie_id=int(m), dim=em.dim, model_name=em.name, model_version=em.version,
                     content_sha256="-", poster_of=int(m), embedded_at=WHEN,
                     embedding=tuple(map(float, v)))
        for m, v in zip(ids, vectors, strict=True)
    ]  # fmt: skip
    pq.write_table(EmbeddingRow.to_arrow(rows, list_size=em.dim), folder / "part.parquet")
    publish_run(str(root / em.version), "run-0001", "test")


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_nightly")
    folder = shared_data / "posters" / "set_a"
    with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["movieId"]]
    rows = random.Random(0).sample(rows, POSTERS)
    ids = [int(r["movieId"]) for r in rows]
    jpegs = [(folder / r["poster_file"]).read_bytes() for r in rows]
    versions = {}
    for model, weights in (("squeezenet_v1_1", str(shared_data / WEIGHTS)), ("pixels", None)):
        em = load_embedding_model(model, weights)
        pixels = np.stack([decode_and_resize_numpy(j, em.input_size) for j in jpegs])
        write_table(tmp / "vectors", em, ids, embed_images(em, pixels, batch_size=64))
        versions[model] = em.version
    ratings = shared_data / "movielens" / "ml-latest-small" / "ratings.csv"
    return tmp, versions, ids, ratings


def test_real_users_get_candidates_from_real_posters(real):
    tmp, versions, ids, ratings = real
    version = versions["squeezenet_v1_1"]
    info = index_stage.run([f"--vectors={tmp / 'vectors'}", f"--model_version={version}"])
    assert info["recall_at_10"] >= 0.95
    report = neighbors.run([
        "--run_date=2024-05-17", f"--vectors={tmp / 'vectors'}", f"--model_version={version}",
        f"--watch_history={ratings}", f"--output={tmp / 'out'}",
    ])  # fmt: skip
    assert report["rows_loaded"]["neighbors"] == 10 * len(ids)
    assert report["candidates"]["users"] == 610
    assert report["candidates"]["events"] == 100_836
    assert 0 < report["candidates"]["events_without_vector"] < 100_836
    con = duckdb.connect(str(tmp / "out" / "warehouse.duckdb"), read_only=True)
    users, per_user = con.execute(
        f"select count(distinct user_id), max(n) from (select user_id, count(*) n "
        f"from {CandidateRow.TABLE} group by user_id)"
    ).fetchone()
    con.close()
    with open(ratings, newline="") as handle:
        film_ids = set(ids)
        reachable = {
            int(r["userId"]) for r in csv.DictReader(handle) if int(r["movieId"]) in film_ids
        }
    assert users == len(reachable) and per_user == 100


def test_evaluation_beats_random_and_is_printed(real, capsys):
    tmp, versions, _, ratings = real
    report = evaluate.run([
        f"--vectors={tmp / 'vectors'}", f"--model_version={versions['squeezenet_v1_1']}",
        f"--baseline_model_version={versions['pixels']}", f"--watch_history={ratings}",
        f"--output={tmp / 'out'}", "--eval_users=300", "--cowatch_max_films=3000",
    ])  # fmt: skip
    print(report["table"])
    results = report["results"]
    ours = results["poster kNN: squeezenet_v1_1"]
    assert 250 < report["users_evaluated"] <= 300 and report["users_sampled"] == 300
    assert ours["HR@100"] > results["random"]["HR@100"]
    assert set(results) == {
        "poster kNN: squeezenet_v1_1", "poster kNN: pixels", "co-watch kNN", "popularity", "random",
    }  # fmt: skip
