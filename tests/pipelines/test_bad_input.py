"""Bad input on the command line: one line on stderr naming the flag or file and what to do.

Each case runs ``python -m pipelines.STAGE ...`` as a user would (all cases at once, in
parallel) and checks the exit status (2 for usage errors, 1 for unusable inputs), that stderr ends
with exactly one ``error:`` line holding the expected words, and that no traceback is printed
unless ``--debug`` asks for it. A corrupt poster TFRecord is not an error: it is dead-lettered with
its file name and the embed stage goes on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import pathlib
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from schemas import DeadLetter
from tests.conftest import REPO_ROOT
from tests.fixtures import synthetic_records
from tests.fixtures import write_poster_folder

LINKS_HEADER = "movieId,imdbId,tmdbId\n"


@dataclasses.dataclass(frozen=True)
class Case:
    """One command line, its exit status and the words its error line must hold."""

    stage: str
    args: tuple[str, ...]
    status: int
    words: tuple[str, ...]
    absent: tuple[str, ...] = ()


def cases(w: pathlib.Path) -> dict[str, Case]:
    """Every bad input of issue 11, as command lines over the files of ``workspace``."""
    blocked = f"--output={w / 'a_file' / 'out'}"  # a folder inside a file: never writable
    catalog = f"--catalog={w / 'links.csv'}"
    posters = f"--posters={w / 'posters'}"
    return {
        "missing catalog": Case(
            "scrape", (f"--catalog={w / 'nope.csv'}", f"--output={w / 'o1'}"), 2,
            (f"--catalog={w / 'nope.csv'}: no such file", "--synthetic_films"),
        ),
        "empty catalog": Case(
            "scrape", (f"--catalog={w / 'empty.csv'}", f"--output={w / 'o2'}"), 1,
            (f"--catalog={w / 'empty.csv'} is empty", "header row"),
        ),
        "catalog with a header only": Case(
            "scrape", (f"--catalog={w / 'header.csv'}", f"--output={w / 'o3'}"), 1,
            (f"--catalog={w / 'header.csv'} has a header but no films",),
        ),
        "unknown catalog header": Case(
            "scrape", (f"--catalog={w / 'weird.csv'}", f"--output={w / 'o4'}"), 1,
            (f"--catalog={w / 'weird.csv'}", "unrecognised catalog header", "--catalog_format"),
        ),
        "output not writable": Case(
            "scrape", (catalog, blocked), 1,
            (blocked, "cannot be written", "choose a folder"),
        ),
        "malformed bucket": Case(
            "scrape", (catalog, "--output=gs://Not_A_Bucket/x"), 2,
            ("--output=gs://Not_A_Bucket/x", "not a Cloud Storage bucket name"),
        ),
        "missing model file": Case(
            "embed", (posters, f"--output={w / 'v1'}", f"--model={w / 'nope.keras'}"), 2,
            (f"--model={w / 'nope.keras'}: no such file", "backbone name"),
            ("weights file",),
        ),
        "model is a text file": Case(
            "embed", (posters, f"--output={w / 'v2'}", f"--model={w / 'text.keras'}"), 1,
            (f"--model={w / 'text.keras'} is not a Keras model file",),
            ("File not found",),
        ),
        "missing weights file": Case(
            "embed",
            (posters, f"--output={w / 'v3'}", "--model=small_cnn", f"--weights={w / 'nope.h5'}"),
            2, (f"--weights={w / 'nope.h5'}: no such file",),
        ),
        "weights is a text file": Case(
            "embed",
            (posters, f"--output={w / 'v4'}", "--model=small_cnn", f"--weights={w / 'text.h5'}"),
            1, (f"--weights={w / 'text.h5'} is not an HDF5 weights file",),
        ),
        "no posters": Case(
            "embed", (f"--posters={w / 'nothing'}", f"--output={w / 'v5'}", "--model=pixels"), 2,
            (f"--posters={w / 'nothing'}: nothing matches", "scrape stage's --output root"),
        ),
        "embed output not writable": Case(
            "embed", (posters, blocked, "--model=pixels"), 1, (blocked, "cannot be written"),
        ),
        "index on an empty folder": Case(
            "index", (f"--vectors={w / 'empty_dir'}",), 1,
            (f"--vectors={w / 'empty_dir'} holds no vectors", "python -m pipelines.embed"),
            ("choose one with --model_version",),
        ),
        "neighbours on a bad date": Case(
            "neighbors",
            ("--run_date=2026-13-45", f"--vectors={w / 'empty_dir'}", f"--output={w / 'n1'}"), 2,
            ("--run_date=2026-13-45 is not a date", "YYYY-MM-DD"),
        ),
        "nightly on a bad date": Case(
            "nightly", ("--run_date=2026-13-45", catalog, f"--output={w / 'nightly1'}"), 2,
            ("--run_date=2026-13-45 is not a date", "YYYY-MM-DD"),
        ),
        "nightly output not writable": Case(
            "nightly", (catalog, blocked), 1, (blocked, "cannot be written"),
        ),
        "nightly on an empty catalog": Case(
            "nightly", (f"--catalog={w / 'empty.csv'}", f"--output={w / 'nightly2'}"), 1,
            (f"--catalog={w / 'empty.csv'} is empty",),
        ),
        "missing watch history": Case(
            "cowatch", (f"--watch_history={w / 'nope.csv'}", f"--output={w / 'c1'}"), 2,
            (f"--watch_history={w / 'nope.csv'}: no such file", "userId,movieId,rating"),
        ),
        "watch history with a header only": Case(
            "cowatch", (f"--watch_history={w / 'header_ratings.csv'}", f"--output={w / 'c2'}"),
            1, (f"--watch_history={w / 'header_ratings.csv'} holds no watch events",
                "published candidates are unchanged"),
        ),
        "neighbours on an empty watch history": Case(
            "neighbors", ("--run_date=2024-05-17", f"--vectors={w / 'empty_dir'}",
                          f"--watch_history={w / 'empty.csv'}", f"--output={w / 'n1'}"), 1,
            (f"--watch_history={w / 'empty.csv'} holds no watch events",),
        ),
        "watch history missing a column": Case(
            "neighbors", ("--run_date=2024-05-17", f"--vectors={w / 'empty_dir'}",
                          f"--watch_history={w / 'three_columns.csv'}", f"--output={w / 'n3'}"),
            1, (f"--watch_history={w / 'three_columns.csv'} has the header userId,movieId,rating,"
                " not userId,movieId,rating,timestamp",),
        ),
        "warehouse that is not a DuckDB file": Case(
            "neighbors", ("--run_date=2024-05-17", f"--vectors={w / 'empty_dir'}",
                          f"--warehouse=duckdb://{w / 'text.duckdb'}", f"--output={w / 'n4'}"), 1,
            (f"{w / 'text.duckdb'} cannot be opened as a DuckDB database for writing",),
        ),
        "Dataflow without a project, region or temp location": Case(
            "nightly", (catalog, "--runner=DataflowRunner", f"--output={w / 'nightly4'}"), 2,
            ("--runner=DataflowRunner needs --project, --region, --temp_location",),
        ),
        "nightly with a misspelt flag": Case(
            "nightly", (catalog, f"--watch_histroy={w / 'header_ratings.csv'}",
                        f"--output={w / 'nightly3'}"), 2,
            ("unknown flag --watch_histroy (did you mean --watch_history?)", "nothing was run"),
        ),
        "neighbours with --max_shrink out of range": Case(
            "neighbors", ("--run_date=2024-05-17", f"--vectors={w / 'empty_dir'}",
                          "--max_shrink=2", f"--output={w / 'n2'}"), 2,
            ("--max_shrink=2.0: give a fraction from 0 to 1",),
        ),
    }  # fmt: skip


DEBUG_CASE = "index on an empty folder"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    """The files the cases name: catalogs, a text file posing as a model, a poster folder."""
    w = tmp_path_factory.mktemp("bad_input")
    (w / "empty.csv").write_text("")
    (w / "header.csv").write_text(LINKS_HEADER)
    (w / "weird.csv").write_text("title,url\nJaws,http://127.0.0.1/jaws.jpg\n")
    (w / "links.csv").write_text(LINKS_HEADER + "1,0076759,11\n")
    (w / "header_ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    (w / "three_columns.csv").write_text("userId,movieId,rating\n1,2,4.0\n")
    (w / "text.keras").write_text("not a model\n")
    (w / "text.h5").write_text("not weights\n")
    (w / "text.duckdb").write_text("not a database\n")
    (w / "a_file").write_text("")
    (w / "empty_dir").mkdir()
    records = synthetic_records(6)
    write_poster_folder(records, w / "posters")
    corrupt = write_poster_folder(records, w / "corrupt_posters")
    shard = sorted((corrupt / "posters" / "run-0001").glob("*.tfrecord"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return w


def _run(stage: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{stage}", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(workspace) -> dict[str, subprocess.CompletedProcess]:
    """Every case's finished command (run in parallel), the --debug run and the corrupt run."""
    table = cases(workspace)
    debug = table[DEBUG_CASE]
    corrupt = (f"--posters={workspace / 'corrupt_posters'}", f"--output={workspace / 'vc'}",
               "--model=pixels")  # fmt: skip
    jobs = {name: (case.stage, *case.args) for name, case in table.items()}
    jobs["--debug"] = (debug.stage, *debug.args, "--debug")
    jobs["corrupt"] = ("embed", *corrupt)
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(_run, *job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(cases(pathlib.Path("/w"))))
def test_bad_input_ends_with_one_line_and_no_traceback(workspace, outcomes, name):
    case = cases(workspace)[name]
    done = outcomes[name]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], done.stderr
    for words in case.words:
        assert words in lines[-1]
    for words in case.absent:
        assert words not in lines[-1]
    assert done.returncode == case.status, done.stderr[-3000:]
    assert done.stdout == ""


