"""The semi-hard triplet loss against a NumPy reference, and the balanced cross-entropy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.losses import BalancedBinaryCrossentropy
from models.losses import SemiHardTripletLoss
from models.losses import balanced_class_weights
from models.losses import pair_masks
from models.losses import semi_hard_triplet_loss


def reference_distances(embeddings: np.ndarray, distance: str) -> np.ndarray:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    diff = unit[:, None, :] - unit[None, :, :]
    squared = np.sum(diff**2, axis=-1)
    if distance == "angular":
        return 1.0 - unit @ unit.T
    if distance == "squared_l2":
        return squared
    return np.sqrt(squared)


def reference_loss(labels: np.ndarray, embeddings: np.ndarray, margin: float, distance: str):
    """Loop-by-loop semi-hard triplet loss (TFA's definition, multi-label positives)."""
    d = reference_distances(np.asarray(embeddings, np.float64), distance)
    shared = (np.asarray(labels) @ np.asarray(labels).T) > 0
    n = len(d)
    total, count = 0.0, 0
    for a in range(n):
        negatives = [j for j in range(n) if not shared[a, j]]
        if not negatives:
            continue
        for p in range(n):
            if p == a or not shared[a, p]:
                continue
            farther = [d[a, j] for j in negatives if d[a, j] > d[a, p]]
            negative = min(farther) if farther else max(d[a, j] for j in negatives)
            total += max(margin + d[a, p] - negative, 0.0)
            count += 1
    return total / count if count else 0.0


def unit_circle(*degrees: float) -> np.ndarray:
    radians = np.deg2rad(np.array(degrees))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


@pytest.mark.parametrize("distance", ["angular", "squared_l2", "l2"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_the_numpy_reference_on_random_multi_label_batches(distance, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((14, 4)) < 0.3).astype(np.float32)
    labels[0] = 0  # a poster with no class: only ever a negative
    embeddings = rng.normal(size=(14, 5)).astype(np.float32)
    margin = [0.1, 0.3, 1.0, 0.05][seed]

    got = float(semi_hard_triplet_loss(labels, embeddings, margin, distance))

    expected = reference_loss(labels, embeddings, margin, distance)
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_picks_the_closest_negative_farther_than_the_positive():
    # anchor 0 deg, positive 60 deg (d = 0.5); negatives at 30 (closer), 90 and 180 (farther).
    embeddings = unit_circle(0, 60, 30, 90, 180)
    labels = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])

    got = float(semi_hard_triplet_loss(labels, embeddings, margin=0.6))

    # (a, p): semi-hard negative 90 deg, d = 1: 0.6 + 0.5 - 1 = 0.1; (p, a): negatives 30 and
    # 90 are at d = 0.134 < 0.5, so 180 deg (d = 1.5) is semi-hard: 0.6 + 0.5 - 1.5 < 0 -> 0.
    assert got == pytest.approx(0.05, abs=1e-6)
    assert reference_loss(labels, embeddings, 0.6, "angular") == pytest.approx(0.05, abs=1e-6)


def test_falls_back_to_the_farthest_negative_when_none_is_semi_hard():
    # anchor 0 deg and positive 90 deg (d = 1); both negatives (30 and 60 deg) are closer.
    embeddings = unit_circle(0, 90, 30, 60)
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])

    got = float(semi_hard_triplet_loss(labels, embeddings, margin=0.1))

    # Each direction's farthest negative is at d = 1 - cos 60 = 0.5: 0.1 + 1 - 0.5 = 0.6
    # (the hardest negative would give 0.966, the closest-farther rule has no candidate).
    assert got == pytest.approx(0.6, abs=1e-6)
    assert reference_loss(labels, embeddings, 0.1, "angular") == pytest.approx(0.6, abs=1e-6)


def test_integer_labels_are_single_label_classes():
    rng = np.random.default_rng(9)
    ids = np.array([3, 3, 7, 7, 7, 1, 1, 9])
    embeddings = rng.normal(size=(8, 3)).astype(np.float32)
    one_hot = (ids[:, None] == np.unique(ids)[None, :]).astype(np.float32)

    got = float(semi_hard_triplet_loss(ids, embeddings, 0.2))

    assert got == pytest.approx(reference_loss(one_hot, embeddings, 0.2, "angular"), rel=1e-5)


def test_batches_without_pairs_give_zero_loss_and_finite_gradients():
    embeddings = tf.Variable(np.ones((4, 3), np.float32))
    for labels in (np.eye(4), np.ones((4, 2))):  # no positives; no negatives
        with tf.GradientTape() as tape:
            loss = semi_hard_triplet_loss(labels.astype(np.float32), embeddings, 0.1, "l2")
        gradient = tape.gradient(loss, embeddings)
        assert float(loss) == 0.0
        assert gradient is None or np.all(np.isfinite(gradient.numpy()))


def test_gradients_pull_positives_together():
    embeddings = tf.Variable(unit_circle(0, 90, 30, 60))
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    optimizer = keras.optimizers.SGD(0.1)
    before = semi_hard_triplet_loss(labels, embeddings, 0.1).numpy()
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = semi_hard_triplet_loss(labels, embeddings, 0.1)
        optimizer.apply_gradients([(tape.gradient(loss, embeddings), embeddings)])
    assert semi_hard_triplet_loss(labels, embeddings, 0.1).numpy() < before / 2


def test_pair_masks():
    labels = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)
    positive, negative = (m.numpy() for m in pair_masks(labels))
    assert positive.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    assert negative.tolist() == [
        [False, False, True, True],
        [False, False, True, True],
        [True, True, False, True],
        [True, True, True, True],
    ]


def test_keras_loss_wrapper_and_bad_distance():
    labels = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    embeddings = unit_circle(0, 90, 45)
    loss = SemiHardTripletLoss(margin=0.2)
    assert float(loss(labels, embeddings)) == pytest.approx(
        reference_loss(labels, embeddings, 0.2, "angular"), rel=1e-5
    )
    assert SemiHardTripletLoss.from_config(loss.get_config()).margin == 0.2
    with pytest.raises(ValueError, match="distance must be one of"):
        SemiHardTripletLoss(distance="cosine")


def test_balanced_class_weights_give_each_side_half_the_weight():
    labels = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    positive, negative = balanced_class_weights(labels)
    # class 0: 1 positive of 4 -> 4 / 2 = 2.0, 3 negatives -> 4 / 6; classes 1, 2 unseen / always.
    np.testing.assert_allclose(positive, [2.0, 1.0, 1.0])
    np.testing.assert_allclose(negative, [4 / 6, 1.0, 1.0], rtol=1e-6)


def test_balanced_binary_crossentropy_matches_numpy():
    y = np.array([[1, 0], [0, 0], [1, 1]], np.float32)
    logits = np.array([[2.0, -1.0], [0.5, 0.0], [-1.0, 3.0]], np.float32)
    loss = BalancedBinaryCrossentropy([3.0, 0.5], [0.25, 2.0])

    got = float(loss(y, logits))

    p = 1 / (1 + np.exp(-logits))
    cells = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    weights = y * np.array([3.0, 0.5]) + (1 - y) * np.array([0.25, 2.0])
    assert got == pytest.approx(float(np.mean(np.mean(cells * weights, axis=1))), rel=1e-5)
