"""Candidates on real data: co-watch, posters, popularity and the tuned hybrid, warm and cold start.

In one run, on this machine, with ``../shared/data`` (or ``$POSTERS_SHARED_DATA``): every shared
poster of a MovieLens film (set_a, then set_b), the ml-latest-small ratings as watch history,
SqueezeNet v1.1 with its ImageNet weights as the backbone.

* **warm** (leave-last-out, :mod:`models.candidate_eval`): HR@10, HR@100, NDCG@10 of random,
  popularity, item-item co-watch kNN, the genre profile, poster kNN of ImageNet features, of the
  genre-trained model and of the audience model, and the hybrid whose blend is tuned on a
  time-ordered validation split of the training histories (:mod:`models.blend`), beside its
  co-watch half alone and the blend with its poster weight set to 0; then the validation HR@100
  of the blend tuned with each co-watch model (how the default was chosen). Co-watch,
  popularity and the audience model's targets come from the training histories only.
* **collaborative peers** (:mod:`benchmarks.collab_peers`), in the warm table: EASE, RP3beta and
  iALS (implicit, run in the peer env ``.venv-bench``: ``make bench-peers``; skipped, with the
  reason printed, when that env is absent), each with binary user rows and with the hybrid's
  recency weights, every hyper-parameter tuned on the blend's validation split; the variant
  chosen on validation is marked and is the one in the RESULT line and the intervals.
* **cold start** (:mod:`models.cold_start`): every watch of 20% of the films (seeded) is hidden;
  co-watch vectors and the audience model are learned from the visible history only; each user's
  hidden films are ranked among all hidden films, Recall@20. Three hold-outs (``--holdouts``,
  seeds ``--seed``, +1, +2; each audience model trained with its hold-out's seed): one hold-out's
  figures swing by several hundredths with the films it hides and the model's seed, so the
  figures to judge are those over all of them (the ``all`` column and the RESULT line: every
  (hold-out, user) pair counts once).
* paired bootstrap 95% intervals of the differences the targets name (among them the hybrid
  minus itself with poster weight 0: the posters' warm share; and the hybrid minus each peer),
  resampling the (hold-out, user) pairs for cold start.

The poster models are trained by :class:`models.training.PosterTrainer` (the training stage's
code) on cached pooled SqueezeNet features: the warm-up phase (frozen backbone, linear embedding),
``genres`` with the balanced genre cross-entropy, ``audience`` with the cosine to the co-watch
vector; ``audience + genre inputs`` appends the catalog genres to the features.

    python -m benchmarks.candidates_real [--max_films N] [--warm_only]
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime
import logging
import os
import pathlib
import time

import numpy as np
import scipy.stats
import tensorflow as tf

from benchmarks import collab_peers
from models import blend as blend_lib
from models import candidate_eval as ev
from models import cowatch
from models import features
from models import offline_eval
from models.cold_start import Holdout
from models.cold_start import cold_split
from models.collab import COLLAB_MODELS
from models.collab import CollabModel
from models.image_ops import decode_and_resize_numpy
from models.scoring import CandidateConfig
from models.scoring import Popularity
from models.training import PosterTrainer
from models.training import SplitData
from models.training import TrainConfig
from models.training import score_spread
from schemas import WatchEvent

WEIGHTS = "weights/squeezenet_v1.1_imagenet_notop_keras1.h5"
POSTER_SETS = ("set_a", "set_b")
NO_GENRES = "(no genres listed)"
COLD_FRACTION = 0.2
COLD_K = 20
NEIGHBORS_K = 200
GENRE_INPUT_SCALE = 3.0
_LOG = logging.getLogger("candidates_real")


def shared_data_dir() -> pathlib.Path:
    """The real-data folder: $POSTERS_SHARED_DATA, default ../shared/data beside the repo."""
    default = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return pathlib.Path(os.environ.get("POSTERS_SHARED_DATA", default))


def load_posters(data: pathlib.Path, limit: int | None) -> tuple[dict, dict]:
    """(movie id -> poster path, movie id -> genres) of the shared posters of MovieLens films."""
    paths, genres = {}, {}
    for name in POSTER_SETS:
        folder = data / "posters" / name
        with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if not row["movieId"] or int(row["movieId"]) in paths:
                    continue
                movie = int(row["movieId"])
                paths[movie] = folder / row["poster_file"]
                genres[movie] = tuple(g for g in row["genres"].split("|") if g and g != NO_GENRES)
    keep = sorted(paths)[:limit] if limit else sorted(paths)
    return {m: paths[m] for m in keep}, {m: genres[m] for m in keep}


def load_events(data: pathlib.Path) -> list[WatchEvent]:
    """The ml-latest-small ratings as watch events."""
    path = data / "movielens" / "ml-latest-small" / "ratings.csv"
    events = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            events.append(WatchEvent(
                user_id=int(row["userId"]), movie_id=int(row["movieId"]),
                rating=float(row["rating"]),
                watched_at=datetime.datetime.fromtimestamp(int(row["timestamp"]), datetime.UTC),
            ))  # fmt: skip
    return events


@dataclasses.dataclass
class PosterFeatures:
    """Pooled SqueezeNet features of every poster (and of the flipped posters), genre labels."""

    ids: np.ndarray
    pooled: np.ndarray
    flipped: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    genre_inputs: np.ndarray


def extract_features(trainer: PosterTrainer, paths: dict, genres: dict) -> PosterFeatures:
    """One pass of the frozen backbone over every poster (and its mirror image)."""
    ids = np.array(sorted(paths), dtype=np.int64)
    classes = features.class_names(trainer.config.genre_set)
    pooled, flipped, pixels = [], [], []
    for start in range(0, len(ids), 64):
        chunk = ids[start : start + 64]
        data = [pathlib.Path(paths[m]).read_bytes() for m in chunk]
        size = trainer.input_size
        images = tf.constant(np.stack([decode_and_resize_numpy(b, size) for b in data]))
        small = tf.constant(np.stack([decode_and_resize_numpy(b, (64, 64)) for b in data]))
        pooled.append(np.asarray(trainer.frozen_features(trainer.trunk(images, training=False))))
        mirrored = trainer.trunk(tf.image.flip_left_right(images), training=False)
        flipped.append(np.asarray(trainer.frozen_features(mirrored)))
        pixels.append(np.asarray(trainer.pixels_model(small, training=False)))
    labels = np.array(
        [[c in features.genre_classes(genres[m], trainer.config.genre_set) for c in classes]
         for m in ids], np.float32,
    )  # fmt: skip
    all_genres = sorted({g for m in ids for g in genres[m]})
    genre_inputs = np.array([[g in genres[m] for g in all_genres] for m in ids], np.float32)
    buckets = tf.strings.to_hash_bucket_fast(
        tf.strings.as_string(tf.constant(ids)), features.SPLIT_BUCKETS
    ).numpy()
    split = np.array([features.split_of_bucket(int(b)) for b in buckets])
    return PosterFeatures(ids, np.concatenate(pooled), np.concatenate(flipped),
                          np.concatenate(pixels), labels, split, genre_inputs)  # fmt: skip


def split_data(
    f: PosterFeatures, rows: np.ndarray, targets: np.ndarray | None, genre_inputs: bool
) -> SplitData:
    """A SplitData of cached pooled features (no trunk maps: the warm-up phase needs none)."""
    extra = GENRE_INPUT_SCALE * f.genre_inputs[rows] if genre_inputs else None
    pooled = f.pooled[rows] if extra is None else np.hstack([f.pooled[rows], extra])
    flipped = f.flipped[rows] if extra is None else np.hstack([f.flipped[rows], extra])
    return SplitData(
        movie_ids=f.ids[rows], labels=f.labels[rows], trunk=np.zeros((len(rows), 0), np.float32),
        pooled=pooled, pixels=f.pixels[rows], flipped_pooled=flipped,
        targets=targets,
    )  # fmt: skip


def train_embedding(
    config: TrainConfig,
    f: PosterFeatures,
    targets: dict[int, np.ndarray] | None = None,
    genre_inputs: bool = False,
) -> np.ndarray:
    """Train a poster model's warm-up phase; return unit embeddings of every poster."""
    if targets is not None:
        dim = len(next(iter(targets.values())))
        config = dataclasses.replace(config, embedding_dim=dim)
    trainer = PosterTrainer(config, f.labels.shape[1])
    parts = {}
    for index in range(len(features.SPLITS)):
        rows = np.flatnonzero(f.split == index)
        if targets is not None:
            rows = np.array([r for r in rows if int(f.ids[r]) in targets], dtype=np.int64)
        else:
            rows = rows[f.labels[rows].sum(axis=1) > 0]
        stacked = np.stack([targets[int(f.ids[r])] for r in rows]) if targets else None
        parts[index] = split_data(f, rows, stacked, genre_inputs)
    train, validation = parts[features.TRAIN], parts[features.VALIDATION]
    trainer.build(train)
    trainer.warm_up(train, validation)
    everything = split_data(f, np.arange(len(f.ids)), None, genre_inputs)
    return trainer.pooled_embeddings(everything.pooled)


