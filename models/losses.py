"""Training losses: a semi-hard triplet loss for multi-label genres, and balanced multi-label BCE.

TensorFlow Addons (which had ``TripletSemiHardLoss``) is retired, so the triplet loss is written
here, with TFA's definition of a semi-hard negative and its fallback:

* positives of an anchor are the other posters in the batch that share at least one genre with
  it; negatives are those that share none (so posters of "Comedy|Romance" and "Comedy|Drama" are
  pulled together, "Comedy" and "Horror" pushed apart);
* for each anchor-positive pair (a, p), the semi-hard negative is the closest negative n that is
  farther from a than p is, d(a, n) > d(a, p); when no such negative exists, the farthest
  negative is used instead;
* the loss is the mean over every anchor-positive pair of max(0, margin + d(a, p) - d(a, n)).
  Anchors without a negative in the batch (or without a positive) contribute no pairs; a batch
  with no pair has loss 0.

Distances are computed between L2-normalised embeddings: ``angular`` is 1 - cosine similarity
(0 to 2), ``squared_l2`` and ``l2`` the (squared) Euclidean distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

DISTANCES = ("angular", "squared_l2", "l2")
_BIG = 1e9


def _as_multi_hot(labels: tf.Tensor) -> tf.Tensor:
    """Multi-hot float labels [batch, classes]; integer class ids [batch] become one-hot."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 1:
        ids = tf.cast(labels, tf.int64)
        _, index = tf.unique(ids)
        return tf.one_hot(index, tf.reduce_max(index) + 1, dtype=tf.float32)
    return tf.cast(labels, tf.float32)


def pairwise_distances(embeddings: tf.Tensor, distance: str = "angular") -> tf.Tensor:
    """[batch, batch] distances between the L2-normalised rows of ``embeddings``."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, not {distance!r}")
    unit = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
    similarity = tf.matmul(unit, unit, transpose_b=True)
    if distance == "angular":
        return 1.0 - similarity
    squared = tf.maximum(2.0 - 2.0 * similarity, 0.0)
    if distance == "squared_l2":
        return squared
    return tf.sqrt(tf.maximum(squared, 1e-12))


def pair_masks(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Boolean [batch, batch] (positive, negative) masks: share a genre (i != j), share none."""
    multi_hot = _as_multi_hot(labels)
    shared = tf.matmul(multi_hot, multi_hot, transpose_b=True) > 0
    not_self = tf.logical_not(tf.eye(tf.shape(multi_hot)[0], dtype=tf.bool))
    return tf.logical_and(shared, not_self), tf.logical_not(shared)


def semi_hard_triplet_loss(
    labels: tf.Tensor,
    embeddings: tf.Tensor,
    margin: float = 0.1,
    distance: str = "angular",
) -> tf.Tensor:
    """Mean semi-hard triplet loss of a batch (multi-hot or integer labels), a float32 scalar."""
    dist = pairwise_distances(embeddings, distance)
    positive, negative = pair_masks(labels)
    d_ap = dist[:, :, tf.newaxis]  # [anchor, positive, 1]
    d_an = dist[:, tf.newaxis, :]  # [anchor, 1, negative]
    negative_an = negative[:, tf.newaxis, :]
    farther = tf.logical_and(negative_an, d_an > d_ap)  # [anchor, positive, negative]
    closest_farther = tf.reduce_min(tf.where(farther, d_an, _BIG), axis=2)
    farthest = tf.reduce_max(tf.where(negative, dist, -_BIG), axis=1)  # [anchor]
    has_semi_hard = tf.reduce_any(farther, axis=2)
    chosen = tf.where(has_semi_hard, closest_farther, farthest[:, tf.newaxis])
    has_negative = tf.reduce_any(negative, axis=1)
    pairs = tf.logical_and(positive, has_negative[:, tf.newaxis])
    losses = tf.maximum(margin + dist - chosen, 0.0)
    losses = tf.where(pairs, losses, 0.0)
    count = tf.reduce_sum(tf.cast(pairs, tf.float32))
    return tf.math.divide_no_nan(tf.reduce_sum(losses), count)


@keras.saving.register_keras_serializable(package="poster_recs")
class SemiHardTripletLoss(keras.losses.Loss):
    """Keras loss: :func:`semi_hard_triplet_loss` of the batch (y_true: multi-hot genres)."""

    def __init__(
        self, margin: float = 0.1, distance: str = "angular", name: str = "triplet", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, not {distance!r}")
        self.margin = float(margin)
        self.distance = distance

    def call(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        """The batch's triplet loss."""
        return semi_hard_triplet_loss(y_true, y_pred, self.margin, self.distance)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, for serialisation."""
        return {**super().get_config(), "margin": self.margin, "distance": self.distance}


def balanced_class_weights(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (positive, negative) weights giving positives and negatives equal total weight.

    Inverse frequency, as scikit-learn's ``class_weight="balanced"`` for each class on its own:
    ``n / (2 * n_positive)`` and ``n / (2 * n_negative)``; a class never (or always) seen gets 1.
    """
    labels = np.asarray(labels, dtype=np.float64)
    n = float(len(labels))
    n_pos = labels.sum(axis=0)
    n_neg = n - n_pos
    seen = (n_pos > 0) & (n_neg > 0)
    pos = np.where(seen, n / (2.0 * np.maximum(n_pos, 1.0)), 1.0)
    neg = np.where(seen, n / (2.0 * np.maximum(n_neg, 1.0)), 1.0)
    return pos.astype(np.float32), neg.astype(np.float32)


@keras.saving.register_keras_serializable(package="poster_recs")
class BalancedBinaryCrossentropy(keras.losses.Loss):
    """Multi-label binary cross-entropy from logits, each label weighted by its class's weight."""

    def __init__(
        self,
        positive_weights: Sequence[float],
        negative_weights: Sequence[float],
        name: str = "balanced_bce",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.positive_weights = [float(w) for w in positive_weights]
        self.negative_weights = [float(w) for w in negative_weights]
        if len(self.positive_weights) != len(self.negative_weights):
            raise ValueError("positive_weights and negative_weights differ in length")

    def call(self, y_true: Any, y_pred: Any) -> tf.Tensor:
        """Per-example mean over classes of the weighted cross-entropy."""
        y_true = tf.cast(y_true, tf.float32)
        logits = tf.cast(y_pred, tf.float32)
        per_label = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits)
        pos = tf.constant(self.positive_weights, tf.float32)
        neg = tf.constant(self.negative_weights, tf.float32)
        weights = y_true * pos + (1.0 - y_true) * neg
        return tf.reduce_mean(per_label * weights, axis=-1)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, for serialisation."""
        return {
            **super().get_config(),
            "positive_weights": self.positive_weights,
            "negative_weights": self.negative_weights,
        }
