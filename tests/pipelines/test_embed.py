"""The embed pipeline end to end on synthetic poster TFRecords, plus the real-poster check."""

from __future__ import annotations

import csv
import dataclasses
import datetime

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imaging.images import normalise_image
from imaging.images import phash_hex
from models.evaluation import mean_neighbour_genre_jaccard
from models.image_ops import decode_and_resize_numpy
from models.registry import embed_images
from models.registry import load_embedding_model
from models.registry import resize_to
from pipelines import embed
from schemas import DeadLetter
from schemas import EmbeddingRow
from schemas import PosterRecord
from storage.files import tfrecord_frame
from storage.posters import write_film_index
from storage.runs import publish_run
from synthetic.catalog import make_catalog

WEIGHTS = "weights/squeezenet_v1.1_imagenet_notop_keras1.h5"
N_FILMS = 24
CORRUPT_ID = 999_999


def poster_record(movie_id: int, data: bytes, genres=()) -> PosterRecord:
    image = normalise_image(data)
    return PosterRecord(
        movie_id=movie_id, image_jpeg=image.jpeg, width=image.width, height=image.height,
        original_width=image.original_width, original_height=image.original_height,
        original_format=image.original_format, content_sha256=image.content_sha256,
        phash=phash_hex(image.phash), source_url=f"http://127.0.0.1/{movie_id}.jpg",
        fetched_at=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        catalog_line=movie_id, genres=tuple(genres),
    )  # fmt: skip


@pytest.fixture(scope="module")
def poster_files(tmp_path_factory):
    """Two TFRecord shards of synthetic posters, one record with corrupt image bytes."""
    catalog = make_catalog(N_FILMS, seed=4, exact_duplicate_fraction=0, near_duplicate_fraction=0)
    records = [poster_record(f.movie_id, catalog.poster_bytes(f.movie_id)) for f in catalog.films]
    corrupt = dataclasses.replace(records[0], movie_id=CORRUPT_ID, image_jpeg=b"\xff\xd8garbage",
                                  content_sha256="0" * 64)  # fmt: skip
    records.append(corrupt)
    folder = tmp_path_factory.mktemp("posters") / "posters" / "run-0001"
    folder.mkdir(parents=True)
    for shard in range(2):
        part = records[shard::2]
        (folder / f"posters-0000{shard}-of-00002.tfrecord").write_bytes(
            b"".join(tfrecord_frame(r.to_example()) for r in part)
        )
    publish_run(str(folder.parent.parent), "run-0001", "test")
    return folder.parent.parent, {r.movie_id: r for r in records}


def read_vectors(manifest: dict) -> list[EmbeddingRow]:
    import glob

    files = sorted(glob.glob(manifest["vectors_glob"]))
    return [r for f in files for r in EmbeddingRow.from_arrow(pq.read_table(f))]


