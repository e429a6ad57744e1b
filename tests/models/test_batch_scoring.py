"""The at-scale ranking (a bucket of users at once) gives exactly what rank_candidates gives."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from models import batch_scoring as bs
from models.scoring import CandidateConfig
from models.scoring import rank_candidates
from models.scoring import reference_time
from schemas import WatchEvent
from storage.history import EventBatch

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def world(seed: int = 1):
    """Users with repeat watches, films without a list, and lists with unknown films."""
    rng = np.random.default_rng(seed)
    events = []
    for user in range(1, 60):
        for _ in range(rng.integers(2, 30)):
            when = T0 + datetime.timedelta(days=int(rng.integers(0, 700)),
                                           seconds=int(rng.integers(0, 1000)))  # fmt: skip
            events.append(WatchEvent(user_id=user, movie_id=int(rng.integers(1, 80)),
                                     rating=float(rng.integers(1, 11)) / 2, watched_at=when))
    lists = {}
    for film in range(1, 90):
        if film % 7:
            ids = rng.choice(np.arange(1, 100), size=15, replace=False)
            lists[film] = [(int(i), float(np.round(rng.random(), 3))) for i in ids if i != film]
    counts = {film: int(rng.integers(0, 40)) for film in range(1, 100)}
    return events, lists, counts


@pytest.mark.parametrize("with_popularity", [False, True])
@pytest.mark.parametrize(
    "config",
    [CandidateConfig(top_k=20, min_rating=2.0),
     CandidateConfig(top_k=20, recency_events=5, popularity_weight=0.3, half_life_days=100)],
)  # fmt: skip
def test_a_batch_ranks_every_user_as_rank_candidates_does(config, with_popularity):
    events, lists, counts = world()
    popularity = bs.popularity_of(counts, lists) if with_popularity else None
    arrays = [(m, np.array([n for n, _ in v]), np.array([s for _, s in v]))
              for m, v in lists.items()]  # fmt: skip
    model = bs.CandidateModel.build(arrays, popularity)
    reference = reference_time(datetime.date(2026, 1, 1))
    ordered = sorted(events, key=lambda e: (e.user_id, e.watched_at, e.movie_id))
    out = bs.rank_batch(EventBatch.of_events(ordered), model, config, reference.timestamp())
    users = sorted({e.user_id for e in events})
    assert out.users == len(users) and out.events == len(events)
    assert out.events_without_list == sum(e.movie_id not in lists for e in events) > 0
    for user in users:
        mine = [e for e in events if e.user_id == user]
        own = {m: lists[m] for m in {e.movie_id for e in mine} if m in lists}
        expected = rank_candidates(mine, own, config, reference, popularity)
        rows = np.flatnonzero(out.user_id == user)
        assert out.movie_id[rows].tolist() == [m for m, _, _ in expected]
        assert out.score[rows].tolist() == [s for _, s, _ in expected]
        assert out.rank[rows].tolist() == list(range(1, len(expected) + 1))
        assert [tuple(out.contributors[i].tolist()) for i in rows] == [c for _, _, c in expected]
    backfilled = sum(1 for c in out.contributors if not len(c))
    assert out.backfill_rows == backfilled and (backfilled > 0) == with_popularity


def test_merged_model_ranks_as_the_merged_lists_do():
    from models.scoring import merge_neighbors

    events, cowatch, counts = world(2)
    rng = np.random.default_rng(5)
    poster = {}
    for film in range(1, 110):
        ids = rng.choice(np.arange(1, 110), size=12, replace=False)
        poster[film] = [(int(i), float(np.round(rng.random() - 0.2, 3))) for i in ids if i != film]
    popularity = bs.popularity_of(counts, cowatch)
    config = CandidateConfig(top_k=30, recency_events=20, popularity_weight=0.2)
    reference = reference_time(datetime.date(2026, 1, 1))
    ordered = sorted(events, key=lambda e: (e.user_id, e.watched_at, e.movie_id))
    for weight in (0.0, 0.3):
        merged = {f: merge_neighbors(cowatch.get(f, ()), poster.get(f, ()), weight, 10)
                  for f in sorted(set(cowatch) | set(poster))}  # fmt: skip
        model = bs.merged_model(cowatch, poster, weight, 10, popularity)
        out = bs.rank_batch(EventBatch.of_events(ordered), model, config, reference.timestamp())
        for user in sorted({e.user_id for e in events}):
            mine = [e for e in events if e.user_id == user]
            expected = rank_candidates(mine, merged, config, reference, popularity)
            rows = np.flatnonzero(out.user_id == user)
            assert out.movie_id[rows].tolist() == [m for m, _, _ in expected]
            assert np.allclose(out.score[rows], [s for _, s, _ in expected], atol=1e-9)