def cowatch_targets(events: list[WatchEvent], catalogue: set[int]) -> dict[int, np.ndarray]:
    """Co-watch vectors of the catalogue films, learned from these events only."""
    matrix = cowatch.history_matrix(events)
    ids, vectors = cowatch.cowatch_vectors(matrix, cowatch.CowatchConfig())
    return {int(m): v for m, v in zip(ids.tolist(), vectors, strict=True) if int(m) in catalogue}


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def objective_config(objective: str, seed: int) -> TrainConfig:
    """The warm-up phase alone on cached features, with the objective's own l2 (``l2=None``:
    TrainConfig resolves it per objective)."""
    return TrainConfig(
        weights=None, unfreeze_blocks=0, metric_epochs=0, seed=seed, objective=objective, l2=None
    )


def embeddings_for(events, f, seed) -> dict[str, dict[str, np.ndarray]]:
    """Warm poster vectors per method (audience learned from the leave-last-out training part)
    and the genre-trained model (no watch history: the same warm and cold)."""
    catalogue = set(f.ids.tolist())
    genre_model = train_embedding(objective_config("genres", seed), f)
    audience = objective_config("audience", seed)
    split = ev.leave_last_out(events, catalogue)
    warm_targets = cowatch_targets([e for h in split.train.values() for e in h], catalogue)
    return {
        "warm_targets": warm_targets,
        "warm": {
            "ImageNet": unit(f.pooled),
            "genre-trained": genre_model,
            "audience": train_embedding(audience, f, warm_targets),
        },
    }


