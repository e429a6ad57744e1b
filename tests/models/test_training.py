"""Training on synthetic posters: backbone splitting, both phases, export round trip, metrics."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import evaluation
from models import features
from models import metrics
from models import squeezenet
from models.image_ops import decode_and_resize_numpy
from models.losses import semi_hard_triplet_loss
from models.registry import embed_images
from models.registry import load_embedding_model
from models.small_cnn import small_cnn
from models.training import PosterTrainer
from models.training import SplitData
from models.training import TrainConfig
from models.training import audience_config
from models.training import backbone_blocks
from models.training import epochs_per_stage
from models.training import mean_cosine
from models.training import ridge_probe
from models.training import split_backbone
from models.training import transformed_batches
from tests.fixtures import synthetic_records

GENRE_SET = "six"
CLASSES = features.class_names(GENRE_SET)
SPLIT_CYCLE = (features.TRAIN, features.TRAIN, features.TRAIN, features.VALIDATION, features.TEST)
CONFIG = TrainConfig(
    backbone="small_cnn", genre_set=GENRE_SET, warmup_epochs=8, metric_epochs=3,
    unfreeze_blocks=2, learning_rate=3e-3, fine_tune_learning_rate=1e-5, batch_size=32,
    patience=8, seed=3, objective="genres",
)  # fmt: skip


TRANSFORMED_SPEC = {
    features.MOVIE_ID_KEY: tf.io.FixedLenFeature([], tf.int64),
    features.SPLIT_KEY: tf.io.FixedLenFeature([], tf.int64),
    features.LABEL_KEY: tf.io.FixedLenFeature([len(CLASSES)], tf.float32),
    features.IMAGE_BYTES_KEY: tf.io.FixedLenFeature([], tf.string),
}


def write_transformed(records, path) -> str:
    """What the transform writes for the records, split by position (3:1:1); returns the path."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, r in enumerate(records):
            classes = features.genre_classes(r.genres, GENRE_SET)
            feature = {
                features.MOVIE_ID_KEY: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[r.movie_id])
                ),
                features.SPLIT_KEY: tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[SPLIT_CYCLE[i % len(SPLIT_CYCLE)]])
                ),
                features.LABEL_KEY: tf.train.Feature(
                    float_list=tf.train.FloatList(value=[float(c in classes) for c in CLASSES])
                ),
                features.IMAGE_BYTES_KEY: tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[r.image_jpeg])
                ),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    return str(path)


def training_batches(records, input_size, folder, batch_size=32):
    """The training input pipeline over the records' transformed examples."""
    examples = write_transformed(records, folder / "transformed.tfrecord")
    return transformed_batches(examples, TRANSFORMED_SPEC, batch_size, input_size)


@pytest.fixture(scope="module")
def records():
    """200 synthetic posters whose pixels carry their genres."""
    return synthetic_records(200, seed=11)


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    """A small-CNN trainer after both phases on the synthetic posters, with snapshots."""
    trainer = PosterTrainer(CONFIG, len(CLASSES))
    data = trainer.extract(
        training_batches(records, CONFIG.input_size, tmp_path_factory.mktemp("transformed")),
        keep_images={features.TEST},
    )
    train, validation = data.split(features.TRAIN), data.split(features.VALIDATION)
    trainer.build(train)
    block4 = [layer for layer in trainer.backbone.layers if layer.name.startswith("block4")]
    bn = next(layer for layer in block4 if isinstance(layer, keras.layers.BatchNormalization))
    conv = next(layer for layer in block4 if isinstance(layer, keras.layers.Conv2D))
    first_conv = trainer.backbone.get_layer("block1_conv1")
    before = {
        "bn": [np.array(w) for w in bn.get_weights()],
        "conv": np.array(conv.kernel),
        "first_conv": np.array(first_conv.kernel),
    }
    trainer.warm_up(train, validation)
    trainer.metric_learning(train, validation)
    after = {
        "bn": [np.array(w) for w in bn.get_weights()],
        "conv": np.array(conv.kernel),
        "first_conv": np.array(first_conv.kernel),
    }
    return trainer, data, before, after, tmp_path_factory.mktemp("export")


