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

from models.batch_scoring import CandidateModel
from models.batch_scoring import rank_batch
from models.collab import FilmGram
from models.collab import gram_of_users
from models.collab import select_films
from models.collab import sequence_of_users
from models.scann_index import exact_search
from models.scoring import CandidateConfig
from models.scoring import Popularity
from models.scoring import rank_candidates
from schemas import WatchEvent
from storage.history import EventBatch

Recommender = Callable[[int, Sequence[WatchEvent], WatchEvent], list[int]]
Lists = Mapping[int, Sequence[tuple]]


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
    ids: np.ndarray,
    vectors: np.ndarray,
    k: int,
    among: set[int] | None = None,
    queries: np.ndarray | None = None,
) -> dict[int, list[tuple[int, float]]]:
    """Exact top-k cosine neighbours of every film (itself excluded), best first.

    ``among`` limits the neighbours to those films; ``queries`` (one row per film) searches with
    other vectors than the films' own (e.g. their co-watch vectors in an audience model's space).
    """
    unit = _unit(vectors)
    search = unit if queries is None else _unit(queries)
    pool = np.arange(len(ids)) if among is None else np.flatnonzero(np.isin(ids, list(among)))
    lists: dict[int, list[tuple[int, float]]] = {}
    if not len(pool):
        return lists
    for start in range(0, len(search), 2048):
        rows, scores = exact_search(unit[pool], search[start : start + 2048], k + 1)
        for offset, (row_ids, row_scores) in enumerate(zip(rows, scores, strict=True)):
            movie_id = int(ids[start + offset])
            found = ids[pool[row_ids]].tolist()
            pairs = [(int(m), float(s)) for m, s in zip(found, row_scores, strict=True)]
            lists[movie_id] = [p for p in pairs if p[0] != movie_id][:k]
    return lists


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class BatchRecommender:
    """Candidates exactly as the nightly job ranks them (:func:`rank_batch`), for every user of
    a split at once, as of each user's held-out watch."""

    model: CandidateModel
    config: CandidateConfig

    def ranked(self, split: Split) -> dict[int, np.ndarray]:
        """Each held-out user's candidate film ids, best first."""
        users = sorted(split.held_out)
        events = [e for u in users for e in sorted(
            split.train[u], key=lambda e: (e.watched_at, e.movie_id))]  # fmt: skip
        batch = EventBatch.of_events(events)
        held = {u: split.held_out[u].watched_at.timestamp() for u in users}
        reference = np.array([held[u] for u in batch.user_id.tolist()], dtype=np.float64)
        out = rank_batch(batch, self.model, self.config, reference, contributors=False)
        starts = np.searchsorted(out.user_id, users, side="left")
        ends = np.searchsorted(out.user_id, users, side="right")
        return {u: out.movie_id[a:b] for u, a, b in zip(users, starts, ends, strict=True)}


def neighbour_recommender(
    lists: Lists, config: CandidateConfig, popularity: Popularity | None = None
) -> BatchRecommender:
    """Candidates exactly as the nightly job ranks them, as of the held-out watch."""
    arrays = [
        (m, np.array([n[0] for n in v], dtype=np.int64), np.array([n[1] for n in v]))
        for m, v in lists.items()
    ]
    return BatchRecommender(CandidateModel.build(arrays, popularity), config)


@dataclasses.dataclass(frozen=True)
class Population:
    """What the evaluation knows of every user's history, in film-sized arrays only: the Gram
    of the modelled films and every film's distinct watchers. The evaluated users (a sample)
    bring their own events; holding out their watches changes these exactly
    (:meth:`after_split`)."""

    gram: FilmGram
    watchers: Mapping[int, int]

    @classmethod
    def of_events(cls, events: Sequence[WatchEvent], max_films: int = 100_000) -> Population:
        """The population of an in-memory history (every user known: benchmarks, tests)."""
        pairs = {(e.user_id, e.movie_id) for e in events}
        watchers = collections.Counter(m for _, m in pairs)
        ids = np.array(sorted(watchers), dtype=np.int64)
        counts = np.array([watchers[m] for m in ids.tolist()])
        films = select_films(ids, counts, 1, max_films)
        users = np.array([e.user_id for e in events], dtype=np.int64)
        movies = np.array([e.movie_id for e in events], dtype=np.int64)
        times = np.array([e.watched_at.timestamp() for e in events], dtype=np.float64)
        gram = FilmGram(films, gram_of_users(films, users, movies),
                        sequence_of_users(films, users, movies, times))  # fmt: skip
        return cls(gram, dict(watchers))

    def after_split(self, split: Split) -> Population:
        """The population once the split's held-out watches leave it (its training part)."""
        users = sorted(split.held_out)

        def watched(events) -> np.ndarray:  # film ids in the order watched
            ordered = sorted(events, key=lambda e: (e.watched_at, e.movie_id))
            return np.array([e.movie_id for e in ordered], np.int64)

        after = [watched(split.train[u]) for u in users]
        before = [watched([*split.train[u], split.held_out[u]]) for u in users]
        held = [split.held_out[u].movie_id for u in users]
        watchers = dict(self.watchers)
        for films, film in zip(after, held, strict=True):
            if film not in films:
                watchers[film] = watchers.get(film, 0) - 1
        return Population(self.gram.with_histories_changed(before, after), watchers)

    def popularity(self, catalogue: set[int]) -> Popularity:
        """Watchers per catalogue film."""
        return Popularity.from_counts({m: c for m, c in self.watchers.items() if c > 0}, catalogue)