def cold_embeddings(events, f, genre_model, seed) -> tuple[dict, dict[int, np.ndarray]]:
    """One hold-out (``seed``): poster vectors per method, the audience models learned from the
    visible history only (model seed = hold-out seed), and the visible co-watch vectors."""
    catalogue = set(f.ids.tolist())
    cold = cold_split(events, Holdout(COLD_FRACTION, seed).hidden(catalogue))
    cold_targets = cowatch_targets(cold.visible, catalogue)
    leaked = set(cold_targets) & cold.hidden_films
    if leaked:
        raise AssertionError(f"{len(leaked)} hidden films have co-watch targets")
    audience = objective_config("audience", seed)
    vectors = {
        "ImageNet": unit(f.pooled),
        "genre-trained": genre_model,
        "audience": train_embedding(audience, f, cold_targets),
        "audience + genre inputs": train_embedding(audience, f, cold_targets, True),
    }
    return {name: (f.ids, v) for name, v in vectors.items()}, cold_targets


def cold_run(
    events, f, genres, genre_model, config, seed, ceiling=False
) -> offline_eval.ColdResult:
    """The cold-start evaluation of one hold-out, the genre-input model's rows added
    (``ceiling``: also print its popularity ceiling)."""
    catalogue = set(f.ids.tolist())
    posters, targets = cold_embeddings(events, f, genre_model, seed)
    holdout = Holdout(COLD_FRACTION, seed)
    cold = offline_eval.cold_evaluation(
        events, catalogue, holdout, genres, posters, "audience", config, targets, NEIGHBORS_K,
        seed, COLD_K,
    )  # fmt: skip
    with_genres = offline_eval.cold_evaluation(
        events, catalogue, holdout, {},
        {"audience + genre inputs": posters["audience + genre inputs"]},
        "audience + genre inputs", config, targets, NEIGHBORS_K, seed, COLD_K,
    )  # fmt: skip
    for name in (offline_eval.HYBRID_COLD, offline_eval.HYBRID_COLD_POP):
        cold.recall[name + " + genre inputs"] = with_genres.recall[name]
    print(f"hold-out {seed}: {cold.hidden_films} hidden films; poster-estimated popularity weight "
          f"chosen on its validation hold-out {cold.popularity_weight} (genre inputs: "
          f"{with_genres.popularity_weight})")  # fmt: skip
    if ceiling:
        print_popularity_ceiling(events, catalogue, posters, targets, seed)
    return cold


