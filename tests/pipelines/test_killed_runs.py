"""Runs are atomic: scrape, embed and neighbours killed with SIGKILL, then rerun.

Each stage runs as its own process (``python -m pipelines.X``, the synthetic poster web on
127.0.0.1 inside it) and is killed, process group and all, while it writes its tables or
earlier; the reruns use the same and other ``--num_shards``. Whatever a kill leaves is never
read, the next run clears it, and the whole catalog is accounted for: no film twice, none lost.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import os
import pathlib
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from pipelines import embed
from pipelines import index as index_stage
from pipelines.common import InputError
from schemas import EmbeddingRow
from schemas import NeighborRow
from schemas import PosterRecord
from storage.files import read_parquet_records
from storage.files import read_tfrecords
from synthetic.catalog import make_catalog
from synthetic.catalog import make_watch_history
from synthetic.catalog import write_ratings_csv

REPO = pathlib.Path(__file__).resolve().parents[2]
FILMS = 60
DAY = "2024-05-17"
SCRAPE = ("pipelines.scrape", f"--synthetic_films={FILMS}", "--fetch_processes=1")


@dataclasses.dataclass
class Killed:
    """What one killed process left: the files it had written when it died."""

    killed: bool
    files: list[str]


def start(tmp: pathlib.Path, module: str, *flags: str) -> subprocess.Popen:
    """``python -m module flags`` in its own process group, its output in a log under tmp."""
    path = tmp / f"{module}-{time.monotonic_ns()}.log"
    with open(path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *flags], cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,  # the kill takes its workers too
        )  # fmt: skip
    process.log_path = path
    return process


def run(tmp: pathlib.Path, module: str, *flags: str) -> None:
    process = start(tmp, module, *flags)
    if process.wait(timeout=180) != 0:
        pytest.fail(f"{module} failed:\n{process.log_path.read_text()[-3000:]}")


def kill_when(process: subprocess.Popen, pattern: str, after_s: float = 0.0) -> Killed:
    """SIGKILL the process group once a file matches ``pattern`` (any, when it is ''), or
    ``after_s`` seconds after that; report what the glob found at the kill."""
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        if not pattern or glob.glob(pattern):
            time.sleep(after_s)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return Killed(True, sorted(glob.glob(pattern)) if pattern else [])
        time.sleep(0.002)
    process.wait()
    return Killed(False, [])


def on_disk(folder: pathlib.Path) -> list[PosterRecord]:
    """Every poster in every shard file on disk, published or not."""
    return [PosterRecord.from_example(r) for f in sorted(folder.glob("posters/*/*.tfrecord"))
            for r in read_tfrecords(f.read_bytes())]  # fmt: skip


def manifest(root: pathlib.Path, run_id: str) -> dict:
    import json

    return json.loads((root / "manifests" / f"{run_id}.json").read_text())


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """A clean reference scrape, and the same catalog scraped through two kills."""
    tmp = tmp_path_factory.mktemp("killed")
    run(tmp, *SCRAPE, f"--output={tmp / 'reference'}", "--num_shards=4")
    out = tmp / "scrape"
    # A final-named poster shard (posters-*.tfrecord): each shard is first written under a
    # temporary name (posters-*.tfrecord.tmp-writing), and a kill then would leave nothing for
    # the embed stage to refuse.
    writing = str(out / "posters" / "run-0001" / "posters-*.tfrecord")
    mid_write = kill_when(start(tmp, *SCRAPE, f"--output={out}", "--num_shards=3"), writing)
    embed_error = None
    try:  # embed over the killed scrape
        embed.run([f"--posters={out}", f"--output={tmp / 'early_vectors'}", "--model=pixels"])
    except InputError as exc:
        embed_error = str(exc)
    early = kill_when(start(tmp, *SCRAPE, f"--output={out}", "--num_shards=3"), "", after_s=2.0)
    run(tmp, *SCRAPE, f"--output={out}", "--num_shards=4")
    again = kill_when(start(tmp, *SCRAPE, f"--output={out}", "--num_shards=2"),
                      str(out / "posters" / "run-0002" / "*"))  # fmt: skip
    run(tmp, *SCRAPE, f"--output={out}", "--num_shards=2")
    return tmp, out, mid_write, early, again, embed_error


def test_a_scrape_killed_mid_write_is_never_read(scraped):
    tmp, out, mid_write, early, again, embed_error = scraped
    assert mid_write.killed and mid_write.files, "the first scrape was not killed mid-write"
    assert any("-of-00003" in f for f in mid_write.files)
    assert early.killed and again.killed
    assert embed_error and "no manifest" in embed_error and not (tmp / "early_vectors").exists()


def test_killed_scrapes_rerun_with_other_shards_account_for_the_whole_catalog(scraped):
    tmp, out, *_ = scraped
    reference = manifest(tmp / "reference", "run-0001")
    first, second = manifest(out, "run-0001"), manifest(out, "run-0002")
    assert sorted(os.listdir(out / "manifests")) == [
        "run-0001.json", "run-0001.parquet", "run-0002.json", "run-0002.parquet",
    ]  # fmt: skip
    assert sorted(os.listdir(out / "posters" / "run-0001")) == [
        "films.json", *(f"posters-0000{i}-of-00004.tfrecord" for i in range(4))
    ]
    assert all(f.endswith("-of-00002.tfrecord") or f == "films.json"
               for f in os.listdir(out / "posters" / "run-0002"))  # fmt: skip
    for run_manifest in (first, second):
        assert run_manifest["accounting_ok"] and run_manifest["input_rows"] == FILMS
    for key in ("written", "duplicates", "dead_lettered", "already_present"):
        assert first[key] == reference[key], key
    assert second["written"] == 0 and second["already_present"] == reference["written"]
    assert second["duplicates"] + second["dead_lettered"] == FILMS - reference["written"]
    films = [p.movie_id for p in on_disk(out)]
    assert len(films) == len(set(films)), "a film was written twice"
    assert set(films) == {p.movie_id for p in on_disk(tmp / "reference")}, "a film was lost"


@pytest.fixture(scope="module")
def embedded(scraped):
    """Embed killed while it writes 3 shards, then rerun with 2."""
    tmp, out, *_ = scraped
    vectors = tmp / "vectors"
    flags = (f"--posters={out}", f"--output={vectors}", "--model=pixels")
    writing = str(vectors / "*" / EmbeddingRow.TABLE / "run-0001" / "*")
    killed = kill_when(start(tmp, "pipelines.embed", *flags, "--num_shards=3"), writing)
    run(tmp, "pipelines.embed", *flags, "--num_shards=2")
    (version,) = os.listdir(vectors)
    return tmp, out, vectors, version, killed


def test_a_killed_embed_rerun_with_other_shards_embeds_every_film_once(embedded):
    tmp, out, vectors, version, killed = embedded
    assert killed.killed and any("-of-00003" in f for f in killed.files)
    folder = vectors / version / EmbeddingRow.TABLE / "run-0001"
    assert sorted(os.listdir(folder)) == [f"embeddings-0000{i}-of-00002.parquet" for i in (0, 1)]
    done = manifest(vectors / version, "run-0001")
    assert done["accounting_ok"] and done["written"] == done["input_rows"] > 0
    rows = read_parquet_records(str(folder / "*.parquet"), EmbeddingRow)
    ids = [r.movie_id for r in rows]
    assert len(ids) == len(set(ids)), "a film was embedded twice"
    assert {p.movie_id for p in on_disk(out)} <= set(ids)


def warehouse_rows(nightly: pathlib.Path) -> tuple[list[tuple], list[tuple]]:
    """The run date's (movie, rank, neighbour, score) in DuckDB and in the Parquet partition."""
    with duckdb.connect(str(nightly / "warehouse.duckdb"), read_only=True) as con:
        held = con.execute(
            "SELECT movie_id, rank, neighbor_id, score FROM neighbors WHERE run_date = ? "
            "ORDER BY ALL", [datetime.date.fromisoformat(DAY)],
        ).fetchall()  # fmt: skip
    pattern = str(nightly / "warehouse_parquet" / "neighbors" / f"run_date={DAY}" / "*.parquet")
    files = sorted((r.movie_id, r.rank, r.neighbor_id, r.score)
                   for r in read_parquet_records(pattern, NeighborRow))  # fmt: skip
    return held, files


