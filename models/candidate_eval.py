"""Leave-last-out evaluation of candidate generation against simple baselines.

Each user's latest watched film that has a vector is held out; candidates are built from the
rest of their history with the same scoring as the nightly job (``rank_candidates``), and we
report HR@10, HR@100 and NDCG@10 over the full catalogue of films with vectors. Baselines in the
same run: random films, the most popular films, and neighbours from other vectors (``pixels``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from models.scann_index import exact_search
from schemas import WatchEvent
from transforms.candidates import CandidateConfig
from transforms.candidates import rank_candidates

Recommender = Callable[[int, Sequence[WatchEvent], WatchEvent], list[int]]


@dataclasses.dataclass(frozen=True)
class Split:
    """Per-user training histories and held-out films."""

    train: dict[int, list[WatchEvent]]
    held_out: dict[int, WatchEvent]
    skipped_users: int


def leave_last_out(events: Sequence[WatchEvent], catalogue: set[int]) -> Split:
    """Hold out each user's latest event whose film is in the catalogue (ties: higher movie id)."""
    by_user: dict[int, list[WatchEvent]] = collections.defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    train, held, skipped = {}, {}, 0
    for user, history in sorted(by_user.items()):
        history.sort(key=lambda e: (e.watched_at, e.movie_id))
        eligible = [i for i, e in enumerate(history) if e.movie_id in catalogue]
        if not eligible or len(history) < 2:
            skipped += 1
            continue
        last = eligible[-1]
        held[user] = history[last]
        train[user] = history[:last] + history[last + 1 :]
    return Split(train, held, skipped)


def neighbour_lists(
    ids: np.ndarray, vectors: np.ndarray, k: int
) -> dict[int, list[tuple[int, float]]]:
    """Exact top-k cosine neighbours of every film (itself excluded)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    lists: dict[int, list[tuple[int, float]]] = {}
    for start in range(0, len(unit), 2048):
        rows, scores = exact_search(unit, unit[start : start + 2048], k + 1)
        for offset, (row_ids, row_scores) in enumerate(zip(rows, scores, strict=True)):
            movie_id = int(ids[start + offset])
            pairs = [(int(ids[j]), float(s)) for j, s in zip(row_ids, row_scores, strict=True)]
            lists[movie_id] = [p for p in pairs if p[0] != movie_id][:k]
    return lists


def neighbour_recommender(
    lists: Mapping[int, Sequence[tuple[int, float]]], config: CandidateConfig
) -> Recommender:
    """Candidates exactly as the nightly job ranks them, as of the held-out watch."""

    def recommend(user: int, history: Sequence[WatchEvent], held: WatchEvent) -> list[int]:
        ranked = rank_candidates(history, lists, config, held.watched_at)
        return [movie_id for movie_id, _, _ in ranked]

    return recommend


def popularity_recommender(split: Split, catalogue: set[int], k: int) -> Recommender:
    """The most-watched films of the training histories, minus what the user watched."""
    counts = collections.Counter(e.movie_id for h in split.train.values() for e in h)
    ranked = [
        m for m, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if m in catalogue
    ]

    def recommend(user: int, history: Sequence[WatchEvent], held: WatchEvent) -> list[int]:
        watched = {e.movie_id for e in history}
        return [m for m in ranked if m not in watched][:k]

    return recommend


def random_recommender(catalogue: set[int], k: int, seed: int = 0) -> Recommender:
    """k random catalogue films the user has not watched (seeded per user)."""
    films = np.array(sorted(catalogue))

    def recommend(user: int, history: Sequence[WatchEvent], held: WatchEvent) -> list[int]:
        watched = {e.movie_id for e in history}
        rng = np.random.default_rng([seed, user])
        picks = [int(m) for m in rng.permutation(films)[: k + len(watched)] if m not in watched]
        return picks[:k]

    return recommend


def hit_metrics(split: Split, recommend: Recommender) -> dict[str, float]:
    """HR@10, HR@100 and NDCG@10 of a recommender over the held-out films."""
    hr10 = hr100 = ndcg = 0.0
    for user, held in split.held_out.items():
        ranked = recommend(user, split.train[user], held)
        if held.movie_id in ranked:
            position = ranked.index(held.movie_id) + 1
            hr100 += position <= 100
            hr10 += position <= 10
            ndcg += 1.0 / math.log2(position + 1) if position <= 10 else 0.0
    n = max(len(split.held_out), 1)
    return {"HR@10": hr10 / n, "HR@100": hr100 / n, "NDCG@10": ndcg / n}


def format_table(results: Mapping[str, Mapping[str, float]], users: int) -> str:
    """The evaluation as a printed table."""
    lines = [
        f"leave-last-out over {users} users",
        f"{'method':<28}{'HR@10':>8}{'HR@100':>8}{'NDCG@10':>9}",
    ]
    for name, m in results.items():
        lines.append(f"{name:<28}{m['HR@10']:>8.4f}{m['HR@100']:>8.4f}{m['NDCG@10']:>9.4f}")
    return "\n".join(lines)
