"""Textbook collaborative peers of the hybrid: EASE, RP3beta and iALS, tuned on validation.

Each peer learns from a binary users x catalogue films matrix of the training histories and
scores every catalogue film for a user from that user's row; it is then ranked through the same
:data:`models.candidate_eval.Recommender` interface as every other method (watched films out,
ties to the more watched film, then the lower id), so HR@10, HR@100 and NDCG@10 are computed
identically by :func:`models.candidate_eval.per_user_hits`.

* **EASE** (Steck 2019): ``B = I - P / diag(P)``, ``P = (X^T X + l2 I)^-1``; scores ``w_u^T B``.
* **RP3beta** (Paudel et al. 2016, as Dacrema et al. 2019 run it): ``W = P_iu^alpha P_ui^alpha``
  (rows of X and X^T normalised to sum 1), column j divided by the film's watchers ** beta, the
  diagonal zeroed, the top ``k`` of each row kept; scores ``w_u^T W``.
* **iALS** (Hu et al. 2008): implicit's AlternatingLeastSquares, run in the peer env
  ``.venv-bench`` (``make bench-peers``) by ``benchmarks/ials_peer.py`` as a subprocess, the
  matrices passed as .npz files in a temporary folder; scores ``u^T V``.

A user's row ``w_u`` is binary, or weighted as the hybrid weights a user's history
(:func:`models.scoring._event_weights`: rating / 5 x the half-life decay x
``0.5 ** (position / recency_events)``), scaled to a largest weight of 1 (which changes no linear
peer's ranking; for iALS it puts the top watch's confidence at ``alpha``). iALS keeps its item
factors and recomputes the user's factors from the weighted row.

Every hyper-parameter, and ``recency_events`` of the weighted rows, is chosen on the same
time-ordered validation split as :func:`models.blend.tune_blend` (each user's latest catalogue
watch of the *training* histories held out), by validation HR@100, then HR@10. The stronger of
the two variants (binary, weighted) is chosen on validation too; the test split is scored once,
with the chosen settings refitted on its training histories.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
import scipy.sparse

from benchmarks import peers
from models import blend as blend_lib
from models import candidate_eval as ev
from models.scoring import CandidateConfig

# The hybrid's own per-event weights, so the peers' weighted rows are exactly the hybrid's.
from models.scoring import _event_weights
from schemas import WatchEvent

EASE = "EASE"
RP3BETA = "RP3beta"
IALS = "iALS"
BINARY = "binary rows"
WEIGHTED = "hybrid's recency weights"
RECENCY_EVENTS = blend_lib.GRID["recency_events"]
"""The ``recency_events`` tried for the weighted rows (the blend's own grid)."""
EASE_GRID = tuple({"l2": v} for v in (50.0, 100.0, 200.0, 300.0, 500.0, 1000.0))
RP3BETA_GRID = tuple(
    {"alpha": a, "beta": b, "k": k}
    for a in (0.5, 1.0)
    for b in (0.0, 0.2, 0.4, 0.6, 0.8)
    for k in (50, 200)
)
IALS_GRID = tuple(
    {"factors": f, "regularization": r, "alpha": a, "iterations": i}
    for f in (64, 128)
    for r in (0.01, 0.1, 1.0)
    for a in (1.0, 10.0)
    for i in (15, 30)
)
IALS_SCRIPT = pathlib.Path(__file__).resolve().with_name("ials_peer.py")
IALS_TIMEOUT_S = 1800.0

Weighting = float | None
"""How a user's row is weighted: None is binary, a number the hybrid's weights with that
``recency_events``."""
Scores = Iterator[dict[Weighting, np.ndarray]]
Scorer = Callable[["Matrix", ev.Split, Sequence[Mapping], Sequence[Weighting]], Scores]
"""(matrix, split, settings, weightings) -> per setting, users x films scores per weighting."""


@dataclasses.dataclass(frozen=True)
class Matrix:
    """Training histories as a binary users x films matrix (rows: users in id order)."""

    users: np.ndarray
    films: np.ndarray
    binary: scipy.sparse.csr_matrix

    @property
    def watchers(self) -> np.ndarray:
        """Watchers per film (column sums)."""
        return np.asarray(self.binary.sum(axis=0)).ravel()


def history_matrix(histories: Mapping[int, Sequence[WatchEvent]], films: np.ndarray) -> Matrix:
    """The binary users x ``films`` matrix of these histories (films outside ``films`` dropped)."""
    column = {int(m): j for j, m in enumerate(films.tolist())}
    users = np.array(sorted(histories), dtype=np.int64)
    rows, cols = [], []
    for row, user in enumerate(users.tolist()):
        seen = sorted({column[e.movie_id] for e in histories[user] if e.movie_id in column})
        rows += [row] * len(seen)
        cols += seen
    binary = scipy.sparse.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(len(users), len(films)), dtype=np.float64
    )
    return Matrix(users, np.asarray(films, dtype=np.int64), binary)


