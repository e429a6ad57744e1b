"""A seeded, MovieLens-25M-shaped synthetic watch history, written as a ratings CSV.

Shape (what the nightly path's cost depends on), each drawn with vectorised NumPy from one seed:

* users = events / 154 (ML-25M: 25,000,095 ratings by 162,541 users); films by size: 10k at 1M
  events, 30k at 5M, 60k at 25M (log-log interpolated between, extrapolated beyond);
* film popularity Zipf-like, weight (rank + films / 400) ** -a over a shuffled popularity rank,
  with ``a`` calibrated so that the most watched film reaches about half the users (ML-25M: 81k
  of 162k), through Rosen's approximation of successive sampling; the offset makes the film
  Gini about ML-25M's 0.942 at 25M events (LensKit's figure);
* user activity 20 + log-normal (ML-25M: at least 20 ratings a user; LensKit's fit of its
  activity: shape 1.589, scale 39.9), scaled so the events add up exactly, at most half the
  films a user (ML-25M's most active user: 32,202 of 59,047);
* each user watches a film at most once: the first distinct films of an i.i.d. popularity draw
  (successive sampling), Gumbel top-k for the heaviest users;
* ratings 0.5 to 5 in half stars with ML-25M's marginal frequencies, quantile-mapped from film
  quality (popular films rate higher) + user bias + noise;
* timestamps over five years (2015-2019): each user's watches spread uniformly over an active
  span of their own (log-normal, longer for heavier users).

Rows are sorted by userId then movieId, as in ML's ratings.csv.

    python -m benchmarks.history_gen --events 1000000 --output ratings.csv [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from storage.history import RATINGS_HEADER

EVENTS_PER_USER = 154.0
FILM_ANCHORS = ((1_000_000, 10_000), (5_000_000, 30_000), (25_000_000, 60_000))
MIN_FILMS_PER_USER = 20
ACTIVITY_MEDIAN_EXTRA = 39.9  # LensKit's log-normal fit of ML-25M user activity: scale 39.9,
ACTIVITY_SIGMA = 1.589  # shape 1.589 over the minimum of 20 (mean about 160, p99 about 1,600)
MAX_SHARE_OF_FILMS = 0.5  # ML-25M's most active user rated 32,202 of 59,047 films
ZIPF_OFFSET_PER_FILM = 1 / 400  # offset films / 400: ML-25M's film Gini (0.942) at 60k films
MIN_ZIPF_OFFSET = 10.0
TOP_FILM_REACH = 0.5
HEAVY_SHARE_OF_FILMS = 0.05  # users asking more than this share of films: Gumbel top-k
RATING_LABELS = ("0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0")
ML25M_RATING_COUNTS = (
    393_068, 776_815, 399_490, 1_640_868, 1_262_797,
    4_896_928, 3_177_318, 6_639_798, 2_200_539, 3_612_474,
)  # fmt: skip
FILM_QUALITY_SD = 0.6
POPULARITY_QUALITY = 0.25
USER_BIAS_SD = 0.45
RATING_NOISE_SD = 0.85
WINDOW_START = 1_420_070_400  # 2015-01-01T00:00:00Z
WINDOW_SECONDS = 5 * 365 * 86_400 + 86_400  # five years, one leap day
SPAN_MEDIAN_DAYS = 30.0
SPAN_SIGMA = 1.8
SPAN_ACTIVITY_POWER = 0.5
MIN_SPAN_SECONDS = 3_600
CSV_BATCH_ROWS = 1 << 16


@dataclasses.dataclass(frozen=True)
class HistoryShape:
    """How many users, films and events a generated history has."""

    users: int
    films: int
    events: int


@dataclasses.dataclass(frozen=True)
class WatchHistory:
    """One event a row (sorted by user, then film) and the catalogue of film ids."""

    user_ids: np.ndarray
    movie_ids: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    film_ids: np.ndarray

    @property
    def events(self) -> int:
        """Number of watch events."""
        return int(self.user_ids.size)


def films_for(events: int) -> int:
    """Catalogue size for a history of ``events``: ML-like anchors, log-log interpolated."""
    xs = np.log([a for a, _ in FILM_ANCHORS])
    ys = np.log([b for _, b in FILM_ANCHORS])
    x = math.log(events)
    i = 0 if x <= xs[1] else 1
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return max(MIN_FILMS_PER_USER * 4, round(math.exp(ys[i] + slope * (x - xs[i]))))


def shape_for(events: int, users: int | None = None, films: int | None = None) -> HistoryShape:
    """The default shape for ``events`` (users = events / 154), or the one given."""
    users = users or max(1, round(events / EVENTS_PER_USER))
    return HistoryShape(users=users, films=films or films_for(events), events=events)


def popularity_weights(films: int, exponent: float) -> np.ndarray:
    """Normalised weights of popularity ranks 0..films-1: (rank + 1 + offset) ** -exponent, the
    offset growing with the catalogue (films / 400, at least 10)."""
    offset = max(MIN_ZIPF_OFFSET, films * ZIPF_OFFSET_PER_FILM)
    w = (np.arange(1, films + 1, dtype=np.float64) + offset) ** -exponent
    return w / w.sum()


def predicted_top_reach(p: np.ndarray, activity: np.ndarray) -> float:
    """Expected share of users whose films include rank 0, under Rosen's approximation of
    successive sampling (inclusion 1 - exp(-p t), with t making the inclusions add up to k)."""
    t_max = 1.0
    while np.sum(-np.expm1(-p * t_max)) < activity.max():
        t_max *= 2.0
    grid = np.geomspace(1e-3, t_max, 160)
    covered = np.array([np.sum(-np.expm1(-p * t)) for t in grid])
    values, counts = np.unique(activity, return_counts=True)
    t = np.interp(values, covered, grid)
    return float(np.sum(-np.expm1(-p[0] * t) * counts) / counts.sum())


def calibrate_exponent(films: int, activity: np.ndarray, reach: float = TOP_FILM_REACH) -> float:
    """The Zipf exponent whose most popular film is predicted to reach ``reach`` of the users."""
    low, high = 0.2, 8.0
    for _ in range(30):
        mid = 0.5 * (low + high)
        if predicted_top_reach(popularity_weights(films, mid), activity) < reach:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def user_activity(rng: np.random.Generator, shape: HistoryShape) -> np.ndarray:
    """Films per user: 20 + log-normal, capped at half the films, summing exactly to events."""
    cap = max(MIN_FILMS_PER_USER, int(MAX_SHARE_OF_FILMS * shape.films))
    if not shape.users * MIN_FILMS_PER_USER <= shape.events <= shape.users * cap:
        raise ValueError(
            f"{shape.events} events cannot give {shape.users} users {MIN_FILMS_PER_USER} to "
            f"{cap} films each; choose another --events"
        )
    raw = ACTIVITY_MEDIAN_EXTRA * np.exp(ACTIVITY_SIGMA * rng.standard_normal(shape.users))

    def total(scale: float) -> np.ndarray:
        return np.minimum(MIN_FILMS_PER_USER + scale * raw, cap)

    low, high = 0.0, 1.0
    while total(high).sum() < shape.events:
        high *= 2.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if total(mid).sum() < shape.events else (low, mid)
    wanted = total(high)
    activity = np.floor(wanted).astype(np.int64)
    short = shape.events - int(activity.sum())
    if short > 0:
        room = np.flatnonzero(activity < cap)
        order = room[np.argsort(-(wanted[room] - activity[room]), kind="stable")]
        activity[order[:short]] += 1
    elif short < 0:
        order = np.argsort(-activity, kind="stable")
        activity[order[:-short]] -= 1
    return activity


def _sample_light(rng: np.random.Generator, need: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Sorted keys user * films + rank: each user's first ``need`` distinct ranks of an i.i.d.
    draw from ``p`` (successive sampling without replacement), in rounds of fresh draws."""
    films = p.size
    cdf = np.cumsum(p)
    need = need.copy()
    taken = np.empty(0, dtype=np.int64)
    factor = 1.3
    while True:
        users = np.flatnonzero(need)
        if users.size == 0:
            return taken
        draws = np.ceil(need[users] * factor).astype(np.int64) + 2
        user = np.repeat(users.astype(np.int64), draws)
        rank = np.searchsorted(cdf, rng.random(user.size) * cdf[-1], side="right")
        key = user * films + np.minimum(rank, films - 1)
        if taken.size:
            at = np.minimum(np.searchsorted(taken, key), taken.size - 1)
            key = key[taken[at] != key]
        _, first = np.unique(key, return_index=True)
        key = key[np.sort(first)]  # distinct, in draw order, grouped by ascending user
        user = key // films
        within = np.arange(key.size) - np.searchsorted(user, user, side="left")
        keep = within < need[user]
        need -= np.bincount(user[keep], minlength=need.size)
        taken = np.sort(np.concatenate([taken, key[keep]]))
        factor *= 2.0


