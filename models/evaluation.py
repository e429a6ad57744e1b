"""How well an embedding groups films: genre agreement among nearest neighbours."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from models import metrics
from models.losses import balanced_class_weights


def genre_jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """|A & B| / |A | B| of two genre lists (0 when both are empty)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def nearest_neighbours(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices [n, k] of each row's k nearest other rows by cosine (exact, ties by index)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    n = len(unit)
    if n <= k:
        raise ValueError(f"need more than k={k} vectors, got {n}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, 1024):
        sims = unit[start : start + 1024] @ unit.T
        rows = np.arange(start, min(start + 1024, n))
        sims[rows - start, rows] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.lexsort((top, -np.take_along_axis(sims, top, axis=1)), axis=1)
        out[start : start + len(rows)] = np.take_along_axis(top, order, axis=1)
    return out


def mean_neighbour_genre_jaccard(
    vectors: np.ndarray, genres: Sequence[Sequence[str]], k: int = 10
) -> float:
    """Mean genre Jaccard between each film and its k nearest neighbours."""
    neighbours = nearest_neighbours(vectors, k)
    scores = [
        genre_jaccard(genres[i], genres[j]) for i in range(len(genres)) for j in neighbours[i]
    ]
    return float(np.mean(scores))


@dataclasses.dataclass(frozen=True)
class LogisticProbe:
    """Independent per-class logistic regressions on standardised frozen features."""

    weights: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Per-class probabilities [n, n_classes] of each row of ``features``."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))


def fit_logistic_probe(
    features: np.ndarray,
    labels: np.ndarray,
    l2: float = 1e-3,
    steps: int = 500,
    learning_rate: float = 0.05,
) -> LogisticProbe:
    """A class-balanced L2-regularised logistic regression per class, fitted by full-batch Adam.

    Features are standardised with the training mean and standard deviation; each class's
    positives and negatives are weighted to equal total weight (inverse frequency).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and labels {y.shape} must be [n, d] and [n, c]")
    mean = x.mean(axis=0)
    scale = np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
    z = (x - mean) / scale
    n, c = y.shape
    w_pos, w_neg = balanced_class_weights(y)
    cell_weights = (y * w_pos + (1.0 - y) * w_neg) / n
    params = [np.zeros((z.shape[1], c)), np.zeros(c)]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        probabilities = 1.0 / (1.0 + np.exp(-(z @ params[0] + params[1])))
        residual = (probabilities - y) * cell_weights
        grads = [z.T @ residual + l2 * params[0], residual.sum(axis=0)]
        for param, grad, moment in zip(params, grads, moments, strict=True):
            moment[0] = beta1 * moment[0] + (1 - beta1) * grad
            moment[1] = beta2 * moment[1] + (1 - beta2) * grad**2
            m_hat = moment[0] / (1 - beta1**step)
            v_hat = moment[1] / (1 - beta2**step)
            param -= learning_rate * m_hat / (np.sqrt(v_hat) + eps)
    return LogisticProbe(weights=params[0], bias=params[1], mean=mean, scale=scale)


PROBE_L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
REPORT_ROWS = ("trained", "untrained_backbone", "pixels")


def label_genres(labels: np.ndarray, class_names: Sequence[str]) -> list[list[str]]:
    """The class names of each row of a multi-hot label matrix."""
    return [[class_names[j] for j in np.flatnonzero(row)] for row in np.asarray(labels)]


def thresholded_report(
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
) -> dict:
    """Test metrics of (labels, scores) pairs with per-class thresholds tuned on validation."""
    thresholds = metrics.tune_thresholds(*validation)
    report = metrics.classification_report(
        test[0], metrics.apply_thresholds(test[1], thresholds), class_names
    )
    report["thresholds"] = {name: float(t) for name, t in zip(class_names, thresholds, strict=True)}
    return report


def fit_best_probe(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    l2_grid: Sequence[float] = PROBE_L2_GRID,
) -> tuple[LogisticProbe, float]:
    """The balanced logistic probe whose L2 strength gives the best validation micro-F1.

    Each split is (features, labels); every candidate is scored with its own per-class
    thresholds tuned on validation.
    """
    if not l2_grid:
        raise ValueError("l2_grid is empty")
    best: tuple[float, float, LogisticProbe] | None = None
    for l2 in l2_grid:
        probe = fit_logistic_probe(train[0], train[1], l2=l2)
        scores = probe.scores(validation[0])
        predicted = metrics.apply_thresholds(scores, metrics.tune_thresholds(validation[1], scores))
        f1 = metrics.micro_precision_recall_f1(validation[1], predicted)[2]
        if best is None or f1 > best[0]:
            best = (f1, l2, probe)
    return best[2], best[1]


def probe_report(
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: Sequence[str],
    l2_grid: Sequence[float] = PROBE_L2_GRID,
) -> dict:
    """Test metrics of :func:`fit_best_probe`, with per-class thresholds tuned on validation."""
    probe, l2 = fit_best_probe(train, validation, l2_grid)
    report = thresholded_report(
        (validation[1], probe.scores(validation[0])),
        (test[1], probe.scores(test[0])),
        class_names,
    )
    report["probe_l2"] = l2
    return report


def report_predictions(report: dict, scores: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """0/1 predictions of scores with the thresholds a thresholded report holds."""
    thresholds = np.array([report["thresholds"][name] for name in class_names])
    return metrics.apply_thresholds(scores, thresholds)


def paired_bootstrap_micro_f1(
    y_true: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Micro-F1 of a minus that of b, with a 95% paired bootstrap interval over examples."""
    t = np.asarray(y_true).astype(bool)
    a, b = np.asarray(predicted_a).astype(bool), np.asarray(predicted_b).astype(bool)
    true_count = t.sum(axis=1)
    counts = [((t & p).sum(axis=1), p.sum(axis=1)) for p in (a, b)]

    def micro_f1(index: np.ndarray) -> np.ndarray:
        f1 = []
        for tp, predicted in counts:
            numerator = 2.0 * tp[index].sum(axis=-1)
            denominator = predicted[index].sum(axis=-1) + true_count[index].sum(axis=-1)
            f1.append(np.divide(numerator, np.maximum(denominator, 1)))
        return f1[0] - f1[1]

    rng = np.random.default_rng(seed)
    resampled = micro_f1(rng.integers(0, len(t), size=(samples, len(t))))
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "difference": float(micro_f1(np.arange(len(t)))),
        "ci95_low": float(low),
        "ci95_high": float(high),
    }


def format_report_table(report: dict) -> str:
    """The evaluation report's figures as a fixed-width text table (one row per model)."""
    rows = [name for name in REPORT_ROWS if name in report["models"]]
    head = (
        f"{'model':<20}{'hamming':>9}{'exact%':>8}{'>=1%':>8}{'microP':>8}{'microR':>8}"
        f"{'microF1':>9}{'macroF1':>9}{'jacc@' + str(report['neighbours']):>10}"
    )
    lines = [
        f"test split: {report['examples']['test']} posters, genre set {report['genre_set']} "
        f"({', '.join(report['classes'])})",
        head,
        "-" * len(head),
    ]
    for name in rows:
        m = report["models"][name]
        lines.append(
            f"{name:<20}{m['hamming_loss']:>9.4f}{100 * m['exact_match']:>8.1f}"
            f"{100 * m['at_least_one_correct']:>8.1f}{m['micro']['precision']:>8.3f}"
            f"{m['micro']['recall']:>8.3f}{m['micro']['f1']:>9.3f}{m['macro']['f1']:>9.3f}"
            f"{m['neighbour_genre_jaccard']:>10.4f}"
        )
    lines.append("")
    genre_head = f"{'F1 per genre':<20}{'support':>8}" + "".join(f"{n[:18]:>20}" for n in rows)
    lines.append(genre_head)
    lines.append("-" * len(genre_head))
    first = report["models"][rows[0]]["per_class"]
    for cls in report["classes"]:
        cells = "".join(f"{report['models'][n]['per_class'][cls]['f1']:>20.3f}" for n in rows)
        lines.append(f"{cls[:20]:<20}{first[cls]['support']:>8d}{cells}")
    return "\n".join(lines)