def popularity_recommender(popularity: Popularity, k: int) -> Recommender:
    """The most-watched films of the training histories, minus what the user watched."""
    ranked = popularity.ranked

    def recommend(user: int, history: Sequence[WatchEvent], held: WatchEvent) -> list[int]:
        watched = {e.movie_id for e in history}
        return [m for m in ranked if m not in watched][:k]

    return recommend


def genre_vectors(
    films: Sequence[int], genres: Mapping[int, Sequence[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """(film ids, unit multi-hot genre vectors) of the films with at least one genre."""
    names = sorted({g for f in films for g in genres.get(f, ())})
    position = {g: i for i, g in enumerate(names)}
    kept = [f for f in films if genres.get(f)]
    vectors = np.zeros((len(kept), max(len(names), 1)), np.float32)
    for row, film in enumerate(kept):
        for g in genres[film]:
            vectors[row, position[g]] = 1.0
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.array(kept, dtype=np.int64), vectors


def profile_recommender(
    ids: np.ndarray, vectors: np.ndarray, candidates: set[int], k: int
) -> Recommender:
    """Films closest to the user's rating-weighted mean vector (e.g. their genre mix)."""
    row = {int(m): i for i, m in enumerate(ids.tolist())}
    pool = np.array(sorted(m for m in candidates if m in row), dtype=np.int64)
    pool_vectors = vectors[[row[m] for m in pool.tolist()]] if len(pool) else vectors[:0]

    def recommend(user: int, history: Sequence[WatchEvent], held: WatchEvent) -> list[int]:
        seen = [(row[e.movie_id], e.rating) for e in history if e.movie_id in row]
        if not seen or not len(pool):
            return []
        profile = sum(vectors[i] * rating / 5.0 for i, rating in seen)
        scores = pool_vectors @ profile
        watched = {e.movie_id for e in history}
        order = np.lexsort((pool, -np.round(scores, 9)))
        return [int(pool[i]) for i in order if int(pool[i]) not in watched][:k]

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


def per_user_hits(
    split: Split, recommend: Recommender | BatchRecommender
) -> dict[str, np.ndarray]:
    """Per held-out user (in user order): hit@10, hit@100 and the NDCG@10 term."""
    users = sorted(split.held_out)
    hr10, hr100, ndcg = (np.zeros(len(users)) for _ in range(3))
    batch = recommend.ranked(split) if isinstance(recommend, BatchRecommender) else None
    for row, user in enumerate(users):
        held = split.held_out[user]
        if batch is not None:
            ranked = batch[user].tolist()
        else:
            ranked = recommend(user, split.train[user], held)
        if held.movie_id in ranked:
            position = ranked.index(held.movie_id) + 1
            hr100[row] = position <= 100
            hr10[row] = position <= 10
            ndcg[row] = 1.0 / math.log2(position + 1) if position <= 10 else 0.0
    return {"HR@10": hr10, "HR@100": hr100, "NDCG@10": ndcg}


def hit_metrics(split: Split, recommend: Recommender | BatchRecommender) -> dict[str, float]:
    """HR@10, HR@100 and NDCG@10 of a recommender over the held-out films."""
    hits = per_user_hits(split, recommend)
    return {name: float(values.mean()) if len(values) else 0.0 for name, values in hits.items()}


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000
) -> dict[str, float]:
    """mean(a) - mean(b) over paired per-user values, with a bootstrap 95% interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) != len(b) or not len(a):
        raise ValueError("paired bootstrap needs two equally long, non-empty samples")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high)}


def cold_neighbour_recommender(
    lists: Lists, config: CandidateConfig, popularity: Popularity | None = None
) -> Recommender:
    """Cold start: the nightly scoring over lists that hold only hidden films (``popularity``:
    theirs, estimated from their posters)."""

    def recommend(user: int, history: Sequence[WatchEvent], held: WatchEvent | None) -> list[int]:
        if not history:
            return []
        reference = max(e.watched_at for e in history)
        return [m for m, _, _ in rank_candidates(history, lists, config, reference, popularity)]

    return recommend


def cold_recall(
    visible: Mapping[int, Sequence[WatchEvent]],
    targets: Mapping[int, set[int]],
    recommend: Recommender,
    k: int = 20,
) -> np.ndarray:
    """Per user with hidden watches and a visible history: Recall@k over their hidden films."""
    users = sorted(u for u in targets if visible.get(u))
    recall = np.zeros(len(users))
    for row, user in enumerate(users):
        ranked = recommend(user, visible[user], None)[:k]
        recall[row] = len(targets[user].intersection(ranked)) / len(targets[user])
    return recall


def format_cold_table(results: Mapping[str, float], users: int, hidden: int, k: int) -> str:
    """The cold-start evaluation as a printed table."""
    width = max([46, *(len(name) + 2 for name in results)])
    lines = [
        f"cold start: {hidden} hidden films, {users} users, Recall@{k} over hidden films",
        f"{'method':<{width}}{'Recall@' + str(k):>10}",
    ]
    lines += [f"{name:<{width}}{value:>10.4f}" for name, value in results.items()]
    return "\n".join(lines)


def format_table(results: Mapping[str, Mapping[str, float]], users: int) -> str:
    """The evaluation as a printed table."""
    width = max([46, *(len(name) + 2 for name in results)])
    lines = [
        f"leave-last-out over {users} users",
        f"{'method':<{width}}{'HR@10':>8}{'HR@100':>8}{'NDCG@10':>9}",
    ]
    for name, m in results.items():
        lines.append(
            f"{name:<{width}}{m['HR@10']:>8.4f}{m['HR@100']:>8.4f}{m['NDCG@10']:>9.4f}"
        )
    return "\n".join(lines)