def _sample_heavy(
    rng: np.random.Generator, users: np.ndarray, activity: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Keys user * films + rank for the heaviest users: Gumbel top-k, one user at a time."""
    films = p.size
    log_p = np.log(p)
    parts = []
    for user in users.tolist():
        k = int(activity[user])
        keys = log_p + rng.gumbel(size=films)
        ranks = np.argpartition(-keys, k - 1)[:k]
        parts.append(user * films + np.sort(ranks).astype(np.int64))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _ratings(
    rng: np.random.Generator, user: np.ndarray, rank: np.ndarray, shape: HistoryShape
) -> np.ndarray:
    """Half-star ratings with ML-25M's marginal frequencies, quantile-mapped from film quality
    (popular films rate higher), user bias and noise."""
    log_rank = -np.log1p(np.arange(shape.films, dtype=np.float64))
    popularity = (log_rank - log_rank.mean()) / log_rank.std()
    quality = FILM_QUALITY_SD * rng.standard_normal(shape.films) + POPULARITY_QUALITY * popularity
    bias = USER_BIAS_SD * rng.standard_normal(shape.users)
    latent = quality[rank] + bias[user] + RATING_NOISE_SD * rng.standard_normal(user.size)
    share = np.cumsum(ML25M_RATING_COUNTS[:-1]) / sum(ML25M_RATING_COUNTS)
    cuts = np.quantile(latent, share)
    level = np.searchsorted(cuts, latent, side="right")
    return ((level + 1) * 0.5).astype(np.float32)


def _timestamps(rng: np.random.Generator, user: np.ndarray, activity: np.ndarray) -> np.ndarray:
    """Unix seconds: each user's watches uniform over an active span of their own (log-normal,
    longer for heavier users) placed inside the five-year window."""
    median = np.median(activity)
    days = SPAN_MEDIAN_DAYS * (activity / median) ** SPAN_ACTIVITY_POWER
    span = np.clip(
        days * 86_400 * np.exp(SPAN_SIGMA * rng.standard_normal(activity.size)),
        MIN_SPAN_SECONDS, WINDOW_SECONDS - 1,
    )  # fmt: skip
    start = WINDOW_START + rng.random(activity.size) * (WINDOW_SECONDS - span)
    when = start[user] + rng.random(user.size) * span[user]
    return when.astype(np.int64)


def generate_history(
    events: int, seed: int = 0, users: int | None = None, films: int | None = None
) -> WatchHistory:
    """A MovieLens-25M-shaped history of exactly ``events`` watches, the same for one seed."""
    shape = shape_for(events, users, films)
    rng = np.random.default_rng([seed, shape.events, shape.users, shape.films])
    activity = user_activity(rng, shape)
    p = popularity_weights(shape.films, calibrate_exponent(shape.films, activity))
    heavy = activity > max(MIN_FILMS_PER_USER, HEAVY_SHARE_OF_FILMS * shape.films)
    light_need = np.where(heavy, 0, activity)
    keys = np.concatenate([
        _sample_light(rng, light_need, p),
        _sample_heavy(rng, np.flatnonzero(heavy), activity, p),
    ])  # fmt: skip
    user, rank = np.divmod(keys, shape.films)
    movie_of_rank = rng.permutation(shape.films).astype(np.int64) + 1
    movie = movie_of_rank[rank]
    order = np.argsort(user * shape.films + movie, kind="stable")
    user, rank, movie = user[order], rank[order], movie[order]
    return WatchHistory(
        user_ids=user + 1,
        movie_ids=movie,
        ratings=_ratings(rng, user, rank, shape),
        timestamps=_timestamps(rng, user, activity),
        film_ids=np.arange(1, shape.films + 1, dtype=np.int64),
    )


def write_history_csv(history: WatchHistory, path: str) -> None:
    """Write the history as a MovieLens ratings CSV (userId,movieId,rating,timestamp)."""
    labels = pa.array(RATING_LABELS)
    level = np.rint(history.ratings * 2).astype(np.int32) - 1
    table = pa.table(
        {
            RATINGS_HEADER[0]: pa.array(history.user_ids),
            RATINGS_HEADER[1]: pa.array(history.movie_ids),
            RATINGS_HEADER[2]: pc.take(labels, pa.array(level)),
            RATINGS_HEADER[3]: pa.array(history.timestamps),
        }
    )
    options = pacsv.WriteOptions(
        batch_size=CSV_BATCH_ROWS, quoting_style="none", quoting_header="none"
    )
    pacsv.write_csv(table, path, options)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal; ML-25M's films: 0.942)."""
    x = np.sort(counts.astype(np.float64))
    n = x.size
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * x.sum()) - (n + 1) / n)