def pooled(runs: list[offline_eval.ColdResult]) -> offline_eval.ColdResult:
    """The hold-outs' per-user Recall@k side by side, (hold-out, user) as the unit: the mean is
    the mean over hold-outs weighted by their users, and bootstrap intervals resample both."""
    names = list(runs[0].recall)
    recall = {n: np.concatenate([r.recall[n] for r in runs]) for n in names}
    return offline_eval.ColdResult(sum(r.hidden_films for r in runs), COLD_K, recall)


def format_holdouts(runs: list[offline_eval.ColdResult], seeds: list[int]) -> str:
    """Recall@k per method and hold-out, and over all hold-outs."""
    every = pooled(runs).recall
    names = list(every)
    width = max(len(n) for n in names) + 2
    all_users = len(next(iter(every.values())))
    head = "".join(f"{'hold-out ' + str(s):>12}" for s in seeds)
    lines = [
        f"cold start, Recall@{COLD_K} over each hold-out's hidden films "
        f"({', '.join(str(r.hidden_films) for r in runs)} hidden films; {all_users} user rows)",
        f"{'method':<{width}}{head}{'all':>10}",
    ]
    for n in names:
        row = "".join(f"{r.recall[n].mean():>12.4f}" for r in runs)
        lines.append(f"{n:<{width}}{row}{every[n].mean():>10.4f}")
    return "\n".join(lines)


def print_popularity_ceiling(events, catalogue, posters, queries, seed) -> None:
    """What popularity is worth cold, and how well the posters predict it.

    Ranking the hidden films by their true watcher counts reads the hidden history, so it is a
    ceiling, not a method; the rank correlation (Spearman) of the poster-estimated counts with
    the true ones says how much of it a poster (with or without the catalog genres) recovers.
    """
    cold = cold_split(events, Holdout(COLD_FRACTION, seed).hidden(catalogue))
    hidden = set(cold.hidden_films)
    order = sorted(hidden)
    true = collections.Counter(m for _, m in {(e.user_id, e.movie_id) for e in events})
    visible = collections.defaultdict(list)
    for e in cold.visible:
        visible[e.user_id].append(e)
    oracle = Popularity.from_counts({m: true[m] for m in order})
    ranked = CandidateConfig(top_k=COLD_K)
    print("cold start, ceiling: hidden films ranked by their TRUE watcher counts (reads the hidden")
    print("history: not a method) and how well the poster estimate recovers them")
    alone = ev.cold_recall(visible, cold.targets, lambda u, h, x: list(oracle.ranked), COLD_K)
    print(f"  {'true popularity alone':<62}Recall@20 {alone.mean():.4f}")
    seen = collections.Counter(m for _, m in {(e.user_id, e.movie_id) for e in cold.visible})
    for name in ("audience", "audience + genre inputs"):
        lists, estimate = offline_eval.cold_hybrid_inputs(
            seen, hidden, posters[name], queries, NEIGHBORS_K
        )
        rho = spearman([estimate.score.get(m, 0.0) for m in order], [true[m] for m in order])
        for weight in (1.0, 3.0):
            config = dataclasses.replace(ranked, popularity_weight=weight)
            recall = ev.cold_recall(
                visible, cold.targets, ev.cold_neighbour_recommender(lists, config, oracle), COLD_K
            )
            label = f"{name}: hybrid + true popularity, weight {weight:g}"
            print(f"  {label:<62}Recall@20 {recall.mean():.4f}")
        label = f"{name}: estimated vs true counts"
        print(f"  {label:<62}Spearman  {rho:.3f}")


