"""Scrape throughput: the project's scrape beside img2dataset, same served posters, same run.

Serves N posters (default 8,000: every real poster of the shared data, then mirrored copies of
them as further distinct posters; synthetic posters without the shared data) from the loopback
poster web with 20 ms added latency, in a separate process, and measures, one after the other:

* **the project**: ``python -m pipelines.scrape`` as a fresh process (start-up included) on its
  local defaults, with every part on: politeness (robots.txt, per-host rate limit, set high for the
  loopback host), validation, hashing, two-check dedupe, TFRecords, tables and the manifest;
* **img2dataset** (the peer, from its own environment: ``make bench-peers``), 2 processes x
  ``--concurrency`` threads, doing the project's image work: every image decoded, the longer
  side at most 768 (the project's ``max_side``), aspect ratio kept, never upscaled or padded, a
  JPEG that fits kept as fetched and any other image re-encoded as JPEG at the project's quality;
  written as webdataset. What it still does not do (robots.txt, the per-host rate limit,
  SHA-256 and pHash, dedupe, TFRecords, Parquet tables, the manifest) is printed beside the ratio;
* a bare loop (the floor): one process, a thread pool fetching and normalising every poster.

The two scrapers run ``--rounds`` times each (default 3), alternately, on the same served
posters; the figures are the medians and the ratio the median of the rounds' ratios. The last
line is ``RESULT project_posters_per_s=X img2dataset_posters_per_s=X posters=N`` (the medians),
both rates over wall time including start-up (img2dataset's is 0 when its environment is
missing; the reason is printed).

    python -m benchmarks.scrape_throughput [--posters 8000] [--latency_ms 20] [--concurrency 32]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import io
import json
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import requests
from PIL import Image

from benchmarks import peers
from imaging.images import DEFAULT_JPEG_QUALITY
from imaging.images import DEFAULT_MAX_SIDE
from imaging.images import normalise_image
from synthetic.catalog import Film
from synthetic.catalog import make_catalog
from synthetic.catalog import write_plain_csv
from synthetic.web import PosterWeb

DATA_ENV = "POSTERS_SHARED_DATA"
TARGET_RATIO = 1.2
MIRROR_OFFSET = 20_000_000


def shared_data_dir() -> pathlib.Path:
    """The real-data folder: $POSTERS_SHARED_DATA, default ../shared/data beside the repo."""
    root = pathlib.Path(__file__).resolve().parent.parent
    return pathlib.Path(os.environ.get(DATA_ENV, root.parent / "shared" / "data"))


def real_posters() -> tuple[list[Film], dict[int, bytes]] | None:
    """Every real poster (set_a then set_b), each under its own id, or None without the data."""
    base = shared_data_dir() / "posters"
    if not (base / "set_a" / "index.csv").exists():
        return None
    films, images = [], {}
    for offset, folder in ((0, base / "set_a"), (10_000_000, base / "set_b")):
        with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                movie_id = offset + int(row["imdbId"][2:])
                films.append(Film(movie_id, row["imdbId"], 0, row["title"], 2000, ()))
                images[movie_id] = (folder / row["poster_file"]).read_bytes()
    return films, images


def mirrored(data: bytes) -> bytes:
    """The poster flipped left to right, as a JPEG: another poster, not a duplicate."""
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        flipped = image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        flipped.save(out, "JPEG", quality=90)
        return out.getvalue()


def poster_set(count: int) -> tuple[list[Film], dict[int, bytes], str]:
    """``count`` distinct posters: the real ones, then their mirrors; synthetic without data."""
    loaded = real_posters()
    if loaded is None:
        catalog = make_catalog(count, seed=0)
        images = {f.movie_id: catalog.poster_bytes(f.movie_id) for f in catalog.films}
        return list(catalog.films), images, "synthetic posters (no shared data)"
    films, images = loaded
    real = len(films)
    if count > 2 * real:
        raise ValueError(f"at most {2 * real} posters: {real} real ones and their mirrors")
    films = films[:count]
    extra = films[: max(0, count - real)]
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        flipped = pool.map(mirrored, [images[f.movie_id] for f in extra], chunksize=64)
        for film, data in zip(extra, flipped, strict=True):
            movie_id = MIRROR_OFFSET + film.movie_id
            copy = Film(movie_id, f"tt{movie_id:08d}", 0, film.title, 2000, ())
            films.append(copy)
            images[copy.movie_id] = data
    return films, images, f"{min(real, count)} real posters + {len(extra)} mirrored copies"


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
    """Seconds for one process's thread pool to fetch and normalise every URL (no Beam)."""
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


