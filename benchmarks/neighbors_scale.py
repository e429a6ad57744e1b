"""Neighbour search at scale: the ScaNN index beside exact NumPy search and a BallTree.

For each N, on N clustered synthetic 128-d L2-normalised float32 vectors (1,000 Gaussian clusters
of uneven size and spread, each with a rank-16 covariance plus isotropic noise, generated in
chunks from a seed) and one sample of database rows as queries (nothing excluded, k = 10):

* ScaNN through ``models.scann_index`` with ``choose_params(N)``: build seconds, batched
  queries/s (one ``PosterIndex.search`` call on one thread) and recall@10 against exact search;
* baseline: exact search (``exact_search``: blocked matrix product + argpartition, OpenBLAS on
  every core), queries/s on the same queries; its answers are the ground truth;
* baseline: scikit-learn's BallTree (the poster-similarity prototype's index), build seconds and
  queries/s; built on all N rows when a 100,000-row probe projects the build under 2 minutes,
  otherwise on the probe's subsample; queried for at most a minute.

Target per N: recall@10 >= 0.95 at >= 50x the exact search's queries/s. Also projects the nightly
neighbour job (every film queried for k = 51: 50 neighbours plus itself) for 1,000,000 films on
2 cores from the measured k = 51 throughput of two search threads, plus the measured build time.

    python -m benchmarks.neighbors_scale [--sizes 100000 1000000] [--queries 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Callable
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from models.scann_index import PosterIndex
from models.scann_index import choose_params
from models.scann_index import exact_search

DEFAULT_SIZES = (100_000, 1_000_000)
DEFAULT_QUERIES = 1000
DIM = 128
CLUSTERS = 1000
LATENT_RANK = 16
CLUSTER_SPREAD = 0.6
NOISE = 0.25
CHUNK_ROWS = 8192
K = 10
NIGHTLY_K = 51
NIGHTLY_FILMS = 1_000_000
NIGHTLY_RECALL_QUERIES = 200
NIGHTLY_THREADS = 2
TARGET_RECALL = 0.95
TARGET_SPEED_UP = 50.0
MIN_TIMED_SECONDS = 2.0
EXACT_WARM_UP_QUERIES = 16
BALLTREE_PROBE_ROWS = 100_000
BALLTREE_BUILD_LIMIT_S = 120.0
BALLTREE_QUERY_BUDGET_S = 60.0
BALLTREE_BATCH = 25
FIRST_MOVIE_ID = 1


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(n: int, seed: int = 0) -> np.ndarray:
    """n unit float32 vectors from 1,000 anisotropic Gaussian clusters, built chunk by chunk."""
    rng = np.random.default_rng([seed, 0])
    centres = _unit_rows(rng.standard_normal((CLUSTERS, DIM))).astype(np.float32)
    weights = rng.lognormal(0.0, 0.7, CLUSTERS)
    weights /= weights.sum()
    spread = CLUSTER_SPREAD * rng.lognormal(0.0, 0.25, CLUSTERS)
    spectrum = 1.0 / np.sqrt(np.arange(1, LATENT_RANK + 1))
    spectrum /= np.linalg.norm(spectrum)
    bases = rng.standard_normal((CLUSTERS, LATENT_RANK, DIM)) / math.sqrt(DIM)
    bases = (bases * spectrum[None, :, None] * spread[:, None, None]).astype(np.float32)
    noise = np.float32(NOISE / math.sqrt(DIM))
    out = np.empty((n, DIM), dtype=np.float32)
    for chunk, start in enumerate(range(0, n, CHUNK_ROWS)):
        rows = min(CHUNK_ROWS, n - start)
        chunk_rng = np.random.default_rng([seed, 1, chunk])
        labels = chunk_rng.choice(CLUSTERS, size=rows, p=weights)
        latent = chunk_rng.standard_normal((rows, LATENT_RANK), dtype=np.float32)
        x = centres[labels] + np.einsum("mr,mrd->md", latent, bases[labels])
        x += noise * chunk_rng.standard_normal((rows, DIM), dtype=np.float32)
        out[start : start + rows] = _unit_rows(x)
    return out


def sample_rows(n: int, count: int, seed: int = 0) -> np.ndarray:
    """A sorted sample of min(count, n) distinct row numbers, the same for the same seed."""
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.choice(n, size=min(count, n), replace=False))


def timed_rate(
    search: Callable[[], object], count: int, warm_up: Callable[[], object] | None = None
) -> tuple[float, object]:
    """Queries/s of ``search`` (which answers ``count`` queries) and its last answer.

    Warms up once (with ``warm_up`` when given, else ``search``), then repeats the whole call
    until at least MIN_TIMED_SECONDS have been timed.
    """
    (warm_up or search)()
    calls = 0
    start = time.perf_counter()
    while True:
        answer = search()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_TIMED_SECONDS:
            return calls * count / elapsed, answer


def threaded_rate(index: PosterIndex, queries: np.ndarray, k: int, threads: int) -> float:
    """Queries/s of ``threads`` threads each searching an equal share of the queries."""
    shares = np.array_split(queries, threads)
    with ThreadPoolExecutor(threads) as pool:

        def search_all() -> None:
            list(pool.map(lambda share: index.search(share, k), shares))

        rate, _ = timed_rate(search_all, len(queries))
    return rate


def mean_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of ``exact`` that appears in the same row of ``found``."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact, strict=True))
    return hits / exact.size


def measure_balltree(database: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray) -> dict:
    """BallTree build seconds and queries/s, on all rows or, when too slow, a probe subsample."""
    from sklearn.neighbors import BallTree

    n = len(database)
    rows = n
    note = ""
    if n > BALLTREE_PROBE_ROWS:
        probe = database[sample_rows(n, BALLTREE_PROBE_ROWS, seed=3)]
        start = time.perf_counter()
        BallTree(probe)
        probe_s = time.perf_counter() - start
        projected = probe_s * n * math.log(n) / (len(probe) * math.log(len(probe)))
        if projected > BALLTREE_BUILD_LIMIT_S:
            database, rows = probe, len(probe)
            note = f"built on a {rows:,}-row subsample (full build projected {projected:.0f} s)"
    start = time.perf_counter()
    tree = BallTree(database)
    build_s = time.perf_counter() - start
    tree.query(queries[:1], k=K)
    done = 0
    found = []
    start = time.perf_counter()
    while done < len(queries) and time.perf_counter() - start < BALLTREE_QUERY_BUDGET_S:
        _, batch = tree.query(queries[done : done + BALLTREE_BATCH], k=K)
        found.append(batch)
        done += len(batch)
    elapsed = time.perf_counter() - start
    if done < len(queries):
        note = "; ".join(
            filter(None, [note, f"{done:,} of {len(queries):,} queries in the budget"])
        )
    recall = mean_recall(np.concatenate(found), exact_rows[:done]) if rows == n else math.nan
    return {"build_s": build_s, "qps": done / elapsed, "recall": recall, "note": note}


def measure_scann(database: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray) -> dict:
    """Build the index ``choose_params`` picks; its k=10 and nightly (k=51) speed and recall."""
    n = len(database)
    ids = np.arange(FIRST_MOVIE_ID, FIRST_MOVIE_ID + n, dtype=np.int64)
    params = choose_params(n)
    logging.info("N=%d: building %s", n, params)
    start = time.perf_counter()
    index = PosterIndex.build(ids, database, "benchmark", params)
    build_s = time.perf_counter() - start
    qps, (found, _) = timed_rate(lambda: index.search(queries, K), len(queries))
    nightly_qps_1, _ = timed_rate(lambda: index.search(queries, NIGHTLY_K), len(queries))
    nightly_qps = threaded_rate(index, queries, NIGHTLY_K, NIGHTLY_THREADS)
    check = queries[:NIGHTLY_RECALL_QUERIES]
    nightly_found, _ = index.search(check, NIGHTLY_K)
    nightly_exact, _ = exact_search(database, check, NIGHTLY_K)
    return {
        "method": f"scann {params.mode}",
        "params": params,
        "build_s": build_s,
        "qps": qps,
        "recall": mean_recall(found, ids[exact_rows]),
        "nightly_qps_1_thread": nightly_qps_1,
        "nightly_qps": nightly_qps,
        "nightly_recall": mean_recall(nightly_found, ids[nightly_exact]),
        "nightly_query_s": NIGHTLY_FILMS / nightly_qps,
        "nightly_total_s": NIGHTLY_FILMS / nightly_qps + build_s,
    }


def measure_size(n: int, queries: int, seed: int) -> list[dict]:
    """The exact, ScaNN and BallTree rows for one N, on one database and one query sample."""
    load_average = os.getloadavg()[0]
    database = clustered_vectors(n, seed)
    query_vectors = database[sample_rows(n, queries, seed)]
    logging.info("N=%d: exact search of %d queries", n, len(query_vectors))
    exact_qps, (exact_rows, exact_scores) = timed_rate(
        lambda: exact_search(database, query_vectors, K),
        len(query_vectors),
        warm_up=lambda: exact_search(database, query_vectors[:EXACT_WARM_UP_QUERIES], K),
    )
    exact = {"method": "exact numpy", "build_s": 0.0, "qps": exact_qps, "recall": 1.0}
    scann = measure_scann(database, query_vectors, exact_rows)
    scann.update(
        target_met=scann["recall"] >= TARGET_RECALL and scann["qps"] / exact_qps >= TARGET_SPEED_UP,
        data_score_2nd=float(exact_scores[:, 1].mean()),
        data_score_10th=float(exact_scores[:, K - 1].mean()),
        load_average=load_average,
    )
    logging.info("N=%d: BallTree", n)
    balltree = {"method": "sklearn BallTree"}
    balltree.update(measure_balltree(database, query_vectors, exact_rows))
    rows = [exact, scann, balltree]
    for row in rows:
        row.update(n=n, queries=len(query_vectors), speed_up=row["qps"] / exact_qps)
    return rows


def run(
    sizes: Sequence[int] = DEFAULT_SIZES, queries: int = DEFAULT_QUERIES, seed: int = 0
) -> list[dict]:
    """One dict per (N, method): build s, queries/s, recall@10 and speed-up over exact search."""
    rows = []
    for n in sizes:
        rows.extend(measure_size(n, queries, seed))
    return rows


def _cell(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _rate(qps: float) -> str:
    return f"{qps:,.0f}" if qps >= 100 else f"{qps:.1f}"


def format_table(rows: list[dict]) -> str:
    """The rows of ``run`` as a table, then the verdict per N and the nightly projection."""
    lines = [
        f"k={K} neighbours of {rows[0]['queries']:,} sampled database rows in N clustered "
        f"{DIM}-d unit vectors ({CLUSTERS:,} clusters)",
        f"{'N':>9}  {'method':<22} {'build s':>8} {'queries/s':>10} {'recall@10':>9} "
        f"{'vs exact':>9}  note",
    ]
    for row in rows:
        lines.append(
            f"{row['n']:>9,}  {row['method']:<22} {row['build_s']:>8.2f} {_rate(row['qps']):>10} "
            f"{_cell(row['recall'], '.4f'):>9} {row['speed_up']:>8.2f}x  {row.get('note', '')}"
        )
    lines.append(
        "exact numpy: exact_search (blocked matmul on OpenBLAS threads + argpartition); "
        "scann: one PosterIndex.search call on one thread; BallTree: query on one thread"
    )
    for row in (r for r in rows if r["method"].startswith("scann")):
        verdict = "MET" if row["target_met"] else "NOT MET"
        lines.append(
            f"N={row['n']:,}: target recall@10 >= {TARGET_RECALL} at >= {TARGET_SPEED_UP:.0f}x "
            f"exact: {verdict} (recall {row['recall']:.4f}, {row['speed_up']:.1f}x); "
            f"exact neighbour scores: 2nd {row['data_score_2nd']:.3f}, "
            f"10th {row['data_score_10th']:.3f}; {os.cpu_count()} CPUs, 1-min load average "
            f"{row['load_average']:.1f} at the start"
        )
    scann_rows = [r for r in rows if r["method"].startswith("scann")]
    row = max(scann_rows, key=lambda r: (r["n"] == NIGHTLY_FILMS, r["n"]))
    if row["n"] != NIGHTLY_FILMS:
        lines.append(f"(no N={NIGHTLY_FILMS:,} in this run: projecting from N={row['n']:,})")
    lines.append(
        f"nightly neighbour job on {NIGHTLY_THREADS} cores, {NIGHTLY_FILMS:,} films x "
        f"k={NIGHTLY_K} at {row['nightly_qps']:,.0f} queries/s measured on {NIGHTLY_THREADS} "
        f"search threads ({row['nightly_qps_1_thread']:,.0f} on one; recall@{NIGHTLY_K} "
        f"{row['nightly_recall']:.4f}): {row['nightly_query_s']:.0f} s of queries + "
        f"{row['build_s']:.0f} s build = {row['nightly_total_s'] / 60:.1f} min"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the sizes, query count and seed, then run and print the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(format_table(run(args.sizes, args.queries, args.seed)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
