"""The offline evaluation of candidate sources, warm and cold start, with their baselines.

Used by ``pipelines.evaluate`` (and so by the nightly job and its report) and by
``benchmarks/candidates_real.py``, so both measure the same way:

* **warm** (leave-last-out): random, popularity, item-item co-watch kNN, the genre profile, poster
  kNN of every given poster model, and the hybrid whose blend :func:`models.blend.tune_blend`
  chooses on a time-ordered validation split of the training histories. Co-watch neighbours and
  popularity are computed from the training histories only.
* **cold start** (:mod:`models.cold_start`): every watch of the hidden films is removed; each
  user's hidden films are ranked among all hidden films from the visible history (Recall@k), by
  the methods that need no hidden film's history: random, the genre profile, poster kNN of the
  given models, and the hybrid's way (the posters nearest to each watched film's co-watch vector).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from models import blend as blend_lib
from models import candidate_eval as ev
from models import cowatch
from models.cold_start import Holdout
from models.cold_start import cold_split
from models.scoring import CandidateConfig
from schemas import WatchEvent

Vectors = tuple[np.ndarray, np.ndarray]
HYBRID = "hybrid (tuned blend)"
HYBRID_COLD = "hybrid: co-watch of watched -> poster"
COWATCH = "co-watch kNN"
GENRES = "genre profile"
BASELINE_K = 50
"""Neighbours per film of the item-item co-watch kNN baseline (cosine on co-watch counts)."""


@dataclasses.dataclass
class WarmResult:
    """Per-user leave-last-out hits of every method, and the chosen blend."""

    users: int
    hits: dict[str, dict[str, np.ndarray]]
    blend: blend_lib.Blend | None
    trials: list[dict]

    def means(self) -> dict[str, dict[str, float]]:
        """Mean HR@10, HR@100 and NDCG@10 per method."""
        return {n: {k: float(v.mean()) for k, v in h.items()} for n, h in self.hits.items()}


@dataclasses.dataclass
class ColdResult:
    """Per-user cold-start Recall@k of every method."""

    hidden_films: int
    k: int
    recall: dict[str, np.ndarray]

    def means(self) -> dict[str, float]:
        """Mean Recall@k per method."""
        return {name: float(values.mean()) for name, values in self.recall.items()}


def _matching(queries: Mapping[int, np.ndarray] | None, poster: Vectors):
    """The queries when they live in the poster model's space (same length), else None."""
    if not queries:
        return None
    dim = len(next(iter(queries.values())))
    return queries if dim == poster[1].shape[1] else None


def _genre_profile(catalogue: set[int], genres, pool: set[int], k: int) -> ev.Recommender:
    """The genre-profile baseline: films of ``pool`` nearest the user's genre mix."""
    ids, vectors = ev.genre_vectors(sorted(catalogue), genres)
    return ev.profile_recommender(ids, vectors, pool, k)


def warm_evaluation(
    events: Sequence[WatchEvent],
    catalogue: set[int],
    genres: Mapping[int, Sequence[str]],
    posters: Mapping[str, Vectors],
    hybrid_poster: str | None,
    config: CandidateConfig,
    queries: Mapping[int, np.ndarray] | None = None,
    k: int = 50,
    seed: int = 0,
) -> WarmResult:
    """Leave-last-out hits of every method; the hybrid uses ``posters[hybrid_poster]``."""
    split = ev.leave_last_out(events, catalogue)
    train = [e for h in split.train.values() for e in h]
    methods = {
        "random": ev.random_recommender(catalogue, config.top_k, seed),
        "popularity": ev.popularity_recommender(split, catalogue, config.top_k),
    }
    lists = cowatch.cowatch_neighbors(cowatch.history_matrix(train), BASELINE_K)
    lists = {m: [(n, s) for n, s in v if n in catalogue] for m, v in lists.items()}
    methods[COWATCH] = ev.neighbour_recommender(lists, config)
    if genres:
        methods[GENRES] = _genre_profile(catalogue, genres, catalogue, config.top_k)
    for name, (ids, vectors) in posters.items():
        dots = ev.neighbour_lists(ids, vectors, k)
        methods[f"poster kNN: {name}"] = ev.neighbour_recommender(dots, config)
    blend, trials = None, []
    if hybrid_poster:
        poster = posters[hybrid_poster]
        matching = _matching(queries, poster)
        blend, trials = blend_lib.tune_blend(train, poster, catalogue, config, k, matching)
        inputs = blend_lib.hybrid_inputs(split, poster, catalogue, k, matching)
        methods[HYBRID] = blend_lib.hybrid_recommender(inputs, blend, config, k)
    hits = {name: ev.per_user_hits(split, recommend) for name, recommend in methods.items()}
    return WarmResult(users=len(split.held_out), hits=hits, blend=blend, trials=trials)