def test_a_killed_neighbours_run_keeps_the_date_and_its_rerun_replaces_it(embedded):
    tmp, _, vectors, version, _ = embedded
    index_stage.run([f"--vectors={vectors}"])
    ratings = tmp / "ratings.csv"
    write_ratings_csv(ratings, make_watch_history(make_catalog(FILMS, seed=0), 12, seed=1))
    nightly = tmp / "nightly"
    flags = (f"--run_date={DAY}", f"--vectors={vectors}", f"--output={nightly}",
             f"--watch_history={ratings}")  # fmt: skip
    run(tmp, "pipelines.neighbors", *flags, "--similarity=l2")
    before, parquet_before = warehouse_rows(nightly)
    assert before == parquet_before and before and all(s <= 0 for *_, s in before)

    staging = str(nightly / "warehouse_parquet" / "_staging" / "neighbors" / "*" / "*")
    mid_write = kill_when(start(tmp, "pipelines.neighbors", *flags), staging)
    assert mid_write.killed and mid_write.files
    assert warehouse_rows(nightly) == (before, before)
    early = kill_when(start(tmp, "pipelines.neighbors", *flags), "", after_s=1.5)
    assert early.killed and warehouse_rows(nightly) == (before, before)

    run(tmp, "pipelines.neighbors", *flags)
    after, parquet_after = warehouse_rows(nightly)
    assert after == parquet_after and len(after) == len(before)
    assert all(s > 0 for *_, s in after), "the l2 rows of the first run were not replaced"
    assert not glob.glob(staging)