def history_stats(history: WatchHistory) -> dict:
    """Users, films, events, the top film's share of users, the top 1% films' share of events
    and user activity percentiles."""
    per_user = np.bincount(history.user_ids)
    per_user = per_user[per_user > 0]
    per_film = np.bincount(history.movie_ids)
    per_film = np.sort(per_film[per_film > 0])[::-1]
    top = max(1, math.ceil(0.01 * per_film.size))
    p50, p90, p99 = np.percentile(per_user, [50, 90, 99])
    return {
        "users": int(per_user.size),
        "films": int(per_film.size),
        "catalogue_films": int(history.film_ids.size),
        "events": history.events,
        "top_film_user_share": float(per_film[0] / per_user.size),
        "top_1pct_films_event_share": float(per_film[:top].sum() / history.events),
        "film_gini": gini(per_film),
        "activity_p50": float(p50),
        "activity_p90": float(p90),
        "activity_p99": float(p99),
        "activity_max": int(per_user.max()),
        "activity_min": int(per_user.min()),
        "mean_rating": float(history.ratings.mean()),
        "first_timestamp": int(history.timestamps.min()),
        "last_timestamp": int(history.timestamps.max()),
    }


def format_stats(stats: dict) -> str:
    """The shape statistics in one line."""
    return (
        f"users {stats['users']:,}, films {stats['films']:,} watched of "
        f"{stats['catalogue_films']:,}, events {stats['events']:,}; top film reaches "
        f"{stats['top_film_user_share']:.1%} of users; top 1% films hold "
        f"{stats['top_1pct_films_event_share']:.1%} of events (film Gini "
        f"{stats['film_gini']:.3f}); films a user p50 "
        f"{stats['activity_p50']:.0f} / p90 {stats['activity_p90']:.0f} / p99 "
        f"{stats['activity_p99']:.0f} / max {stats['activity_max']:,} (min "
        f"{stats['activity_min']}); mean rating {stats['mean_rating']:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Generate one history, write it as CSV and print its shape and the seconds taken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="Path of the ratings CSV to write.")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    history = generate_history(args.events, args.seed)
    generated = time.perf_counter() - start
    write_history_csv(history, args.output)
    print(format_stats(history_stats(history)))
    print(f"generated in {generated:.1f} s, written in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