def test_nightly_checks_before_it_scrapes(workspace, outcomes):
    for name in ("nightly on a bad date", "nightly on an empty catalog",
                 "nightly with a misspelt flag",
                 "Dataflow without a project, region or temp location"):
        assert "[nightly] scrape: started" not in outcomes[name].stdout
    assert not (workspace / "nightly1" / "scrape").exists()
    assert not (workspace / "nightly2").exists()
    assert not (workspace / "nightly3").exists()
    assert not (workspace / "nightly4").exists()


def test_debug_prints_the_traceback_before_the_line(workspace, outcomes):
    done, case = outcomes["--debug"], cases(workspace)[DEBUG_CASE]
    assert done.returncode == case.status
    assert "Traceback (most recent call last)" in done.stderr
    assert "pipelines.common.InputError" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and case.words[0] in last


def test_a_corrupt_poster_file_is_dead_lettered_by_name_and_the_job_goes_on(workspace, outcomes):
    done = outcomes["corrupt"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "dead_lettered 1 " in done.stdout and done.stdout.rstrip().endswith(": OK")
    assert "could not be read" in done.stderr
    files = glob.glob(str(workspace / "vc" / "*" / DeadLetter.TABLE / "*" / "*.parquet"))
    (letter,) = [d for f in files for d in DeadLetter.from_arrow(pq.read_table(f))]
    shard = sorted((workspace / "corrupt_posters" / "posters" / "run-0001").glob("*.tfrecord"))[1]
    assert (letter.stage, letter.reason) == ("read", "corrupt_tfrecord")
    assert letter.input_row.startswith(f"file={shard} ")
    assert str(shard) in letter.detail