def print_model_choice(events, catalogue, poster, queries, config, warm) -> None:
    """Validation HR@100 of the blend tuned with each co-watch model (the time-ordered validation
    split the blend is tuned on; the test watches are never seen): how the default
    ``--cowatch_model`` was chosen."""
    train = [e for h in ev.leave_last_out(events, catalogue).train.values() for e in h]
    chosen = CollabModel().model
    found = {}
    for name in COLLAB_MODELS:
        trials = warm.trials
        if name != chosen:
            _, trials = blend_lib.tune_blend(
                train, poster, catalogue, config, NEIGHBORS_K, queries, CollabModel(name)
            )
        found[name] = max(t["validation"]["HR@100"] for t in trials)
    print("co-watch model, validation HR@100 of its tuned blend: " + ", ".join(
        f"{m} {v:.4f}" + (" (the default)" if m == chosen else "") for m, v in found.items()
    ))  # fmt: skip


def peer_label(peer: collab_peers.PeerResult, variant: str) -> str:
    """A peer variant's row name (the variant chosen on validation marked)."""
    mark = " (chosen)" if variant == peer.stronger else ""
    return f"{peer.name}, {variant}{mark}"


def add_peers(warm: offline_eval.WarmResult, found: list[collab_peers.PeerResult]) -> None:
    """Both variants of every peer as rows of the warm table."""
    for peer in found:
        for variant, choice in peer.variants.items():
            warm.hits[peer_label(peer, variant)] = dict(choice.hits)


