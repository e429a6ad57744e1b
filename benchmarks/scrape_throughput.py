"""Scrape throughput: posters/s of the whole scrape pipeline beside a bare fetch loop.

Serves 3,000 posters (real ones from the shared data when present, else synthetic) from the
loopback poster web with 20 ms added latency, in a separate process, and measures in one run:

* the scrape pipeline end to end (catalog, fetch, validate, dedupe, TFRecord + table writes);
* a bare loop: a thread pool fetching and normalising the same posters, no Beam (the baseline).

Then prints the time to group 100,000 perceptual hashes into near-duplicate groups.

    python -m benchmarks.scrape_throughput [--posters 3000] [--latency_ms 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import multiprocessing
import os
import pathlib
import tempfile
import time

import requests

from benchmarks import hash_grouping
from pipelines import scrape
from synthetic.catalog import Film
from synthetic.catalog import make_catalog
from synthetic.catalog import write_plain_csv
from synthetic.web import PosterWeb
from transforms.images import normalise_image

DATA_ENV = "POSTERS_SHARED_DATA"
TARGET_POSTERS_PER_S = 200.0


def shared_data_dir() -> pathlib.Path:
    """The real-data folder: $POSTERS_SHARED_DATA, default ../shared/data beside the repo."""
    root = pathlib.Path(__file__).resolve().parent.parent
    return pathlib.Path(os.environ.get(DATA_ENV, root.parent / "shared" / "data"))


def real_posters(limit: int) -> tuple[list[Film], dict[int, bytes]] | None:
    """Up to ``limit`` real posters (set_a then set_b), each under its own id, or None."""
    base = shared_data_dir() / "posters"
    if not (base / "set_a" / "index.csv").exists():
        return None
    films, images = [], {}
    for offset, folder in ((0, base / "set_a"), (10_000_000, base / "set_b")):
        with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if len(films) == limit:
                    return films, images
                movie_id = offset + int(row["imdbId"][2:])
                films.append(Film(movie_id, row["imdbId"], 0, row["title"], 2000, ()))
                images[movie_id] = (folder / row["poster_file"]).read_bytes()
    return films, images


def synthetic_posters(limit: int) -> tuple[list[Film], dict[int, bytes]]:
    """``limit`` synthetic posters."""
    catalog = make_catalog(limit, seed=0)
    return catalog.films, {f.movie_id: catalog.poster_bytes(f.movie_id) for f in catalog.films}


def _serve(films, images, latency_s, conn) -> None:
    with PosterWeb(films, images.__getitem__, latency_s=latency_s) as web:
        conn.send(web.base_url)
        conn.recv()  # block until the parent says stop


@contextlib.contextmanager
def web_in_subprocess(films, images, latency_s: float):
    """Serve the posters from a child process so the server does not share our GIL."""
    parent, child = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(
        target=_serve, args=(films, images, latency_s, child), daemon=True
    )
    proc.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()


def bare_loop(urls: list[str], concurrency: int) -> float:
    """Seconds for a thread pool to fetch and normalise every URL (no Beam)."""
    session = requests.Session()
    session.trust_env = False  # no per-request ~/.netrc lookups: the fastest plain client
    adapter = requests.adapters.HTTPAdapter(pool_connections=concurrency, pool_maxsize=concurrency)
    session.mount("http://", adapter)

    def one(url: str) -> int:
        body = session.get(url, timeout=10).content
        return normalise_image(body).width

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, urls))
    return time.perf_counter() - start


def pipeline_run(
    base_url: str, films, workdir: str, concurrency: int, extra: list[str]
) -> tuple[float, dict]:
    """Seconds for the scrape pipeline over the served posters, and its manifest."""
    host = base_url.split("//", 1)[1]
    catalog = os.path.join(workdir, "catalog.csv")
    write_plain_csv(catalog, films, lambda f: f"{base_url}/posters/{f.movie_id}.jpg")
    start = time.perf_counter()
    manifest = scrape.run([
        f"--catalog={catalog}", f"--output={os.path.join(workdir, 'out')}",
        f"--allowed_hosts={host}", "--requests_per_second_per_host=100000",
        f"--fetch_concurrency={concurrency}", *extra,
    ])  # fmt: skip
    return time.perf_counter() - start, manifest


def main(argv=None) -> None:
    """Run the benchmark and print the figures beside the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posters", type=int, default=3000)
    parser.add_argument("--latency_ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hashes", type=int, default=100_000)
    args, beam_args = parser.parse_known_args(argv)
    args.beam_args = beam_args

    loaded = real_posters(args.posters)
    source = "real posters from " + str(shared_data_dir()) if loaded else "synthetic posters"
    films, images = loaded or synthetic_posters(args.posters)
    print(f"scrape throughput: {len(films)} {source}, {args.latency_ms:.0f} ms server latency, "
          f"{os.cpu_count()} cores, concurrency {args.concurrency}")  # fmt: skip
    with web_in_subprocess(films, images, args.latency_ms / 1000) as base_url:
        urls = [f"{base_url}/posters/{f.movie_id}.jpg" for f in films]
        bare_s = bare_loop(urls, args.concurrency)
        with tempfile.TemporaryDirectory() as workdir:
            pipe_s, manifest = pipeline_run(
                base_url, films, workdir, args.concurrency, args.beam_args
            )
    bare_rate, pipe_rate = len(films) / bare_s, len(films) / pipe_s
    print(f"  bare fetch+validate loop (baseline): {bare_rate:8.1f} posters/s ({bare_s:.1f} s)")
    print(f"  scrape pipeline end to end:          {pipe_rate:8.1f} posters/s ({pipe_s:.1f} s, "
          f"includes pipeline start-up)")  # fmt: skip
    print(f"  pipeline / bare loop: {pipe_rate / bare_rate:.2f}; target >= "
          f"{TARGET_POSTERS_PER_S:.0f} posters/s: "
          f"{'MET' if pipe_rate >= TARGET_POSTERS_PER_S else 'NOT MET'}")  # fmt: skip
    print(f"  manifest: {manifest['identity']}")
    print()
    sizes = sorted({args.hashes // 4, args.hashes // 2, args.hashes})
    hash_grouping.main_report(sizes)


if __name__ == "__main__":
    main()
