"""Multi-label classification metrics over 0/1 label matrices [n_examples, n_classes].

* Hamming loss: the fraction of (example, class) cells predicted wrongly.
* Exact match: the fraction of examples whose predicted class set equals the true set.
* At least one correct: the fraction of examples with at least one correctly predicted class.
* Per class precision, recall and F1; micro averages pool the counts of every class, macro
  averages are unweighted means over classes. A ratio with a zero denominator is 0.

Decision thresholds are tuned per class on the validation split by :func:`tune_thresholds`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _binary(matrix: np.ndarray, name: str) -> np.ndarray:
    """A 0/1 matrix as bool, checked to be 2-D."""
    array = np.asarray(matrix)
    if array.ndim != 2:
        raise ValueError(f"{name} must be [n_examples, n_classes], got shape {array.shape}")
    return array.astype(bool)


def _ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def hamming_loss(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of label cells predicted wrongly."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    return float(np.mean(t != p)) if t.size else 0.0


def exact_match(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of examples whose whole label set is predicted exactly."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    return float(np.mean(np.all(t == p, axis=1))) if len(t) else 0.0


def at_least_one_correct(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of examples with at least one true label predicted."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    return float(np.mean(np.any(t & p, axis=1))) if len(t) else 0.0


def precision_recall_f1(
    y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 arrays."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    tp = np.sum(t & p, axis=0)
    precision = _ratio(tp, np.sum(p, axis=0))
    recall = _ratio(tp, np.sum(t, axis=0))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1


def micro_precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 over the pooled counts of every class."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    tp = np.sum(t & p)
    precision = float(_ratio(tp, np.sum(p)))
    recall = float(_ratio(tp, np.sum(t)))
    return precision, recall, float(_ratio(2 * precision * recall, precision + recall))


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Every metric above as a JSON-ready dict (per-class figures keyed by class name)."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if t.shape != p.shape or t.shape[1] != len(class_names):
        raise ValueError(f"shapes {t.shape} / {p.shape} do not fit {len(class_names)} classes")
    precision, recall, f1 = precision_recall_f1(t, p)
    micro = micro_precision_recall_f1(t, p)
    support = np.sum(t, axis=0)
    return {
        "examples": int(len(t)),
        "hamming_loss": hamming_loss(t, p),
        "exact_match": exact_match(t, p),
        "at_least_one_correct": at_least_one_correct(t, p),
        "micro": {"precision": micro[0], "recall": micro[1], "f1": micro[2]},
        "macro": {
            "precision": float(np.mean(precision)),
            "recall": float(np.mean(recall)),
            "f1": float(np.mean(f1)),
        },
        "per_class": {
            name: {
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "support": int(support[j]),
            }
            for j, name in enumerate(class_names)
        },
    }


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (predict ``score >= threshold``) with the best F1 for one class.

    Candidates lie halfway between consecutive distinct observed scores (below the lowest
    score, the lowest one itself); ties go to the higher threshold. With no positive example the
    threshold is 0.5.
    """
    truth = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not truth.any():
        return 0.5
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    tp = np.cumsum(truth[order])
    predicted = np.arange(1, len(scores) + 1)
    last_of_value = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    f1 = _ratio(2 * tp, predicted + truth.sum())[last_of_value]
    distinct = sorted_scores[last_of_value]
    below = np.r_[distinct[1:], distinct[-1]]
    best = int(np.argmax(f1))
    return float((distinct[best] + below[best]) / 2.0)


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class thresholds maximising each class's F1 on (validation) scores."""
    t = _binary(y_true, "y_true")
    scores = np.asarray(scores, dtype=np.float64)
    return np.array([best_f1_threshold(t[:, j], scores[:, j]) for j in range(t.shape[1])])


def apply_thresholds(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0/1 predictions: score >= the class's threshold."""
    return (np.asarray(scores) >= np.asarray(thresholds)[np.newaxis, :]).astype(np.int64)