def test_training_batches_decode_the_jpeg_bytes_as_the_embed_stage_does(records, tmp_path):
    chosen = records[:5]
    examples = write_transformed(chosen, tmp_path / "transformed.tfrecord")
    batches = list(transformed_batches(examples, TRANSFORMED_SPEC, 2, (40, 30)))

    assert [len(b[features.MOVIE_ID_KEY]) for b in batches] == [2, 2, 1]
    assert features.IMAGE_BYTES_KEY not in batches[0]
    ids = np.concatenate([b[features.MOVIE_ID_KEY].numpy() for b in batches])
    images = np.concatenate([b[features.IMAGE_KEY].numpy() for b in batches])
    thumbnails = np.concatenate([b[features.PIXELS_KEY].numpy() for b in batches])
    assert list(ids) == [r.movie_id for r in chosen]
    assert images.dtype == thumbnails.dtype == np.float32
    np.testing.assert_array_equal(
        images, np.stack([decode_and_resize_numpy(r.image_jpeg, (40, 30)) for r in chosen])
    )
    np.testing.assert_array_equal(
        thumbnails, np.stack([decode_and_resize_numpy(r.image_jpeg, (64, 64)) for r in chosen])
    )
    with pytest.raises(FileNotFoundError, match="no transformed examples"):
        transformed_batches(str(tmp_path / "missing-*.tfrecord"), TRANSFORMED_SPEC, 2, (40, 30))


def test_warm_up_lowers_the_loss(trained):
    trainer, *_ = trained
    history = trainer.history["warm_up"]
    assert len(history) == CONFIG.warmup_epochs
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]


def test_metric_learning_lowers_the_triplet_loss_on_the_training_posters(records, tmp_path):
    config = dataclasses.replace(
        CONFIG, backbone="pixels", unfreeze_blocks=0, metric_epochs=6,
        fine_tune_learning_rate=1e-3, classification_weight=0.0,
    )  # fmt: skip
    trainer = PosterTrainer(config, len(CLASSES))
    data = trainer.extract(training_batches(records, config.input_size, tmp_path), set())
    train, validation = data.split(features.TRAIN), data.split(features.VALIDATION)
    trainer.build(train)
    trainer.warm_up(train, validation)
    before = semi_hard_triplet_loss(train.labels, trainer.cached_embeddings(train.trunk), 0.1)
    trainer.metric_learning(train, validation)
    after = semi_hard_triplet_loss(train.labels, trainer.cached_embeddings(train.trunk), 0.1)
    assert len(trainer.history["metric"]) == config.metric_epochs
    assert float(after) < 0.9 * float(before)


def test_the_genre_head_beats_chance_on_held_out_posters(trained):
    trainer, data, *_ = trained
    train, test = data.split(features.TRAIN), data.split(features.TEST)
    scores = trainer.genre_scores(test.trunk)
    top = np.argmax(scores, axis=1)
    hit_rate = float(np.mean(test.labels[np.arange(len(test)), top] > 0))
    majority = int(np.argmax(train.labels.sum(axis=0)))
    chance = float(np.mean(test.labels[:, majority] > 0))
    assert len(test) >= 30
    assert hit_rate > chance + 0.1, (hit_rate, chance)