def project_run(
    base_url: str, films: list[Film], workdir: str, concurrency: int, extra: list[str]
) -> tuple[float, dict]:
    """Wall seconds of ``python -m pipelines.scrape`` over the served posters, and its manifest."""
    host = base_url.split("//", 1)[1]
    catalog = os.path.join(workdir, "catalog.csv")
    output = os.path.join(workdir, "scrape")
    write_plain_csv(catalog, films, lambda f: f"{base_url}/posters/{f.movie_id}.jpg")
    command = [
        sys.executable, "-m", "pipelines.scrape", f"--catalog={catalog}", f"--output={output}",
        f"--allowed_hosts={host}", "--requests_per_second_per_host=100000",
        f"--fetch_concurrency={concurrency}", *extra,
    ]  # fmt: skip
    log_path = os.path.join(workdir, "scrape.log")
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
        wall_s = time.perf_counter() - start
    if done.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            raise RuntimeError(f"scrape exited {done.returncode}:\n{handle.read()[-4000:]}")
    with open(os.path.join(output, "manifests", "run-0001.json"), encoding="utf-8") as handle:
        return wall_s, json.load(handle)


PEER_DOES_NOT = ("robots.txt", "per-host rate limit", "SHA-256 and pHash", "dedupe",
                 "TFRecords, Parquet tables and a manifest (webdataset tar instead)")  # fmt: skip


def main(argv=None) -> None:
    """Run the benchmark and print the figures beside the peer's and the floor's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posters", type=int, default=8000)
    parser.add_argument("--latency_ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="Runs of each scraper, alternated.")
    parser.add_argument("--no_bare_loop", action="store_true", help="Skip the bare loop.")
    args, scrape_args = parser.parse_known_args(argv)

    films, images, source = poster_set(args.posters)
    n = len(films)
    print(f"scrape throughput: {n} posters ({source}), {args.latency_ms:.0f} ms server latency, "
          f"{os.cpu_count()} cores, {args.concurrency} concurrent fetches, {args.rounds} rounds "
          "of each scraper, alternated")  # fmt: skip
    peer_reason = peers.peer_available()
    project_rates, peer_rates, ratios = [], [], []
    with web_in_subprocess(films, images, args.latency_ms / 1000) as base_url:
        urls = [f"{base_url}/posters/{f.movie_id}.jpg" for f in films]
        for round_no in range(1, args.rounds + 1):
            with tempfile.TemporaryDirectory() as workdir:
                project_s, manifest = project_run(
                    base_url, films, workdir, args.concurrency, scrape_args
                )
                project_rates.append(n / project_s)
                line = (f"  round {round_no}: project {n / project_s:7.1f} posters/s "
                        f"({project_s:.1f} s)")  # fmt: skip
                if peer_reason is None:
                    peer = peers.run_img2dataset(
                        urls, os.path.join(workdir, "peer"), processes=2,
                        threads=args.concurrency, image_size=DEFAULT_MAX_SIDE, same_work=True,
                        jpeg_quality=DEFAULT_JPEG_QUALITY,
                    )  # fmt: skip
                    peer_rates.append(peer.successes / peer.wall_s)
                    ratios.append(project_rates[-1] / peer_rates[-1])
                    line += (f", img2dataset {peer_rates[-1]:7.1f} posters/s ({peer.wall_s:.1f} s,"
                             f" {peer.successes} written, {peer.failures} failed),"
                             f" ratio {ratios[-1]:.2f}x")  # fmt: skip
                print(line, flush=True)
        bare_s = None if args.no_bare_loop else bare_loop(urls, args.concurrency)
    project_rate = statistics.median(project_rates)
    counts = manifest["counts"]
    print(f"  project scrape (python -m pipelines.scrape, defaults): median {project_rate:7.1f} "
          "posters/s (start-up included)")  # fmt: skip
    print(f"    {manifest['identity']}; near-duplicate candidates "
          f"{counts.get('near_candidates', 0)}, kept apart "
          f"{len(counts.get('near_candidates_kept_apart', []))}")  # fmt: skip
    peer_rate = 0.0
    if peer_rates:
        peer_rate = statistics.median(peer_rates)
        ratio = statistics.median(ratios)
        print(f"  img2dataset (2 processes x {args.concurrency} threads, the same image work: "
              f"longer side <= {DEFAULT_MAX_SIDE}, no upscaling or padding, fitting JPEGs kept, "
              f"JPEG q{DEFAULT_JPEG_QUALITY}): median {peer_rate:7.1f} posters/s")  # fmt: skip
        verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
        print(f"  project / img2dataset: median ratio {ratio:.2f}x over {len(ratios)} rounds "
              f"(target >= {TARGET_RATIO}x: {verdict}); the project also does what the peer does "
              f"not: {', '.join(PEER_DOES_NOT)}")  # fmt: skip
    else:
        print(f"  img2dataset: skipped: {peer_reason}")
    if bare_s is not None:
        print(f"  bare loop (one process, fetch + normalise, no Beam): {n / bare_s:7.1f} "
              f"posters/s ({bare_s:.1f} s)")  # fmt: skip
    print(f"RESULT project_posters_per_s={project_rate:.1f} "
          f"img2dataset_posters_per_s={peer_rate:.1f} posters={n}")  # fmt: skip


if __name__ == "__main__":
    main()
