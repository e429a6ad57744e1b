"""The train pipeline end to end on synthetic posters, and its model in the embed stage."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from models import features
from models.evaluation import format_report_table
from models.image_ops import decode_and_resize_numpy
from models.registry import embed_images
from models.registry import load_embedding_model
from models.training import transformed_batches
from pipelines import embed
from pipelines import train
from schemas import DeadLetter
from schemas import EmbeddingRow
from tests.conftest import local_pipeline
from tests.fixtures import synthetic_records
from tests.fixtures import write_poster_folder
from transforms.train import FirstPosters

N_FILMS = 220
CORRUPT_ID = 999_999


@pytest.fixture(scope="module")
def posters(tmp_path_factory):
    """A scrape output root of synthetic posters plus one with corrupt image bytes."""
    records = synthetic_records(N_FILMS, seed=8)
    corrupt = dataclasses.replace(records[0], movie_id=CORRUPT_ID, image_jpeg=b"\xff\xd8junk",
                                  content_sha256="0" * 64)  # fmt: skip
    root = write_poster_folder([*records, corrupt], tmp_path_factory.mktemp("posters"))
    return root, {r.movie_id: r for r in records}


@pytest.fixture(scope="module")
def trained(posters, tmp_path_factory):
    """One training run on the synthetic posters (small CNN, a few epochs)."""
    root, _ = posters
    output = tmp_path_factory.mktemp("train")
    report = train.run([
        f"--posters={root}", f"--output={output}", "--model=small_cnn", "--genre_set=six",
        "--objective=genres",
        "--warmup_epochs=4", "--metric_epochs=2", "--unfreeze_blocks=2",
        "--learning_rate=0.003", "--fine_tune_learning_rate=0.00001", "--batch_size_train=32",
        "--seed=1",
    ])  # fmt: skip
    return report, output


def test_writes_model_transform_report_and_manifest(trained, posters):
    report, output = trained
    model_dir = output / "model" / "run-0001"

    assert report["accounting_ok"] and report["run_id"] == "run-0001"
    assert report["counts"] == {"input_rows": N_FILMS + 1, "written": N_FILMS, "duplicates": 0,
                                "dead_lettered": 1, "already_present": 0}  # fmt: skip
    assert sum(report["examples"].values()) + sum(report["unlabelled"].values()) == N_FILMS
    assert report["model_path"] == str(model_dir / "poster_embedding_small_cnn.keras")
    assert (model_dir / "transform_fn" / "saved_model.pb").is_file()
    assert (model_dir / "transformed_metadata" / "schema.pbtxt").is_file()
    assert (model_dir / "genres.txt").read_text().split("\n") == report["classes"]
    assert sorted(report["classes"]) == sorted(features.SIX_GENRES)
    assert json.loads((model_dir / "report.json").read_text())["models"] == report["models"]
    assert json.loads((output / "manifests" / "run-0001.json").read_text())["accounting_ok"]
    assert glob.glob(str(output / "transformed" / "run-0001" / "transformed-*.tfrecord"))
    assert not (output / "tmp").exists() or not any((output / "tmp").iterdir())
    dead = [d for f in glob.glob(str(output / "dead_letter" / "run-0001" / "*.parquet"))
            for d in DeadLetter.from_arrow(pq.read_table(f))]  # fmt: skip
    assert [(d.movie_id, d.stage) for d in dead] == [(CORRUPT_ID, "decode")]


def test_report_has_every_figure_for_the_three_rows(trained):
    report, _ = trained
    assert report["neighbours"] == 10 and report["examples"]["test"] > 10
    for name in ("trained", "untrained_backbone", "pixels"):
        row = report["models"][name]
        for figure in ("hamming_loss", "exact_match", "at_least_one_correct"):
            assert 0.0 <= row[figure] <= 1.0
        assert 0.0 <= row["micro"]["f1"] <= 1.0 and 0.0 <= row["macro"]["f1"] <= 1.0
        assert set(row["per_class"]) == set(report["classes"])
        assert 0.0 < row["neighbour_genre_jaccard"] <= 1.0
    assert report["export"]["reload_max_abs_difference"] == 0.0
    assert report["export"]["cached_path_max_abs_difference"] < 1e-5
    assert len(report["history"]["warm_up"]) >= 1 and len(report["history"]["metric"]) >= 1
    spread = report["models"]["trained"]["score_spread"]
    # Centred before normalising: random pairs spread well below the nearest neighbours.
    assert spread["random_pairs"]["p50"] < spread["top_neighbours"]["p50"] - 0.2, spread
    assert spread["random_pairs"]["p5"] < 0.5, spread
    assert report["objective"] == "genres" and report["audience"] is None
    table = format_report_table(report)
    assert all(name in table for name in ("trained", "untrained_backbone", "pixels", "Drama"))


def test_embed_stage_embeds_raw_posters_as_training_saw_them(trained, posters, tmp_path):
    report, _ = trained
    root, records = posters
    manifest = embed.run([f"--posters={root}", f"--output={tmp_path}",
                          f"--model={report['model_path']}", "--max_batch_size=16"])  # fmt: skip
    rows = [r for f in sorted(glob.glob(manifest["vectors_glob"]))
            for r in EmbeddingRow.from_arrow(pq.read_table(f))]  # fmt: skip

    assert manifest["accounting_ok"] and manifest["dead_lettered"] == 1
    assert sorted(r.movie_id for r in rows) == sorted(records)
    assert manifest["model_version"].startswith("poster_embedding_small_cnn-")
    vectors = np.array([r.embedding for r in rows], np.float32)
    assert vectors.shape == (N_FILMS, 128)
    em = load_embedding_model(report["model_path"])
    pixels = np.stack([decode_and_resize_numpy(records[r.movie_id].image_jpeg, em.input_size)
                       for r in rows])  # fmt: skip
    np.testing.assert_allclose(vectors, embed_images(em, pixels), atol=1e-6)
    np.testing.assert_array_equal(embed_images(em, pixels), embed_images(em, pixels))


def test_transformed_examples_hold_jpeg_bytes_that_train_as_the_embed_stage_decodes(
    trained, posters
):
    report, output = trained
    _, records = posters
    files = sorted(glob.glob(str(output / "transformed" / "run-0001" / "transformed-*.tfrecord")))
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    stored = {features.MOVIE_ID_KEY, features.SPLIT_KEY, features.LABEL_KEY,
              features.IMAGE_BYTES_KEY}  # fmt: skip

    assert len(examples) == N_FILMS
    for example in examples:
        feature = example.features.feature
        movie_id = feature[features.MOVIE_ID_KEY].int64_list.value[0]
        assert set(feature) == stored
        assert feature[features.IMAGE_BYTES_KEY].bytes_list.value == [records[movie_id].image_jpeg]
        assert len(feature[features.LABEL_KEY].float_list.value) == len(report["classes"])
    jpeg_bytes = sum(len(r.image_jpeg) for r in records.values())
    assert sum(os.path.getsize(f) for f in files) < jpeg_bytes + 200 * N_FILMS

    spec = tft.TFTransformOutput(report["transform_dir"]).transformed_feature_spec()
    batches = list(transformed_batches(files, spec, 64, (128, 128)))
    ids = np.concatenate([b[features.MOVIE_ID_KEY].numpy() for b in batches])
    for key, size in ((features.IMAGE_KEY, (128, 128)), (features.PIXELS_KEY, (64, 64))):
        images = np.concatenate([b[key].numpy() for b in batches])
        expected = np.stack([decode_and_resize_numpy(records[m].image_jpeg, size) for m in ids])
        np.testing.assert_array_equal(images, expected)


def test_transform_output_beside_the_model_labels_raw_posters(trained, posters):
    report, _ = trained
    _, records = posters
    chosen = sorted(records)[:4]
    output = tft.TFTransformOutput(report["transform_dir"])
    raw = {
        features.MOVIE_ID_KEY: tf.constant(chosen, tf.int64),
        features.IMAGE_BYTES_KEY: tf.constant([records[m].image_jpeg for m in chosen]),
        features.GENRES_KEY: tf.ragged.constant(
            [list(records[m].genres) for m in chosen]
        ).to_sparse(),
    }
    transformed = output.transform_raw_features(raw)
    assert list(transformed[features.IMAGE_BYTES_KEY].numpy()) == [
        records[m].image_jpeg for m in chosen
    ]
    labels = transformed[features.LABEL_KEY].numpy()
    for row, movie_id in zip(labels, chosen, strict=True):
        names = {report["classes"][j] for j in np.flatnonzero(row)}
        assert names == set(features.genre_classes(records[movie_id].genres, "six"))


def test_first_posters_keeps_the_smallest_movie_ids(posters):
    _, records = posters
    with local_pipeline() as p:
        kept = (
            p
            | beam.Create(list(records.values()))
            | FirstPosters(5)
            | beam.Map(lambda r: r.movie_id)
        )
        assert_that(kept, equal_to(sorted(records)[:5]), label="CheckSmallest")
    with pytest.raises(ValueError, match="--max_posters"):
        FirstPosters(0)


def test_help_lists_the_stage_options(capsys):
    with pytest.raises(SystemExit):
        train.run(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--genre_set",
        "--embedding_dim",
        "--warmup_epochs",
        "--metric_epochs",
        "--triplet_margin",
        "--unfreeze_blocks",
        "--learning_rate",
        "--batch_size_train",
        "--seed",
        "--max_posters",
        "--output",
        "--posters",
    ):
        assert flag in text  # fmt: skip


def test_requires_posters_and_output_and_a_backbone(tmp_path):
    with pytest.raises(ValueError, match="--posters is required"):
        train.run([f"--output={tmp_path}"])
    with pytest.raises(ValueError, match="must name a backbone"):
        train.run([f"--posters={tmp_path}", f"--output={tmp_path}", "--model=trained.keras"])