def cold_evaluation(
    events: Sequence[WatchEvent],
    catalogue: set[int],
    holdout: Holdout,
    genres: Mapping[int, Sequence[str]],
    posters: Mapping[str, Vectors],
    hybrid_poster: str | None,
    config: CandidateConfig,
    queries: Mapping[int, np.ndarray] | None = None,
    k: int = 50,
    seed: int = 0,
    top: int = 20,
) -> ColdResult:
    """Cold-start Recall@top of every method (``posters`` must never have seen hidden films)."""
    cold = cold_split(events, holdout.hidden(catalogue))
    if not cold.hidden_films:
        raise ValueError("the hold-out hides no film of the catalogue: raise --holdout_fraction")
    visible = collections.defaultdict(list)
    for e in cold.visible:
        visible[e.user_id].append(e)
    hidden = set(cold.hidden_films)
    order = sorted(hidden)

    def random(user: int, history, held) -> list[int]:
        picks = np.random.default_rng([seed, user]).permutation(len(order))[:top]
        return [order[i] for i in picks]

    methods = {"random": random}
    if genres:
        methods[GENRES] = _genre_profile(catalogue, genres, hidden, top)
    ranked = dataclasses.replace(config, top_k=top)
    for name, (ids, vectors) in posters.items():
        lists = ev.neighbour_lists(ids, vectors, k, among=hidden)
        methods[f"poster kNN: {name}"] = ev.cold_neighbour_recommender(lists, ranked)
    if hybrid_poster and _matching(queries, posters[hybrid_poster]):
        ids, vectors = posters[hybrid_poster]
        search = np.stack([queries.get(int(m), v) for m, v in zip(ids, vectors, strict=True)])
        lists = ev.neighbour_lists(ids, vectors, k, hidden, search)
        methods[HYBRID_COLD] = ev.cold_neighbour_recommender(lists, ranked)
    recall = {name: ev.cold_recall(visible, cold.targets, m, top) for name, m in methods.items()}
    return ColdResult(hidden_films=len(hidden), k=top, recall=recall)


def intervals(
    warm: WarmResult | None, cold: ColdResult | None, cold_model: str | None, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Paired bootstrap 95% intervals of the differences the targets name."""
    out: dict[str, dict[str, float]] = {}
    if warm is not None and HYBRID in warm.hits:
        for other in (COWATCH, "popularity"):
            out[f"warm HR@100: hybrid - {other}"] = ev.paired_bootstrap(
                warm.hits[HYBRID]["HR@100"], warm.hits[other]["HR@100"], seed
            )
    if cold is not None:
        ours = [f"poster kNN: {cold_model}"] if cold_model else []
        ours += [HYBRID_COLD] if HYBRID_COLD in cold.recall else []
        others = [n for n in cold.recall if n.startswith("poster kNN") or n == GENRES]
        for mine in ours:
            for other in others:
                if other != mine:
                    out[f"cold Recall@{cold.k}: {mine} - {other}"] = ev.paired_bootstrap(
                        cold.recall[mine], cold.recall[other], seed
                    )
    return out


def format_intervals(found: Mapping[str, Mapping[str, float]]) -> str:
    """The intervals as printed lines."""
    lines = ["paired bootstrap 95% intervals (difference of means):"]
    for name, d in found.items():
        lines.append(f"  {name}: {d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
    return "\n".join(lines)
