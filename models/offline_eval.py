"""The offline evaluation of candidate sources, warm and cold start, with their baselines.

Used by ``pipelines.evaluate`` (and so by the nightly job and its report) and by
``benchmarks/candidates_real.py``, so both measure the same way:

* **warm** (leave-last-out): random, popularity, item-item co-watch kNN, the genre profile, poster
  kNN of every given poster model, and the hybrid whose blend :func:`models.blend.tune_blend`
  chooses on a time-ordered validation split of the training histories; beside the hybrid, its
  co-watch half alone (co-watch kNN with the co-watch stage's user weighting, no poster, no
  recency, no popularity). Co-watch neighbours and popularity are computed from the training
  histories only.
* **cold start** (:mod:`models.cold_start`): every watch of the hidden films is removed; each
  user's hidden films are ranked among all hidden films from the visible history (Recall@k), by
  the methods that need no hidden film's history: random, the genre profile, poster kNN of the
  given models, the hybrid's way (the posters nearest to each watched film's co-watch vector) and
  the hybrid's way with each hidden film's popularity estimated from its poster
  (:func:`models.scoring.estimated_popularity`), weighted by :func:`tune_cold_popularity` on a
  validation hold-out of the *visible* films (another seed), never on the hidden ones.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from models import blend as blend_lib
from models import candidate_eval as ev
from models import cowatch
from models.cold_start import Holdout
from models.cold_start import cold_split
from models.collab import CollabModel
from models.collab import cosine_neighbors
from models.scoring import POPULARITY_NEIGHBOURS
from models.scoring import CandidateConfig
from models.scoring import Popularity
from models.scoring import estimated_popularity
from schemas import WatchEvent

Vectors = tuple[np.ndarray, np.ndarray]
HYBRID = "hybrid (tuned blend)"
HYBRID_COLD = "hybrid: co-watch of watched -> poster"
HYBRID_COLD_POP = "hybrid + popularity estimated from poster"
COLD_POPULARITY_GRID = (0.0, 0.1, 0.3, 0.5, 1.0)
"""Weights of the poster-estimated popularity tried on the cold validation hold-out."""
COWATCH = "co-watch kNN"
COWATCH_MODEL = "co-watch model alone"
"""The hybrid's co-watch neighbours alone (the co-watch stage's ``--cowatch_model``: EASE)."""
HYBRID_NO_POSTER = "hybrid, poster weight 0"
"""The tuned blend with its poster weight set to 0: the hybrid minus it is the posters' share."""
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
    popularity_weight: float | None = None
    trials: list[dict] = dataclasses.field(default_factory=list)

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
    model: CollabModel = CollabModel(),
    population: ev.Population | None = None,
) -> WarmResult:
    """Leave-last-out hits of every method for the users of ``events`` (every user, or a
    sample whose ``population`` holds everyone's film-sized statistics); the hybrid uses
    ``posters[hybrid_poster]`` and the co-watch ``model``."""
    split = ev.leave_last_out(events, catalogue)
    train = [e for h in split.train.values() for e in h]
    trained = (population or ev.Population.of_events(events)).after_split(split)
    methods = {
        "random": ev.random_recommender(catalogue, config.top_k, seed),
        "popularity": ev.popularity_recommender(trained.popularity(catalogue), config.top_k),
    }
    lists = cosine_neighbors(trained.gram, BASELINE_K)
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
        blend, trials = blend_lib.tune_blend(
            train, poster, catalogue, config, k, matching, model, trained
        )
        inputs = blend_lib.hybrid_inputs(split, trained, poster, catalogue, k, matching, model)
        methods[COWATCH_MODEL] = ev.neighbour_recommender(inputs.cowatch_lists, config)
        methods[HYBRID] = blend_lib.hybrid_recommender(inputs, blend, config, k)
        no_poster = dataclasses.replace(blend, poster_weight=0.0)
        methods[HYBRID_NO_POSTER] = blend_lib.hybrid_recommender(inputs, no_poster, config, k)
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
    population: ev.Population | None = None,
    model: CollabModel = CollabModel(),
) -> ColdResult:
    """Cold-start Recall@top of every method for the users of ``events`` (every user, or a
    sample whose ``population`` holds everyone's film-sized statistics); ``posters`` must never
    have seen hidden films; ``model`` is the co-watch model whose vectors ``queries`` are."""
    population = population or ev.Population.of_events(events)
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
    weight, trials = None, []
    if hybrid_poster and _matching(queries, posters[hybrid_poster]):
        poster = posters[hybrid_poster]
        seen = _visible_watchers(population, cold.hidden_films)
        lists, popularity = cold_hybrid_inputs(seen, hidden, poster, queries, k)
        methods[HYBRID_COLD] = ev.cold_neighbour_recommender(lists, ranked)
        weight, trials = tune_cold_popularity(
            cold.visible, catalogue, holdout, poster, k, ranked, population, model
        )
        methods[HYBRID_COLD_POP] = ev.cold_neighbour_recommender(
            lists, dataclasses.replace(ranked, popularity_weight=weight), popularity
        )
    recall = {name: ev.cold_recall(visible, cold.targets, m, top) for name, m in methods.items()}
    return ColdResult(len(hidden), top, recall, weight, trials)


