"""Failures of the cloud side end a command with one line that names what is missing and the flag
that sets it, before any work: a missing bucket, a missing dataset, no credentials."""

from __future__ import annotations

import concurrent.futures
import dataclasses

import pytest

from tests.cloud.emulators import BUCKET
from tests.cloud.emulators import PROJECT

LINKS = "movieId,imdbId,tmdbId\n1,0076759,11\n"


@dataclasses.dataclass(frozen=True)
class Case:
    """One command line against the emulators, its exit status and the words of its line."""

    module: str
    args: tuple[str, ...]
    status: int
    words: tuple[str, ...]
    credentials: bool = True


def cases(tmp: str) -> dict[str, Case]:
    catalog = f"gs://{BUCKET}/errors/links.csv"
    nightly = (f"--catalog={catalog}", f"--output=gs://{BUCKET}/errors/out",
               "--run_date=2024-05-17")  # fmt: skip
    neighbours = ("--run_date=2024-05-17", f"--vectors={tmp}/vectors", f"--output={tmp}/n")
    return {
        "missing bucket of --output": Case(
            "pipelines.scrape", (f"--catalog={catalog}", "--output=gs://no-such-bucket/out"), 2,
            ("--output=gs://no-such-bucket/out:", "bucket gs://no-such-bucket does not exist",
             "gcloud storage buckets create gs://no-such-bucket"),
        ),
        "missing bucket of --catalog": Case(
            "pipelines.nightly", ("--catalog=gs://no-such-bucket/links.csv",
                                  f"--output=gs://{BUCKET}/errors/out2"), 2,
            ("--catalog=gs://no-such-bucket/links.csv:", "bucket gs://no-such-bucket"),
        ),
        "missing dataset": Case(
            "pipelines.nightly", (*nightly, f"--warehouse=bq://{PROJECT}.no_such_dataset"), 2,
            (f"--warehouse=bq://{PROJECT}.no_such_dataset:",
             f"dataset {PROJECT}.no_such_dataset does not exist", "bq mk --dataset"),
        ),
        "missing dataset, neighbours stage": Case(
            "pipelines.neighbors", (*neighbours, f"--warehouse=bq://{PROJECT}.nope"), 2,
            (f"--warehouse=bq://{PROJECT}.nope:", "does not exist"),
        ),
        "DuckDB warehouse under gs://": Case(
            "pipelines.nightly", nightly, 2,
            (f"--warehouse: its default gs://{BUCKET}/errors/out/nightly/warehouse.duckdb is "
             "not a local file", "--warehouse=bq://PROJECT.DATASET"),
        ),
        "no credentials for gs://": Case(
            "pipelines.scrape", (f"--catalog={catalog}", f"--output=gs://{BUCKET}/errors/o"), 1,
            (f"--catalog={catalog} needs Google Cloud credentials and none were found",
             "gcloud auth application-default login", "GOOGLE_APPLICATION_CREDENTIALS"),
            credentials=False,
        ),
        "no credentials for bq://": Case(
            "pipelines.neighbors", (*neighbours, f"--warehouse=bq://{PROJECT}.recs"), 1,
            (f"--warehouse=bq://{PROJECT}.recs needs Google Cloud credentials",),
            credentials=False,
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(cloud, tmp_path_factory):
    """Every case's finished command, run in parallel."""
    cloud.storage_client().bucket(BUCKET).blob("errors/links.csv").upload_from_string(LINKS)
    tmp = str(tmp_path_factory.mktemp("errors"))
    table = cases(tmp)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {
            name: pool.submit(cloud.run, case.module, list(case.args), 300,
                              credentials=case.credentials)
            for name, case in table.items()
        }  # fmt: skip
        return tmp, {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(cases("/t")))
def test_a_cloud_failure_is_one_line_naming_the_flag(outcomes, name):
    tmp, done = outcomes[0], outcomes[1][name]
    case = cases(tmp)[name]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], done.stderr
    for words in case.words:
        assert words in lines[-1], lines[-1]
    assert done.returncode == case.status, done.stderr[-3000:]


def test_nothing_was_written_before_the_error(cloud, outcomes):
    names = [b.name for b in cloud.storage_client().list_blobs(BUCKET, prefix="errors/")]
    assert names == ["errors/links.csv"]
