"""The commit rule of runs: readers see published runs only, a new run clears a killed one."""

from __future__ import annotations

import logging
import pathlib

import pytest

from schemas import DeadLetter
from storage.files import parquet_encoder
from storage.files import read_parquet_records
from storage.runs import discard_unpublished
from storage.runs import publish_run
from storage.runs import published_paths
from storage.runs import published_runs
from storage.runs import run_of
from transforms.manifest import OutputLayout


def dead(run_id: str, row: str) -> DeadLetter:
    return DeadLetter(run_id=run_id, stage="test", reason="r", detail="", input_row=row, attempts=0)


def write_table(root: pathlib.Path, run_id: str, rows: list[str], shards: int = 1) -> None:
    folder = root / DeadLetter.TABLE / run_id
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        part = [dead(run_id, r) for r in rows[shard::shards]]
        name = f"{DeadLetter.TABLE}-{shard:05d}-of-{shards:05d}.parquet"
        (folder / name).write_bytes(parquet_encoder(DeadLetter)(part))


@pytest.fixture
def root(tmp_path) -> pathlib.Path:
    """run-0001 published; run-0002 killed while writing 3 shards, its manifest row written."""
    write_table(tmp_path, "run-0001", ["a", "b"])
    publish_run(str(tmp_path), "run-0001", "test")
    write_table(tmp_path, "run-0002", ["c", "d", "e"], shards=3)
    (tmp_path / "manifests" / "run-0002.parquet").write_bytes(b"half a manifest")
    (tmp_path / "manifests" / "run-0002.json.tmp-writing").write_bytes(b"{")
    (tmp_path / "synthetic_input").mkdir()
    (tmp_path / "synthetic_input" / "links.csv").write_text("movieId\n")
    return tmp_path


def test_readers_take_only_published_runs_and_say_what_they_skip(root, caplog):
    pattern = str(root / DeadLetter.TABLE / "*" / "*.parquet")
    with caplog.at_level(logging.WARNING, logger="storage.runs"):
        rows = read_parquet_records(pattern, DeadLetter)
    assert sorted(r.input_row for r in rows) == ["a", "b"]
    assert "run-0002" in caplog.text and "no manifest" in caplog.text
    everything = read_parquet_records(pattern, DeadLetter, include_unpublished=True)
    assert sorted(r.input_row for r in everything) == ["a", "b", "c", "d", "e"]
    assert published_runs(str(root)) == ["run-0001"]


def test_a_new_run_reuses_the_killed_run_number_and_deletes_only_its_leftovers(root):
    layout = OutputLayout.next_run(str(root))
    assert layout.run_id == "run-0002"
    deleted = discard_unpublished(str(root))
    assert len(deleted) == 3 + 2  # three shards, the manifest row and its half-written JSON
    assert sorted(p.name for p in (root / "manifests").iterdir()) == ["run-0001.json"]
    assert not list((root / DeadLetter.TABLE / "run-0002").iterdir())
    assert len(list((root / DeadLetter.TABLE / "run-0001").iterdir())) == 1
    assert (root / "synthetic_input" / "links.csv").exists()
    # the rerun writes 4 shards where the killed one wrote 3: only its own are read once published
    write_table(root, "run-0002", ["c", "d", "e", "f"], shards=4)
    publish_run(str(root), "run-0002", "test")
    rows = read_parquet_records(str(root / DeadLetter.TABLE / "*" / "*.parquet"), DeadLetter)
    assert sorted(r.input_row for r in rows) == ["a", "b", "c", "d", "e", "f"]
    assert discard_unpublished(str(root)) == []


def test_run_of_reads_local_and_cloud_paths():
    assert run_of("gs://b/out/posters/run-0012/posters-00000-of-00004.tfrecord") == (
        "gs://b/out", "run-0012",
    )  # fmt: skip
    assert run_of("/x/out/v1/embeddings/run-0001/e.parquet") == ("/x/out/v1", "run-0001")
    assert run_of("/x/posters/posters-00000-of-00001.tfrecord") is None
    assert published_paths("/nonexistent/posters/*/*.tfrecord") == []