def _visible_watchers(population: ev.Population, hidden: Iterable[int]) -> dict[int, int]:
    """Watchers of the films no hold-out hides (a hidden film has no visible watch)."""
    hidden = set(hidden)
    return {m: c for m, c in population.watchers.items() if c > 0 and m not in hidden}


def cold_hybrid_inputs(
    watchers: Mapping[int, int],
    pool: set[int],
    poster: Vectors,
    queries: Mapping[int, np.ndarray],
    k: int,
) -> tuple[dict, Popularity]:
    """The hybrid's cold-start inputs: each film's nearest ``pool`` posters searched with its
    co-watch vector, and the ``pool`` films' popularity estimated from their posters (from the
    ``watchers`` of the visible films)."""
    ids, vectors = poster
    search = np.stack([queries.get(int(m), v) for m, v in zip(ids, vectors, strict=True)])
    lists = ev.neighbour_lists(ids, vectors, k, pool, search)
    known = {int(m) for m in ids if watchers.get(int(m))}
    near = ev.neighbour_lists(ids, vectors, POPULARITY_NEIGHBOURS, among=known)
    estimates = estimated_popularity({m: watchers[m] for m in known}, near, sorted(pool))
    return lists, Popularity.from_counts(estimates)


def tune_cold_popularity(
    visible: Sequence[WatchEvent],
    catalogue: set[int],
    holdout: Holdout,
    poster: Vectors,
    k: int,
    ranked: CandidateConfig,
    population: ev.Population | None = None,
    model: CollabModel = CollabModel(),
) -> tuple[float, list[dict]]:
    """The weight of poster-estimated popularity with the best Recall on a validation hold-out.

    The validation films are those another seed (``holdout.seed + 1``) hides among the films
    still visible. As the test does with the hidden films, their watches leave everything the
    ranking uses: the co-watch vectors that search the posters (recomputed by the co-watch
    ``model``, in the poster model's dimensions), the watcher counts and the users' histories;
    each user's validation watches are the films to find. Only visible history is used: the
    hidden films never are. The poster model itself was fitted to most validation films'
    posters, so the choice is noisy; the grid stops at 1, where an estimated popularity can at
    most tie the user's best neighbour match (scores are divided by the best): popularity never
    outweighs the history.
    ``visible`` are the evaluated users' visible events; ``population`` (default: theirs)
    holds everyone's film-sized statistics, hidden films included.
    """
    population = population or ev.Population.of_events(visible)
    hidden = holdout.hidden(catalogue)
    seen = _visible_watchers(population, hidden)
    shown = {int(m) for m in catalogue} & set(seen)
    validation = Holdout(holdout.fraction, holdout.seed + 1).hidden(shown)
    split = cold_split(visible, validation)
    if not split.targets:
        return 0.0, []
    dims = cowatch.CowatchConfig(
        dim=poster[1].shape[1], model=model.model, ease_lambda=model.ease_lambda
    )
    gone = np.isin(population.gram.films, list(hidden | validation))
    ids, vectors = cowatch.gram_vectors(population.gram.subset(~gone), dims)
    queries = dict(zip(ids.tolist(), vectors, strict=True))
    left = {m: c for m, c in seen.items() if m not in validation}
    lists, popularity = cold_hybrid_inputs(left, set(validation), poster, queries, k)
    by_user = collections.defaultdict(list)
    for e in split.visible:
        by_user[e.user_id].append(e)
    trials, best = [], (-1.0, 0.0)
    for weight in COLD_POPULARITY_GRID:
        config = dataclasses.replace(ranked, popularity_weight=weight)
        recommend = ev.cold_neighbour_recommender(lists, config, popularity)
        recall = float(ev.cold_recall(by_user, split.targets, recommend, ranked.top_k).mean())
        trials.append({"popularity_weight": weight, f"validation Recall@{ranked.top_k}": recall})
        best = max(best, (recall, -weight))
    return -best[1], trials


def intervals(
    warm: WarmResult | None, cold: ColdResult | None, cold_model: str | None, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Paired bootstrap 95% intervals of the differences the targets name."""
    out: dict[str, dict[str, float]] = {}
    if warm is not None and HYBRID in warm.hits:
        for other in (COWATCH, "popularity", COWATCH_MODEL, HYBRID_NO_POSTER):
            if other not in warm.hits:
                continue
            out[f"warm HR@100: hybrid - {other}"] = ev.paired_bootstrap(
                warm.hits[HYBRID]["HR@100"], warm.hits[other]["HR@100"], seed
            )
    if cold is not None:
        ours = [f"poster kNN: {cold_model}"] if cold_model else []
        ours += [n for n in (HYBRID_COLD, HYBRID_COLD_POP) if n in cold.recall]
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