def run_embed(posters_root, out, *extra):
    return embed.run([f"--posters={posters_root}", f"--output={out}", "--max_batch_size=16",
                      "--num_shards=2", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def shared_or_none():
    from tests.conftest import shared_data_dir

    path = shared_data_dir()
    return path if (path / WEIGHTS).exists() else None


@pytest.mark.parametrize("variant", ["small_cnn", "squeezenet_random", "squeezenet_imagenet"])
def test_embed_end_to_end(poster_files, tmp_path, shared_or_none, variant):
    model, weights = {
        "small_cnn": ("small_cnn", None),
        "squeezenet_random": ("squeezenet_v1_1", None),
        "squeezenet_imagenet": (
            "squeezenet_v1_1",
            shared_or_none and str(shared_or_none / WEIGHTS),
        ),
    }[variant]
    if variant == "squeezenet_imagenet" and weights is None:
        pytest.skip("real SqueezeNet weights not found (set POSTERS_SHARED_DATA)")
    if variant == "squeezenet_random" and shared_or_none is not None:
        pytest.skip("squeezenet_imagenet runs the same path, with the real weights")
    root, records = poster_files
    extra = [f"--model={model}"] + ([f"--weights={weights}"] if weights else [])
    manifest = run_embed(root, tmp_path / "a", *extra)
    rows = read_vectors(manifest)

    assert manifest["accounting_ok"]
    assert manifest["input_rows"] == N_FILMS + 1
    assert manifest["dead_lettered"] == 1 and len(rows) == N_FILMS
    assert sorted(r.movie_id for r in rows) == sorted(m for m in records if m != CORRUPT_ID)
    vectors = np.array([r.embedding for r in rows], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert {r.model_version for r in rows} == {manifest["model_version"]}
    assert manifest["model_version"].startswith(model)

    em = load_embedding_model(model, weights)
    assert em.version == manifest["model_version"]
    pixels = np.stack([
        decode_and_resize_numpy(records[r.movie_id].image_jpeg, em.input_size)
        for r in rows
    ])  # fmt: skip
    direct = embed_images(em, pixels)
    np.testing.assert_allclose(vectors, direct, atol=1e-5)

    again = read_vectors(run_embed(root, tmp_path / "b", *extra))
    assert [(r.movie_id, r.content_sha256) for r in again] == [
        (r.movie_id, r.content_sha256) for r in rows
    ]
    np.testing.assert_allclose(np.array([r.embedding for r in again]), vectors, atol=1e-6)


def test_corrupt_image_reaches_the_dead_letter_table(poster_files, tmp_path):
    root, _ = poster_files
    manifest = run_embed(root, tmp_path, "--model=pixels")
    folder = tmp_path / manifest["model_version"] / "dead_letter" / "run-0001"
    dead = [
        d for f in sorted(folder.glob("*.parquet")) for d in DeadLetter.from_arrow(pq.read_table(f))
    ]
    assert [(d.movie_id, d.stage) for d in dead] == [(CORRUPT_ID, "decode")]
    assert dead[0].reason == "InvalidArgumentError"
    assert "movie_id=999999" in dead[0].input_row


def test_second_run_embeds_only_new_posters(poster_files, tmp_path):
    root, _ = poster_files
    first = run_embed(root, tmp_path, "--model=pixels")
    second = run_embed(root, tmp_path, "--model=pixels")
    assert second["run_id"] == "run-0002"
    assert second["already_present"] == first["written"] == N_FILMS
    assert second["written"] == 0 and second["dead_lettered"] == 1 and second["accounting_ok"]


def test_models_are_kept_apart_by_version(poster_files, tmp_path):
    root, _ = poster_files
    a = run_embed(root, tmp_path, "--model=pixels")
    b = run_embed(root, tmp_path, "--model=small_cnn")
    assert a["model_version"] != b["model_version"]
    assert (tmp_path / a["model_version"]).is_dir() and (tmp_path / b["model_version"]).is_dir()


def test_builds_for_dataflow_offline(poster_files, tmp_path):
    root, _ = poster_files
    result = embed.run([
        f"--posters={root}", f"--output={tmp_path}", "--model=pixels",
        "--runner=DataflowRunner", "--dry_run=True", "--project=poster-recs-test",
        "--region=us-central1", "--temp_location=gs://poster-recs-test/tmp",
        "--share_model_across_processes",
    ])  # fmt: skip
    assert result == {}


def test_help_lists_the_stage_options(capsys):
    with pytest.raises(SystemExit):
        embed.run(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--posters",
        "--model",
        "--weights",
        "--min_batch_size",
        "--max_batch_size",
        "--share_model_across_processes",
    ):
        assert flag in text  # fmt: skip


def test_imagenet_squeezenet_beats_pixels_beats_random_on_real_posters(shared_data):
    folder = shared_data / "posters" / "set_a"
    with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["genres"] != "(no genres listed)"][:600]
    genres = [r["genres"].split("|") for r in rows]
    images = [Image.open(folder / r["poster_file"]).convert("RGB") for r in rows]

    def vectors(model: str, weights: str | None) -> np.ndarray:
        em = load_embedding_model(model, weights)
        return embed_images(em, np.stack([resize_to(i, em.input_size) for i in images]))

    squeeze = mean_neighbour_genre_jaccard(
        vectors("squeezenet_v1_1", str(shared_data / WEIGHTS)), genres
    )
    pixels = mean_neighbour_genre_jaccard(vectors("pixels", None), genres)
    rng = np.random.default_rng(0)
    random = mean_neighbour_genre_jaccard(rng.normal(size=(len(rows), 64)), genres)
    print(f"genre Jaccard@10: squeezenet {squeeze:.4f} pixels {pixels:.4f} random {random:.4f}")
    assert squeeze > pixels > random


def test_films_with_duplicate_posters_share_the_canonical_vector(poster_files, tmp_path):
    """A film whose poster was dropped as a duplicate keeps a row: the canonical's vector."""
    import shutil

    from schemas import DuplicateRecord

    source, records = poster_files
    root = tmp_path / "scrape"
    shutil.copytree(source, root)
    canonical = sorted(m for m in records if m != CORRUPT_ID)[1]

    def dup(movie_id, of, kind):
        return DuplicateRecord(run_id="run-0001", movie_id=movie_id, canonical_movie_id=of,
                               kind=kind, distance=0 if kind != "near" else 6, line_number=movie_id,
                               confirmation=0.97 if kind == "near" else None)  # fmt: skip

    dups = [dup(5001, canonical, "near"), dup(5002, CORRUPT_ID, "exact"), dup(5003, canonical,
            "film_id")]  # fmt: skip
    folder = root / DuplicateRecord.TABLE / "run-0001"
    folder.mkdir(parents=True)
    pq.write_table(DuplicateRecord.to_arrow(dups), folder / "duplicates-00000-of-00001.parquet")

    manifest = run_embed(root, tmp_path / "v", "--model=small_cnn")
    rows = {r.movie_id: r for r in read_vectors(manifest)}
    assert manifest["accounting_ok"]
    assert manifest["input_rows"] == N_FILMS + 1 + 2  # posters, then the two poster duplicates
    assert manifest["counts"]["vectors_shared"] == 1
    assert rows[5001].embedding == rows[canonical].embedding
    assert rows[5001].poster_of == canonical and rows[canonical].poster_of == canonical
    assert rows[5001].content_sha256 == rows[canonical].content_sha256
    assert 5002 not in rows and 5003 not in rows  # 5003 is the same film listed twice
    dead = [d for f in sorted((tmp_path / "v").rglob("dead_letter-*.parquet"))
            for d in DeadLetter.from_arrow(pq.read_table(f))]  # fmt: skip
    assert {(d.movie_id, d.stage, d.reason) for d in dead} >= {
        (5002, "share", "CanonicalNotEmbedded")
    }

    again = run_embed(root, tmp_path / "v", "--model=small_cnn")
    assert again["accounting_ok"] and again["written"] == 0
    assert again["already_present"] == N_FILMS + 1


def test_films_of_a_truncated_or_missing_shard_are_dead_lettered_by_id(poster_files, tmp_path):
    """A scrape run records which films each shard holds; embed reads that index, so a shard
    cut mid-record or deleted loses no film silently: each one it could not read is a dead
    letter of its own (unreadable_shard) and the identity counts it."""
    _, by_id = poster_files
    records = [r for m, r in sorted(by_id.items()) if m != CORRUPT_ID]
    folder = tmp_path / "posters" / "posters" / "run-0001"
    folder.mkdir(parents=True)
    index = {}
    for shard in range(3):
        part = records[shard::3]
        name = f"posters-0000{shard}-of-00003.tfrecord"
        (folder / name).write_bytes(b"".join(tfrecord_frame(r.to_example()) for r in part))
        index[name] = [r.movie_id for r in part]
    write_film_index(str(folder), index)
    publish_run(str(folder.parent.parent), "run-0001", "test")
    cut = folder / "posters-00001-of-00003.tfrecord"
    frames = [tfrecord_frame(r.to_example()) for r in records[1::3]]
    cut.write_bytes(b"".join(frames[:2]) + frames[2][: len(frames[2]) // 2])  # 2 whole records
    (folder / "posters-00002-of-00003.tfrecord").unlink()

    manifest = run_embed(folder.parent.parent, tmp_path / "out", "--model=pixels")
    lost = sorted(index["posters-00001-of-00003.tfrecord"][2:]
                  + index["posters-00002-of-00003.tfrecord"])  # fmt: skip
    dead_folder = tmp_path / "out" / manifest["model_version"] / "dead_letter" / "run-0001"
    dead = [d for f in sorted(dead_folder.glob("*.parquet"))
            for d in DeadLetter.from_arrow(pq.read_table(f))]  # fmt: skip
    assert sorted(d.movie_id for d in dead) == lost
    assert {d.reason for d in dead} == {"unreadable_shard"}
    assert all(f"film {d.movie_id} was written to this shard" in d.detail for d in dead)
    assert manifest["accounting_ok"] is True
    assert manifest["input_rows"] == len(records) == manifest["written"] + len(lost)
    assert manifest["dead_lettered"] == len(lost)
    assert {v.movie_id for v in read_vectors(manifest)} == {r.movie_id for r in records} - set(lost)
