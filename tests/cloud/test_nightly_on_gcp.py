"""The whole nightly job on the synthetic poster web with every path on Cloud Storage and the
warehouse in BigQuery, both emulated on 127.0.0.1, run twice as a user would run it.

The catalog, the watch history and the model file are uploaded to gs://; the job's --output (so
posters, vectors, the staged model, the index, reports and the warehouse's staged Parquet) is
under gs://, and --warehouse=bq://PROJECT.DATASET. Outputs are listed and read back from the
emulator, the accounting identities hold, docs/nightly.md's consumer queries return the rows
written, and the second run of the same date is incremental and replaces the date's rows.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas import EmbeddingRow
from schemas import PosterRecord
from storage.files import read_tfrecords
from synthetic.catalog import make_catalog
from synthetic.catalog import make_watch_history
from synthetic.catalog import write_links_csv
from synthetic.catalog import write_ratings_csv
from synthetic.web import PosterWeb
from tests.cloud.emulators import BUCKET
from tests.cloud.emulators import PROJECT
from tests.cloud.queries import consumer_queries
from tests.conftest import REPO_ROOT

FILMS = 40
USERS = 24
KEY = "cloud-test-key"
DATASET = "recs"
RUN_DATE = datetime.date(2024, 5, 17)
ROOT = f"gs://{BUCKET}/nightly"
_MODEL = ("from models import registry; import sys; "
          "registry.save_embedding_model(registry.load_embedding_model('small_cnn'), sys.argv[1])")


def upload(cloud, name: str, data: bytes) -> str:
    cloud.storage_client().bucket(BUCKET).blob(name).upload_from_string(data)
    return f"gs://{BUCKET}/{name}"


def blobs(cloud, prefix: str) -> dict[str, bytes]:
    """name -> bytes of every object under ``prefix`` (the run's outputs, read back)."""
    return {b.name: b.download_as_bytes()
            for b in cloud.storage_client().list_blobs(BUCKET, prefix=prefix)}  # fmt: skip


@pytest.fixture(scope="module")
def runs(cloud, tmp_path_factory):
    """Two nightly runs of one date; (catalog, web, [stdout of each], objects after each)."""
    local = tmp_path_factory.mktemp("inputs")
    catalog = make_catalog(FILMS, seed=0)
    write_links_csv(str(local / "links.csv"), catalog.films)
    write_ratings_csv(str(local / "ratings.csv"), make_watch_history(catalog, USERS, seed=0))
    subprocess.run([sys.executable, "-c", _MODEL, str(local / "small_cnn.keras")], check=True,
                   cwd=REPO_ROOT, capture_output=True, timeout=300)  # fmt: skip
    links = upload(cloud, "input/links.csv", (local / "links.csv").read_bytes())
    ratings = upload(cloud, "input/ratings.csv", (local / "ratings.csv").read_bytes())
    model = upload(cloud, "models/small_cnn.keras", (local / "small_cnn.keras").read_bytes())
    cloud.bigquery_client().create_dataset(f"{PROJECT}.{DATASET}")
    outputs, objects = [], []
    with PosterWeb.from_catalog(catalog, api_key=KEY) as web:
        argv = [
            f"--catalog={links}", f"--watch_history={ratings}", f"--model={model}",
            f"--output={ROOT}", f"--run_date={RUN_DATE}", f"--warehouse=bq://{PROJECT}.{DATASET}",
            f"--tmdb_api_key={KEY}", f"--tmdb_api_base={web.tmdb_api_base}",
            f"--tmdb_image_base={web.tmdb_image_base}", f"--imdb_base={web.imdb_base}",
            f"--allowed_hosts={web.host}", "--requests_per_second_per_host=500",
            "--backoff_base_s=0.1", "--baseline_model=",
        ]  # fmt: skip
        for _ in range(2):
            web.reset_log()
            done = cloud.run("pipelines.nightly", argv, timeout=600)
            assert done.returncode == 0, done.stderr[-5000:]
            assert "Traceback" not in done.stderr, done.stderr[-5000:]
            assert "googleapis.com" not in done.stderr, "a request tried to leave 127.0.0.1"
            outputs.append((done.stdout, list(web.request_log)))
            objects.append(blobs(cloud, "nightly/"))
    return catalog, outputs, objects


def manifest(objects: dict[str, bytes], folder: str, run_id: str) -> dict:
    (name,) = [n for n in objects if n.startswith(f"nightly/{folder}")
               and n.endswith(f"/manifests/{run_id}.json")]  # fmt: skip
    return json.loads(objects[name])


def parquet_rows(objects: dict[str, bytes], table, infix: str) -> list:
    return [row for name, data in sorted(objects.items())
            if infix in name and name.endswith(".parquet")
            for row in table.from_arrow(pq.read_table(pa.BufferReader(data)))]  # fmt: skip


def test_every_output_is_on_cloud_storage_and_reads_back(cloud, runs):
    catalog, _, (first, _) = runs
    scrape = manifest(first, "scrape", "run-0001")
    assert scrape["accounting_ok"] and scrape["input_rows"] == FILMS
    assert scrape["written"] > FILMS // 2
    posters = [PosterRecord.from_example(r) for name, data in first.items()
               if name.startswith("nightly/scrape/posters/run-0001/")
               and name.endswith(".tfrecord") for r in read_tfrecords(data)]  # fmt: skip
    assert len(posters) == scrape["written"]
    assert all(p.image_jpeg[:2] == b"\xff\xd8" for p in posters)

    (version,) = {n.split("/")[2] for n in first
                  if n.startswith("nightly/vectors/small_cnn")}  # fmt: skip
    embed = manifest(first, f"vectors/{version}", "run-0001")
    assert embed["accounting_ok"]
    vectors = parquet_rows(first, EmbeddingRow, f"nightly/vectors/{version}/embeddings/run-0001/")
    assert {v.movie_id for v in vectors} >= {p.movie_id for p in posters}
    assert f"nightly/vectors/{version}/model/{version}.keras" in first
    index = json.loads(first[f"nightly/vectors/{version}/index/index_manifest.json"])
    assert index["recall_at_10"] >= 0.95  # the build refuses less (ties may swap)

    html = first[f"nightly/nightly/reports/run-{RUN_DATE}.html"].decode()
    assert "<svg" in html and "data:image/png;base64," in html
    report = json.loads(first[f"nightly/nightly/reports/nightly-{RUN_DATE}.json"])
    assert report["warehouse"] == f"bq://{PROJECT}.{DATASET}"
    assert not [n for n in first if "/bigquery/_staging/" in n]  # staged files removed
    assert cloud.metadata.tokens_served > 0  # credentials came from the metadata server


def test_the_readme_queries_return_the_rows_written(cloud, runs):
    _, _, (first, _) = runs
    report = json.loads(first[f"nightly/nightly/reports/nightly-{RUN_DATE}.json"])
    bq = cloud.bigquery_client()
    table = f"`{PROJECT}.{DATASET}"
    counts = {t: next(iter(bq.query(f"SELECT COUNT(*) FROM {table}.{t}` "
                                    f"WHERE run_date = '{RUN_DATE}'").result()))[0]
              for t in ("neighbors", "candidates")}  # fmt: skip
    assert counts == report["rows_loaded"]
    assert counts["neighbors"] % 10 == 0 and counts["neighbors"] >= 10 * FILMS // 2
    film = next(iter(bq.query(f"SELECT MIN(movie_id) FROM {table}.neighbors`").result()))[0]
    user = next(iter(bq.query(f"SELECT MIN(user_id) FROM {table}.candidates`").result()))[0]
    neighbours_sql, candidates_sql = consumer_queries(PROJECT, DATASET, film, user, RUN_DATE)
    neighbours = [tuple(r.values()) for r in bq.query(neighbours_sql).result()]
    assert [r[0] for r in neighbours] == list(range(1, 11))
    assert film not in {r[1] for r in neighbours}
    assert all(a[2] >= b[2] for a, b in zip(neighbours, neighbours[1:], strict=False))
    candidates = [tuple(r.values()) for r in bq.query(candidates_sql).result()]
    assert [r[0] for r in candidates] == list(range(1, len(candidates) + 1)) and candidates


def test_the_second_run_is_incremental_and_replaces_the_date(cloud, runs):
    catalog, outputs, (first, second) = runs
    one, two = manifest(second, "scrape", "run-0001"), manifest(second, "scrape", "run-0002")
    assert two["accounting_ok"] and two["input_rows"] == FILMS
    assert two["written"] == 0 and two["already_present"] == one["written"]
    written = {PosterRecord.from_example(r).movie_id for name, data in first.items()
               if name.startswith("nightly/scrape/posters/run-0001/")
               and name.endswith(".tfrecord") for r in read_tfrecords(data)}  # fmt: skip
    old_tmdb = {str(catalog.film(m).tmdb_id) for m in written}
    asked = {r.path.rsplit("/", 1)[1] for r in outputs[1][1] if r.path.startswith("/3/movie/")}
    assert not asked & old_tmdb, "the second run fetched films the first one wrote"
    (version,) = {n.split("/")[2] for n in second if n.startswith("nightly/vectors/small_cnn")}
    embed = manifest(second, f"vectors/{version}", "run-0002")
    assert embed["accounting_ok"] and embed["written"] == 0
    assert embed["already_present"] == manifest(first, f"vectors/{version}", "run-0001")["written"]

    bq = cloud.bigquery_client()
    rows = [tuple(r.values()) for r in bq.query(
        f"SELECT movie_id, rank, neighbor_id, score FROM `{PROJECT}.{DATASET}.neighbors` "
        f"WHERE run_date = '{RUN_DATE}' ORDER BY movie_id, rank").result()]  # fmt: skip
    name = f"nightly/nightly/reports/nightly-{RUN_DATE}.json"
    loaded = [json.loads(objects[name])["rows_loaded"] for objects in (first, second)]
    assert loaded[0] == loaded[1]
    assert len(rows) == loaded[1]["neighbors"]  # replaced, not appended
    assert len({(m, r) for m, r, _, _ in rows}) == len(rows)