def test_only_the_tail_trains_and_batch_norm_stays_frozen(trained):
    _, _, before, after, _ = trained
    for old, new in zip(before["bn"], after["bn"], strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(before["first_conv"], after["first_conv"])
    assert not np.array_equal(before["conv"], after["conv"])


def test_export_reload_gives_identical_unit_vectors(trained):
    trainer, data, _, _, folder = trained
    test = data.split(features.TEST)
    model = trainer.export_model()
    path = str(folder / "model.keras")
    model.save(path)

    em = load_embedding_model(path)
    reloaded = embed_images(em, test.images)
    direct = keras.ops.convert_to_numpy(model(test.images, training=False))

    assert em.input_size == CONFIG.input_size and em.dim == CONFIG.embedding_dim
    assert not any(type(layer).__name__ == "Lambda" for layer in em.keras_model.layers)
    # the same graph and weights; oneDNN may sum in another order for another batch size (seen:
    # 5e-7 apart on a loaded 2-core machine), so equal to float32 rounding, not bit for bit
    np.testing.assert_allclose(reloaded, direct, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(reloaded, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(reloaded, trainer.cached_embeddings(test.trunk), atol=1e-5)


def test_blocks_of_the_registry_backbones():
    squeeze = squeezenet.squeezenet_v1_1((64, 64, 3))
    names = [name for name, _ in backbone_blocks(squeeze)]
    assert names == ["conv1"] + [fire for fire, _, _ in squeezenet.FIRE_MODULES]
    small = [name for name, _ in backbone_blocks(small_cnn((32, 32), 8))]
    assert small == ["block1", "block2", "block3", "block4", "embedding"]


@pytest.mark.parametrize("tail_blocks", [0, 1, 2, 9])
def test_trunk_then_tail_is_the_backbone(tail_blocks):
    keras.utils.set_random_seed(0)
    backbone = squeezenet.squeezenet_v1_1((64, 64, 3))
    trunk, tail, blocks = split_backbone(backbone, tail_blocks)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(tail(trunk(x)), backbone(x), rtol=1e-5, atol=1e-5)
    assert len(blocks) == tail_blocks
    with pytest.raises(ValueError, match="has 9 blocks"):
        split_backbone(backbone, 10)


def test_epochs_are_spread_over_the_unfreezing_stages():
    assert epochs_per_stage(7, 2) == [4, 3]
    assert epochs_per_stage(1, 3) == [1, 0, 0]
    assert epochs_per_stage(5, 0) == [5]


def test_config_checks_its_values():
    with pytest.raises(ValueError, match="unknown genre set"):
        TrainConfig(genre_set="eight")
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(backbone="alexnet")
    with pytest.raises(ValueError, match="--triplet_margin"):
        TrainConfig(triplet_margin=-1.0)


# Evaluation: metrics on a hand-computed example, thresholds, probes.
Y_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
Y_PRED = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1]])


def test_metrics_on_a_hand_computed_example():
    report = metrics.classification_report(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert report["hamming_loss"] == pytest.approx(3 / 9)
    assert report["exact_match"] == pytest.approx(1 / 3)
    assert report["at_least_one_correct"] == pytest.approx(1.0)
    assert report["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert report["per_class"]["b"]["f1"] == pytest.approx(1.0)
    assert report["per_class"]["c"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    )
    assert report["micro"] == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 2 / 3})
    assert report["macro"] == pytest.approx({"precision": 2 / 3, "recall": 0.5, "f1": 5 / 9})


def test_thresholds_maximise_f1_per_class():
    # Top 3 of [0.9, 0.8, 0.3, 0.1] catch both positives: F1 0.8 at a threshold between 0.3 and 0.1.
    assert metrics.best_f1_threshold([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == pytest.approx(0.2)
    assert metrics.best_f1_threshold([0, 0], [0.9, 0.1]) == 0.5
    scores = np.array([[0.7, 0.2], [0.4, 0.6]])
    thresholds = metrics.tune_thresholds(np.array([[1, 0], [0, 1]]), scores)
    np.testing.assert_array_equal(metrics.apply_thresholds([[0.7, 0.2]], thresholds), [[1, 0]])


def test_balanced_probe_finds_a_rare_linear_signal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20))
    y = np.stack([x[:, 0] > 1.3, x[:, 1] + x[:, 2] > 0], axis=1).astype(np.float32)  # 10%, 50%
    train, validation, test = (x[:400], y[:400]), (x[400:500], y[400:500]), (x[500:], y[500:])

    report = evaluation.probe_report(train, validation, test, ["rare", "common"])

    assert report["per_class"]["rare"]["f1"] > 0.7
    assert report["per_class"]["common"]["f1"] > 0.9
    assert report["probe_l2"] in evaluation.PROBE_L2_GRID
    assert evaluation.label_genres(np.array([[1, 0], [1, 1]]), ["a", "b"]) == [["a"], ["a", "b"]]


