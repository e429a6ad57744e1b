"""The hybrid blend: co-watch and poster neighbours with popularity, its weights tuned offline.

Nothing here is hand-set. :func:`tune_blend` holds out each user's latest catalogue watch of the
*training* history (a time-ordered validation split: everything the held-out test watch would
see is older than it), rebuilds co-watch neighbours (the Gram updated exactly, then the
co-watch model) and popularity from what remains, and picks
by validation HR@100 (then HR@10), one setting at a time over :data:`GRID`: the position decay
of a user's history, the weight of poster neighbours, the weight of popularity and the poster
similarity (cosine or L2). The chosen :class:`Blend` and every trial go to the run's report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from models import candidate_eval as ev
from models.batch_scoring import MergeInputs
from models.batch_scoring import merged_model
from models.collab import CollabModel
from models.scoring import SIMILARITIES
from models.scoring import CandidateConfig
from models.scoring import Popularity
from models.scoring import merge_neighbors
from models.scoring import poster_similarity
from monitoring import progress
from schemas import WatchEvent

_LOG = logging.getLogger(__name__)
GRID: dict[str, tuple] = {
    "recency_events": (0.0, 5.0, 20.0, 80.0),
    "poster_weight": (0.0, 0.1, 0.3, 1.0),
    "popularity_weight": (0.0, 0.05, 0.2, 0.5),
    "similarity": ("cosine", "l2"),
}
TUNE_METRIC = ("HR@100", "HR@10")


@dataclasses.dataclass(frozen=True)
class Blend:
    """How co-watch, poster and popularity combine into candidates."""

    poster_weight: float = 0.0
    popularity_weight: float = 0.0
    recency_events: float = 0.0
    similarity: str = "cosine"

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"blend similarity must be one of {SIMILARITIES}, not {self.similarity!r}"
            )
        if min(self.poster_weight, self.popularity_weight, self.recency_events) < 0:
            raise ValueError("blend weights and recency_events must be >= 0")

    def to_json(self) -> str:
        """The blend as JSON (the form ``--blend`` reads)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Blend:
        """A blend from its JSON, or from a report holding it under ``"blend"``."""
        data = json.loads(text)
        data = data.get("blend", data)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown blend settings {sorted(unknown)}; expected {sorted(fields)}")
        return cls(**data)

    def candidate_config(self, base: CandidateConfig) -> CandidateConfig:
        """``base`` with this blend's recency and popularity weights."""
        return dataclasses.replace(
            base, recency_events=self.recency_events, popularity_weight=self.popularity_weight
        )


def hybrid_lists(
    cowatch_lists: Mapping[int, Sequence[tuple[int, float]]],
    poster_dots: Mapping[int, Sequence[tuple[int, float]]],
    blend: Blend,
    k: int,
) -> dict[int, list[tuple[int, float, str]]]:
    """Every film's merged neighbours (poster dots turned into the blend's similarity)."""
    lists = {}
    for film in sorted(set(cowatch_lists) | set(poster_dots)):
        poster = [
            (nid, float(poster_similarity(dot, blend.similarity)))
            for nid, dot in poster_dots.get(film, ())
        ]
        lists[film] = merge_neighbors(cowatch_lists.get(film, ()), poster, blend.poster_weight, k)
    return lists


@dataclasses.dataclass(frozen=True)
class HybridInputs:
    """What a blend is applied to for one split: co-watch lists, poster dots, popularity."""

    cowatch_lists: Mapping[int, Sequence[tuple[int, float]]]
    poster_dots: Mapping[int, Sequence[tuple[int, float]]]
    popularity: Popularity


def hybrid_inputs(
    split: ev.Split,
    population: ev.Population,
    poster: tuple[np.ndarray, np.ndarray],
    catalogue: set[int],
    k: int = 50,
    queries: Mapping[int, np.ndarray] | None = None,
    model: CollabModel = CollabModel(),
) -> HybridInputs:
    """Co-watch neighbours (``model`` on the Gram) and popularity of the split's training
    ``population``, and poster neighbours.

    ``poster`` is (film ids, unit vectors). With ``queries`` (an audience model's co-watch
    targets), a film that has one searches the posters with it: the posters whose predicted
    audience is its audience; other films search with their own poster.
    """
    lists = model.neighbors(population.gram, k)
    lists = {f: [(n, s) for n, s in v if n in catalogue] for f, v in lists.items()}
    ids, vectors = poster
    search = vectors.copy()
    for row, film in enumerate(ids.tolist()):
        if queries is not None and film in queries:
            search[row] = queries[film]
    dots = ev.neighbour_lists(ids, vectors, k, queries=search)
    return HybridInputs(lists, dots, population.popularity(catalogue))


def hybrid_recommender(
    inputs: HybridInputs, blend: Blend, base: CandidateConfig, k: int = 50,
    models: dict | None = None,
) -> ev.BatchRecommender:  # fmt: skip
    """Candidates of the blend over one split's inputs (every film's lists merged at once,
    as :func:`hybrid_lists` merges them). ``models`` caches the merged lists of the blends
    tried on these inputs: they depend on the poster weight and similarity only."""
    key = (blend.poster_weight, blend.similarity)
    models = {} if models is None else models
    if key not in models:
        if "inputs" not in models:  # the lists as matrices: the same for every blend
            models["inputs"] = MergeInputs.of(
                inputs.cowatch_lists, inputs.poster_dots, inputs.popularity)
        models[key] = merged_model(
            models["inputs"], {}, blend.poster_weight, k, None,
            lambda dots: poster_similarity(dots, blend.similarity),
        )  # fmt: skip
    return ev.BatchRecommender(models[key], blend.candidate_config(base))


def tune_blend(
    events: Sequence[WatchEvent],
    poster: tuple[np.ndarray, np.ndarray],
    catalogue: set[int],
    base: CandidateConfig,
    k: int = 50,
    queries: Mapping[int, np.ndarray] | None = None,
    model: CollabModel = CollabModel(),
    population: ev.Population | None = None,
) -> tuple[Blend, list[dict]]:
    """The blend with the best validation HR@100 (time-ordered split), and every trial.

    ``events`` are the training histories of the users it validates on; ``population`` what
    every user's training history adds up to (default: ``events`` are every user's).
    """
    validation = ev.leave_last_out(events, catalogue)
    if not validation.held_out:
        raise ValueError("no user has a catalogue watch to validate the blend on")
    population = population or ev.Population.of_events(events)
    inputs = hybrid_inputs(
        validation, population.after_split(validation), poster, catalogue, k, queries, model
    )
    blend = Blend()
    trials: list[dict] = []
    models: dict = {}

    def score(candidate: Blend) -> tuple[float, float]:
        recommend = hybrid_recommender(inputs, candidate, base, k, models)
        metrics = ev.hit_metrics(validation, recommend)
        trials.append({"blend": dataclasses.asdict(candidate), "validation": metrics})
        _LOG.info("blend trial %s: %s", candidate, metrics)
        progress.advance("blend trials")
        return tuple(metrics[name] for name in TUNE_METRIC)

    best = score(blend)
    for name, values in GRID.items():
        for value in values:
            if value == getattr(blend, name):
                continue
            candidate = dataclasses.replace(blend, **{name: value})
            if name == "similarity" and not candidate.poster_weight:
                continue
            result = score(candidate)
            if result > best:
                best, blend = result, candidate
    return blend, trials