def peer_intervals(
    warm: offline_eval.WarmResult, found: list[collab_peers.PeerResult], seed: int
) -> dict[str, dict[str, float]]:
    """HR@100 intervals of the hybrid minus each peer's chosen variant (the best marked)."""
    hybrid = warm.hits[offline_eval.HYBRID]["HR@100"]
    best = max(found, key=lambda p: p.chosen.hits["HR@100"].mean(), default=None)
    out = {}
    for peer in found:
        tag = " (best peer on test)" if peer is best else ""
        name = f"warm HR@100: hybrid - {peer_label(peer, peer.stronger)}{tag}"
        out[name] = ev.paired_bootstrap(hybrid, peer.chosen.hits["HR@100"], seed)
    return out


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ranks = [scipy.stats.rankdata(x) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def cold_intervals(cold: offline_eval.ColdResult, seed: int) -> dict[str, dict[str, float]]:
    """The cold-start intervals the targets name beyond :func:`offline_eval.intervals`."""
    found = {}
    for name in (offline_eval.HYBRID_COLD, offline_eval.HYBRID_COLD_POP):
        found[f"cold Recall@20: {name} + genre inputs - genre profile"] = ev.paired_bootstrap(
            cold.recall[name + " + genre inputs"], cold.recall["genre profile"], seed
        )
    # The targets as differences: audience ranker - 2.5 x ImageNet kNN, genre inputs - 2.5 x genres.
    found["cold Recall@20: audience ranker - 2.5 x poster kNN: ImageNet"] = ev.paired_bootstrap(
        cold.recall[offline_eval.HYBRID_COLD_POP],
        2.5 * cold.recall["poster kNN: ImageNet"],
        seed,
    )
    found["cold Recall@20: audience ranker + genre inputs - 2.5 x genre profile"] = (
        ev.paired_bootstrap(
            cold.recall[offline_eval.HYBRID_COLD_POP + " + genre inputs"],
            2.5 * cold.recall["genre profile"],
            seed,
        )
    )
    return found


def main() -> None:
    """Run the benchmark and print the tables, the intervals and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_films", type=int, default=None, help="Only the N smallest ids.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the models, first hold-out.")
    parser.add_argument(
        "--holdouts", type=int, default=3, help="Cold-start hold-outs (seeds seed, seed+1, ...)."
    )
    parser.add_argument(
        "--warm_only", action="store_true", help="Skip the cold-start hold-outs (warm table only)."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = shared_data_dir()
    weights = data / WEIGHTS
    if not weights.exists():
        raise SystemExit(f"real data not found at {data} (set POSTERS_SHARED_DATA)")
    started, cpu = time.perf_counter(), time.process_time()
    paths, genres = load_posters(data, args.max_films)
    events = load_events(data)
    trainer = PosterTrainer(TrainConfig(weights=str(weights), unfreeze_blocks=0), 6)
    f = extract_features(trainer, paths, genres)
    _LOG.info("features of %d posters in %.0f s", len(f.ids), time.perf_counter() - started)
    embeddings = embeddings_for(events, f, args.seed)
    config = CandidateConfig(top_k=100)
    catalogue = set(f.ids.tolist())
    warm_posters = {name: (f.ids, v) for name, v in embeddings["warm"].items()}
    warm = offline_eval.warm_evaluation(
        events, catalogue, genres, warm_posters, "audience", config,
        embeddings["warm_targets"], NEIGHBORS_K, args.seed,
    )  # fmt: skip
    split = ev.leave_last_out(events, catalogue)
    found_peers, ials_skipped = collab_peers.warm_peers(split, catalogue, config.top_k, args.seed)
    add_peers(warm, found_peers)
    seeds = [args.seed + i for i in range(args.holdouts)]
    genre_model = embeddings["warm"]["genre-trained"]
    runs = []
    if not args.warm_only:
        runs = [cold_run(events, f, genres, genre_model, config, s, s == seeds[0]) for s in seeds]
    cold = pooled(runs) if runs else None
    print(
        f"\n{len(f.ids)} films with posters, {len(events)} ratings, tuned blend: {warm.blend}, "
        f"co-watch model: {CollabModel()}"
    )
    print(ev.format_table(warm.means(), warm.users))
    print("collaborative peers, tuned on the blend's validation split ((chosen): the variant with "
          "the better validation HR@100):")  # fmt: skip
    for peer in found_peers:
        print(f"  {peer.describe()}")
    if ials_skipped:
        print(f"  iALS skipped: {ials_skipped}")
    print_model_choice(
        events, catalogue, warm_posters["audience"], embeddings["warm_targets"], config, warm
    )
    print("\ncosine scores, percentiles 5/50/95: random pairs | each film's 10 nearest")
    for name, vectors in embeddings["warm"].items():
        spread = score_spread(vectors)
        line = " | ".join(
            "/".join(f"{spread[part][p]:.2f}" for p in ("p5", "p50", "p95"))
            for part in ("random_pairs", "top_neighbours")
        )
        print(f"  {name:<16}{line}")
    found = offline_eval.intervals(warm, cold, "audience", args.seed)
    found.update(peer_intervals(warm, found_peers, args.seed))
    if cold is not None:
        print()
        print(format_holdouts(runs, seeds))
        found.update(cold_intervals(cold, args.seed))
    print()
    print(offline_eval.format_intervals(found))
    hybrid, pop, cw = (warm.hits[n]["HR@100"] for n in (offline_eval.HYBRID, "popularity",
                                                         offline_eval.COWATCH))  # fmt: skip
    peer_hr100 = {p.name: p.chosen.hits["HR@100"].mean() for p in found_peers}
    cold_means = collections.defaultdict(lambda: float("nan"))
    if cold is not None:
        cold_means.update(cold.means())
    aud = cold_means[offline_eval.HYBRID_COLD_POP]
    cpu_minutes = (time.process_time() - cpu) / 60
    print(f"elapsed {time.perf_counter() - started:.0f} s wall, {cpu_minutes:.1f} CPU minutes")
    if cold is not None:
        print(f"cold_recall20_audience: the audience model as a cold-start ranker ({aud:.4f}: "
              f"{offline_eval.HYBRID_COLD_POP}); poster-to-poster kNN of the same model: "
              f"{cold_means['poster kNN: audience']:.4f}")  # fmt: skip
    print(
        f"RESULT warm_hr100_hybrid={hybrid.mean():.4f} warm_hr100_popularity={pop.mean():.4f} "
        f"warm_hr100_cowatch={cw.mean():.4f} "
        f"warm_hr100_ease={peer_hr100.get(collab_peers.EASE, float('nan')):.4f} "
        f"warm_hr100_als={peer_hr100.get(collab_peers.IALS, float('nan')):.4f} "
        f"warm_hr100_rp3beta={peer_hr100.get(collab_peers.RP3BETA, float('nan')):.4f} "
        f"cold_recall20_audience={aud:.4f} "
        f"cold_recall20_imagenet_knn={cold_means['poster kNN: ImageNet']:.4f} "
        f"cold_recall20_genre_profile={cold_means['genre profile']:.4f} "
        f"cpu_minutes={cpu_minutes:.1f}"
    )


if __name__ == "__main__":
    main()