def test_paired_bootstrap_of_the_micro_f1_difference():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 4)) < 0.4).astype(int)
    noisy = np.where(rng.random(y.shape) < 0.3, 1 - y, y)

    same = evaluation.paired_bootstrap_micro_f1(y, noisy, noisy)
    better = evaluation.paired_bootstrap_micro_f1(y, y, noisy)

    assert same == {"difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}
    expected = 1.0 - metrics.micro_precision_recall_f1(y, noisy)[2]
    assert better["difference"] == pytest.approx(expected)
    assert 0.0 < better["ci95_low"] < better["difference"] < better["ci95_high"]


def _audience_parts(n: int = 600, dim: int = 128, target_dim: int = 8, seed: int = 0):
    """Features whose co-watch target is a hidden linear map of them (a known answer)."""
    rng = np.random.default_rng(seed)
    pooled = rng.normal(size=(n, dim)).astype(np.float32)
    targets = pooled @ rng.normal(size=(dim, target_dim))
    targets = (targets / np.linalg.norm(targets, axis=1, keepdims=True)).astype(np.float32)
    labels = (rng.random((n, len(CLASSES))) < 0.3).astype(np.float32)

    def part(rows: slice) -> SplitData:
        count = len(pooled[rows])
        return SplitData(
            movie_ids=np.arange(n)[rows], labels=labels[rows],
            trunk=np.zeros((count, 0), np.float32), pooled=pooled[rows],
            pixels=np.zeros((count, 1), np.float32), targets=targets[rows],
        )  # fmt: skip

    return part(slice(0, 400)), part(slice(400, 500)), part(slice(500, n))


@pytest.mark.parametrize("objective", ["audience", "both"])
def test_audience_objective_learns_the_cowatch_direction(objective):
    train, validation, test = _audience_parts()
    config = dataclasses.replace(
        CONFIG, objective=objective, embedding_dim=8, l2=None, warmup_epochs=40, patience=40,
        warmup_runs=1,  # the mean of several runs is tested below
    )
    assert config.l2 == 0.1  # the audience objectives' own default
    trainer = PosterTrainer(config, len(CLASSES))
    trainer.build(train)
    before = mean_cosine(trainer.pooled_embeddings(test.pooled), test.targets)
    trainer.warm_up(train, validation)
    after = mean_cosine(trainer.pooled_embeddings(test.pooled), test.targets)
    assert after > 0.8 and after > before + 0.5, (before, after)
    probe, _ = ridge_probe((train.pooled, train.targets), (validation.pooled, validation.targets))
    assert mean_cosine(probe(test.pooled), test.targets) > 0.8


def test_audience_warm_up_keeps_the_mean_of_its_runs():
    train, validation, test = _audience_parts(seed=1)
    config = dataclasses.replace(
        CONFIG, objective="audience", embedding_dim=8, l2=None, warmup_epochs=6, warmup_runs=3
    )
    trainer = PosterTrainer(config, len(CLASSES))
    trainer.build(train)
    trainer.warm_up(train, validation)
    members = trainer.warmup_members
    assert len(members) == 3
    # The train report lists every run, not only the first.
    runs = trainer.history["warm_up_runs"]
    assert [r["run"] for r in runs] == [1.0, 2.0, 3.0]
    assert all(1 <= r["epochs"] <= 6 and "best_val_loss" in r for r in runs)
    assert len(trainer.history["warm_up"]) == runs[0]["epochs"]
    # Each run starts from its own seed: the runs' layers differ.
    assert not np.allclose(members[0][0], members[1][0])
    assert not np.allclose(members[1][0], members[2][0])
    kernel, bias = trainer.embedding.get_weights()
    np.testing.assert_allclose(kernel, np.mean([m[0] for m in members], axis=0), rtol=1e-6)
    np.testing.assert_allclose(bias, np.mean([m[1] for m in members], axis=0), rtol=1e-6)
    # The exported embedding is the mean of the runs' embeddings, before normalising.
    x = np.asarray(trainer.normalisation(tf.constant(test.pooled)), np.float64)
    mean = np.mean([x @ k + b for k, b in members], axis=0)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(trainer.pooled_embeddings(test.pooled), expected, atol=1e-5)
    # The first run is what one run alone gives (the same seed, the same start).
    single = PosterTrainer(dataclasses.replace(config, warmup_runs=1), len(CLASSES))
    single.build(train)
    single.warm_up(train, validation)
    np.testing.assert_allclose(single.embedding.get_weights()[0], members[0][0], rtol=1e-5)
    assert single.warmup_members and len(single.warmup_members) == 1
    with pytest.raises(ValueError, match="--warmup_runs"):
        dataclasses.replace(config, warmup_runs=0)
    # Only the audience objective averages runs: genres and both keep one.
    assert dataclasses.replace(config, objective="both").averaged_runs == 1


def test_audience_objective_needs_cowatch_targets():
    config = dataclasses.replace(CONFIG, objective="audience", l2=None)
    with pytest.raises(ValueError, match="--cowatch_vectors"):
        audience_config(config, None)
    assert audience_config(config, {1: np.zeros(16, np.float32)}).embedding_dim == 16
    with pytest.raises(ValueError, match="--objective"):
        dataclasses.replace(CONFIG, objective="popularity")