def user_rows(
    matrix: Matrix, split: ev.Split, weighting: Weighting, base: CandidateConfig
) -> scipy.sparse.csr_matrix:
    """The users' rows: binary, or the hybrid's event weights as of the held-out watch, scaled
    to a largest weight of 1."""
    if weighting is None:
        return matrix.binary
    config = dataclasses.replace(base, recency_events=weighting)
    column = {int(m): j for j, m in enumerate(matrix.films.tolist())}
    rows = np.zeros(matrix.binary.shape)
    for row, user in enumerate(matrix.users.tolist()):
        reference = split.held_out[user].watched_at
        for event, weight in _event_weights(split.train[user], config, reference):
            if event.movie_id in column:
                rows[row, column[event.movie_id]] += weight
        top = rows[row].max()
        if top > 0:
            rows[row] /= top
    return scipy.sparse.csr_matrix(rows)


def ease_weights(binary: scipy.sparse.spmatrix, l2: float) -> np.ndarray:
    """EASE's item-item weights B (zero diagonal) of a users x items matrix."""
    gram = np.asarray((binary.T @ binary).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = inverse / -np.diag(inverse)
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def rp3beta_weights(
    binary: scipy.sparse.spmatrix, alpha: float, beta: float, k: int
) -> scipy.sparse.csr_matrix:
    """RP3beta's item-item weights: the top ``k`` of each row (itself excluded)."""
    x = scipy.sparse.csr_matrix(binary, dtype=np.float64)
    users_to_items = _row_normalised(x).power(alpha)
    items_to_users = _row_normalised(x.T.tocsr()).power(alpha)
    weights = np.asarray((items_to_users @ users_to_items).todense())
    watchers = np.asarray(x.sum(axis=0)).ravel()
    weights /= np.power(np.maximum(watchers, 1.0), beta)[None, :]
    np.fill_diagonal(weights, 0.0)
    keep = min(k, weights.shape[1] - 1)
    if keep < 1:
        return scipy.sparse.csr_matrix(weights.shape)
    top = np.argpartition(-weights, keep - 1, axis=1)[:, :keep]
    rows = np.repeat(np.arange(weights.shape[0]), keep)
    values = np.take_along_axis(weights, top, axis=1).ravel()
    kept = scipy.sparse.csr_matrix((values, (rows, top.ravel())), shape=weights.shape)
    kept.eliminate_zeros()
    return kept


def _row_normalised(x: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    """Rows scaled to sum 1 (empty rows stay empty)."""
    sums = np.asarray(x.sum(axis=1)).ravel()
    return scipy.sparse.diags(1.0 / np.maximum(sums, 1e-12)) @ x


def ranked_recommender(scores: np.ndarray, matrix: Matrix, k: int) -> ev.Recommender:
    """The top ``k`` unwatched films of a user's score row (ties: more watchers, lower id)."""
    row_of = {u: i for i, u in enumerate(matrix.users.tolist())}
    column = {m: j for j, m in enumerate(matrix.films.tolist())}
    watchers = matrix.watchers

    def recommend(user: int, history: Sequence[WatchEvent], held: WatchEvent) -> list[int]:
        if user not in row_of:
            return []
        found = np.round(np.asarray(scores[row_of[user]], dtype=np.float64), 9)
        watched = sorted({column[e.movie_id] for e in history if e.movie_id in column})
        found[watched] = -np.inf
        top = min(k, len(found) - len(watched))
        if top < 1:
            return []
        cut = len(found) - top
        pool = np.flatnonzero(found >= np.partition(found, cut)[cut])
        order = np.lexsort((matrix.films[pool], -watchers[pool], -found[pool]))
        return matrix.films[pool[order[:top]]].tolist()

    return recommend


def item_scorer(weights_of: Callable[..., object]) -> Scorer:
    """A scorer of item-item weights (``weights_of(binary, **setting)``): rows @ weights."""

    def score(matrix, split, settings, weightings) -> Scores:
        rows = {w: user_rows(matrix, split, w, CandidateConfig()) for w in weightings}
        for setting in settings:
            weights = weights_of(matrix.binary, **setting)
            yield {w: _dense(r @ weights) for w, r in rows.items()}

    return score


def _dense(product: object) -> np.ndarray:
    """A product of sparse rows as a dense array."""
    return product.toarray() if scipy.sparse.issparse(product) else np.asarray(product)


def ials_available() -> str | None:
    """None when the peer env can run implicit, else the reason it cannot."""
    return peers.peer_available("implicit", _child_env())


def _child_env() -> dict[str, str]:
    """The environment of the peer env's python: no project paths, one BLAS thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def ials_scorer(seed: int) -> Scorer:
    """A scorer of iALS fits (implicit, in the peer env): user factors @ item factors."""

    def score(matrix, split, settings, weightings) -> Scores:
        queries = [w for w in weightings if w is not None]
        with tempfile.TemporaryDirectory(prefix="ials-") as tmp:
            folder = pathlib.Path(tmp)
            scipy.sparse.save_npz(folder / "train.npz", matrix.binary)
            for index, w in enumerate(queries):
                rows = user_rows(matrix, split, w, CandidateConfig())
                scipy.sparse.save_npz(folder / f"query-{index}.npz", rows)
            jobs = [
                {
                    "train": str(folder / "train.npz"),
                    "queries": [str(folder / f"query-{i}.npz") for i in range(len(queries))],
                    "params": dict(setting),
                    "seed": seed,
                    "out": str(folder / f"fit-{n}.npz"),
                }
                for n, setting in enumerate(settings)
            ]
            (folder / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
            done = subprocess.run(
                [str(peers.peer_python()), str(IALS_SCRIPT), str(folder / "jobs.json")],
                env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=IALS_TIMEOUT_S,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"ials_peer.py exited {done.returncode}:\n{done.stderr[-4000:]}")
            factors = []
            for job in jobs:
                with np.load(job["out"]) as data:
                    users = {None: data["users"]}
                    users.update({w: data[f"query_{i}"] for i, w in enumerate(queries)})
                    factors.append((data["items"], users))
        for items, users in factors:
            yield {w: users[w] @ items.T for w in weightings}

    return score


@dataclasses.dataclass(frozen=True)
class Choice:
    """One variant's setting chosen on validation, its validation metrics and its test hits."""

    setting: Mapping
    recency_events: Weighting
    validation: Mapping[str, float]
    hits: Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PeerResult:
    """A peer's two variants (binary rows, the hybrid's weights) and which won on validation."""

    name: str
    variants: Mapping[str, Choice]
    stronger: str
    trials: list[dict]
    seconds: float

    @property
    def chosen(self) -> Choice:
        """The variant that was stronger on validation."""
        return self.variants[self.stronger]

    def describe(self) -> str:
        """The chosen settings and validation HR@100 of both variants, one line."""
        parts = []
        for variant, c in self.variants.items():
            setting = ", ".join(f"{k}={v:g}" for k, v in c.setting.items())
            if c.recency_events is not None:
                setting += f", recency_events={c.recency_events:g}"
            mark = " (chosen)" if variant == self.stronger else ""
            parts.append(f"{variant}{mark}: {setting}; validation HR@100 "
                         f"{c.validation['HR@100']:.4f}")  # fmt: skip
        head = f"{self.name} ({len(self.trials)} trials, {self.seconds:.0f} s): "
        return head + " | ".join(parts)


def evaluate_peer(
    name: str,
    scorer: Scorer,
    settings: Sequence[Mapping],
    split: ev.Split,
    catalogue: set[int],
    k: int,
) -> PeerResult:
    """Tune a peer on the validation split of ``split``'s training histories; score the test."""
    started = time.perf_counter()
    films = np.array(sorted(catalogue), dtype=np.int64)
    validation = ev.leave_last_out([e for h in split.train.values() for e in h], catalogue)
    if not validation.held_out:
        raise ValueError("no user has a catalogue watch to validate the peers on")
    matrix = history_matrix(validation.train, films)
    weightings = (None, *RECENCY_EVENTS)
    trials: list[dict] = []
    best: dict[str, tuple] = {}
    for setting, scores in zip(
        settings, scorer(matrix, validation, settings, weightings), strict=True
    ):
        for weighting, found in scores.items():
            metrics = ev.hit_metrics(validation, ranked_recommender(found, matrix, k))
            trials.append({"setting": dict(setting), "recency_events": weighting,
                           "validation": metrics})  # fmt: skip
            variant = BINARY if weighting is None else WEIGHTED
            key = tuple(metrics[m] for m in blend_lib.TUNE_METRIC)
            if variant not in best or key > best[variant][0]:
                best[variant] = (key, setting, weighting, metrics)
    test_matrix = history_matrix(split.train, films)
    variants = {}
    for variant in (BINARY, WEIGHTED):
        _, setting, weighting, metrics = best[variant]
        scores = next(scorer(test_matrix, split, [setting], [weighting]))[weighting]
        hits = ev.per_user_hits(split, ranked_recommender(scores, test_matrix, k))
        variants[variant] = Choice(setting, weighting, metrics, hits)
    stronger = max((BINARY, WEIGHTED), key=lambda v: best[v][0])
    return PeerResult(name, variants, stronger, trials, time.perf_counter() - started)


def warm_peers(
    split: ev.Split, catalogue: set[int], k: int, seed: int
) -> tuple[list[PeerResult], str | None]:
    """EASE, RP3beta and (when the peer env has implicit) iALS on the leave-last-out ``split``;
    and why iALS was skipped, or None."""
    results = [
        evaluate_peer(EASE, item_scorer(ease_weights), EASE_GRID, split, catalogue, k),
        evaluate_peer(RP3BETA, item_scorer(rp3beta_weights), RP3BETA_GRID, split, catalogue, k),
    ]
    skipped = ials_available()
    if skipped is None:
        results.append(evaluate_peer(IALS, ials_scorer(seed), IALS_GRID, split, catalogue, k))
    return results, skipped
