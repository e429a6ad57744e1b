"""Resolve each film's poster URL, fetch it politely and validate it, concurrently per worker.

``FetchPosters`` turns :class:`schemas.CatalogEntry` elements into :class:`FetchedPoster`
elements, or :class:`schemas.DeadLetter` records on the ``dead_letter`` output. One
:class:`fetching.http.PoliteFetcher` (and its HTTP session) is created per DoFn instance in
``setup()``; within a bundle up to ``concurrency`` films are in flight at once on a thread pool.

Decoding, hashing and re-encoding are CPU work that threads cannot spread over cores (the GIL).
With ``processes`` > 0 a DoFn instance hands its films to that many worker processes
(:class:`FetchWorkers`), each with its own session, robots.txt cache and ``concurrency`` threads,
and the per-host rate split between them so the total stays the same: how a local run uses every
core while the Beam process only dedupes and writes. On Dataflow each core already runs its own
SDK process, so there it stays 0 and films are fetched on the DoFn's own threads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import BinaryIO

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from fetching import resolve
from fetching.http import FetchError
from fetching.http import FetchPolicy
from fetching.http import PoliteFetcher
from imaging.images import ImageRejected
from imaging.images import NormalisedImage
from imaging.images import normalise_image
from monitoring import progress
from schemas import CatalogEntry
from schemas import DeadLetter

DEAD_LETTER = "dead_letter"
RESOLVERS = ("auto", "url", "tmdb", "imdb")
PROGRESS_TASK = "films fetched"
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ResolveConfig:
    """Where poster URLs come from: a URL column, the TMDb API or IMDb title pages."""

    resolver: str = "auto"
    tmdb_api_base: str = "https://api.themoviedb.org/3"
    tmdb_image_base: str = "https://image.tmdb.org/t/p/w500"
    imdb_base: str = "https://www.imdb.com"
    tmdb_api_key: str = dataclasses.field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.resolver not in RESOLVERS:
            raise ValueError(
                f"resolver must be one of {', '.join(RESOLVERS)}, not {self.resolver!r}"
            )
        if self.resolver == "tmdb" and not self.tmdb_api_key:
            raise ValueError(
                "resolver 'tmdb' needs a TMDb API key: set TMDB_API_KEY or pass --tmdb_api_key"
            )


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How fetched images are validated and normalised."""

    max_pixels: int = 40_000_000
    max_side: int = 768
    min_side: int = 32
    jpeg_quality: int = 90


@dataclasses.dataclass(frozen=True)
class FetchedPoster:
    """A film's poster, fetched and normalised, before deduplication."""

    entry: CatalogEntry
    image: NormalisedImage
    source_url: str
    fetched_at: datetime.datetime
    attempts: int


class _Failure(Exception):
    """A film that failed at one stage; carries what the dead-letter record needs."""

    def __init__(self, stage: str, reason: str, detail: str, **extra) -> None:
        super().__init__(f"{stage}/{reason}: {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail
        self.url = extra.get("url")
        self.http_status = extra.get("http_status")
        self.attempts = extra.get("attempts", 0)


def _from_fetch_error(stage: str, exc: FetchError, attempts_before: int = 0) -> _Failure:
    return _Failure(
        stage,
        exc.reason,
        exc.detail,
        url=exc.url,
        http_status=exc.http_status,
        attempts=attempts_before + exc.attempts,
    )


class PosterScraper:
    """Resolves, fetches and validates one film's poster (thread-safe, no Beam)."""

    def __init__(
        self, fetcher: PoliteFetcher, resolve_config: ResolveConfig, image_config: ImageConfig
    ) -> None:
        self.fetcher = fetcher
        self.resolve_config = resolve_config
        self.image_config = image_config

    def scrape(self, entry: CatalogEntry) -> FetchedPoster:
        """The film's fetched and normalised poster; raises _Failure."""
        url, attempts, metadata = self._resolve(entry)
        entry = dataclasses.replace(
            entry,
            title=entry.title or metadata.title,
            year=entry.year or metadata.year,
            genres=entry.genres or metadata.genres,
        )
        try:
            response = self.fetcher.get(url)
        except FetchError as exc:
            raise _from_fetch_error("fetch", exc, attempts) from exc
        attempts += response.attempts
        try:
            image = normalise_image(
                response.body,
                max_pixels=self.image_config.max_pixels,
                max_side=self.image_config.max_side,
                min_side=self.image_config.min_side,
                jpeg_quality=self.image_config.jpeg_quality,
            )
        except ImageRejected as exc:
            raise _Failure(
                "validate",
                exc.reason,
                str(exc),
                url=response.url,
                http_status=200,
                attempts=attempts,
            ) from exc
        return FetchedPoster(
            entry=entry,
            image=image,
            source_url=self.fetcher.redact(url),
            fetched_at=datetime.datetime.now(datetime.UTC),
            attempts=attempts,
        )

    def _resolve(self, entry: CatalogEntry) -> tuple[str, int, resolve.FilmMetadata]:
        """The poster URL, the HTTP attempts it took to find it, and metadata seen on the way."""
        mode = self.resolve_config.resolver
        if entry.poster_url and mode in ("auto", "url"):
            return entry.poster_url, 0, resolve.FilmMetadata()
        use_tmdb = entry.tmdb_id and self.resolve_config.tmdb_api_key and mode in ("auto", "tmdb")
        if use_tmdb:
            return self._resolve_tmdb(entry)
        if entry.imdb_id and mode in ("auto", "imdb"):
            return self._resolve_imdb(entry)
        raise _Failure(
            "resolve",
            "no_poster_source",
            f"resolver {mode!r} cannot locate a poster for this row: it needs "
            + {
                "url": "a poster URL column",
                "tmdb": "a TMDb id",
                "imdb": "an IMDb id",
                "auto": "a poster URL, a TMDb id with a TMDb API key, or an IMDb id",
            }[mode],
        )

    def _resolve_tmdb(self, entry: CatalogEntry) -> tuple[str, int, resolve.FilmMetadata]:
        config = self.resolve_config
        url = resolve.tmdb_movie_url(config.tmdb_api_base, entry.tmdb_id)
        try:
            response = self.fetcher.get(url, params={"api_key": config.tmdb_api_key})
        except FetchError as exc:
            raise _from_fetch_error("resolve", exc) from exc
        try:
            body = json.loads(response.body)
            poster_path = resolve.parse_tmdb_movie(body)
            metadata = resolve.tmdb_metadata(body)
        except (ValueError, TypeError, AttributeError) as exc:
            reason = getattr(exc, "reason", "bad_api_response")
            raise _Failure(
                "resolve",
                reason,
                self.fetcher.redact(str(exc)),
                url=response.url,
                http_status=response.status,
                attempts=response.attempts,
            ) from exc
        image_url = resolve.tmdb_image_url(config.tmdb_image_base, poster_path)
        return image_url, response.attempts, metadata

    def _resolve_imdb(self, entry: CatalogEntry) -> tuple[str, int, resolve.FilmMetadata]:
        url = resolve.imdb_title_url(self.resolve_config.imdb_base, entry.imdb_id)
        try:
            response = self.fetcher.get(url)
        except FetchError as exc:
            raise _from_fetch_error("resolve", exc) from exc
        try:
            html = response.body.decode("utf-8", errors="replace")
            poster_url = resolve.parse_imdb_title_page(html, page_url=url)
            return poster_url, response.attempts, resolve.imdb_metadata(html)
        except ValueError as exc:
            raise _Failure(
                "resolve",
                getattr(exc, "reason", "bad_page"),
                str(exc),
                url=response.url,
                http_status=response.status,
                attempts=response.attempts,
            ) from exc


def dead_letter_for(entry: CatalogEntry, failure: _Failure, run_id: str) -> DeadLetter:
    """The dead-letter record of a film that failed at some stage."""
    return DeadLetter(
        run_id=run_id,
        stage=failure.stage,
        reason=failure.reason,
        detail=failure.detail,
        input_row=json.dumps(entry.to_dict(), sort_keys=True),
        attempts=failure.attempts,
        line_number=entry.line_number,
        movie_id=entry.movie_id,
        url=failure.url,
        http_status=failure.http_status,
    )


def scrape_or_dead_letter(
    scraper: PosterScraper, entry: CatalogEntry, run_id: str
) -> FetchedPoster | DeadLetter:
    """The film's poster, or the dead-letter record of why it has none."""
    try:
        return scraper.scrape(entry)
    except _Failure as failure:
        return dead_letter_for(entry, failure, run_id)


class FetchWorkerDied(RuntimeError):
    """A fetch worker process raised or exited while films were in flight."""


def serve_fetch_worker(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """A fetch worker process (see :class:`FetchWorkers`): pickles in on stdin, out on stdout.

    First ``(policy, resolve_config, image_config, run_id, concurrency)``, then films until
    ``None``; each film's result (or a :class:`FetchWorkerDied` naming it) is written back as it
    completes. Anything the libraries print goes to stderr, never into the result stream.
    """
    if stdout is None:
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = stdin or sys.stdin.buffer
    policy, resolve_config, image_config, run_id, concurrency = pickle.load(stdin)
    fetcher = PoliteFetcher(policy)
    scraper = PosterScraper(fetcher, resolve_config, image_config)
    slots = threading.BoundedSemaphore(concurrency)
    write = threading.Lock()

    def one(entry: CatalogEntry) -> None:
        try:
            result = scrape_or_dead_letter(scraper, entry, run_id)
        except Exception:  # handed to the Beam process, which fails the bundle
            result = FetchWorkerDied(f"film {entry.movie_id}: {traceback.format_exc()}")
        try:
            with write:
                pickle.dump(result, stdout, protocol=pickle.HIGHEST_PROTOCOL)
                stdout.flush()
        finally:
            slots.release()

    with concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="fetch") as pool:
        while (entry := pickle.load(stdin)) is not None:
            slots.acquire()
            pool.submit(one, entry)
    fetcher.close()
    stdout.close()


class FetchWorkers:
    """Worker processes that resolve, fetch and validate films; results come back unordered.

    Each is a fresh ``python`` running :func:`serve_fetch_worker` (no fork of a threaded process,
    no re-import of the caller's ``__main__``), with its own :class:`PoliteFetcher` and
    ``concurrency`` threads; the per-host rate is divided between the processes so that together
    they are as polite as one. Settings, secrets included, travel on the pipe, never in argv.
    """

    def __init__(
        self,
        processes: int,
        policy: FetchPolicy,
        resolve_config: ResolveConfig,
        image_config: ImageConfig,
        run_id: str,
        concurrency: int,
    ) -> None:
        share = dataclasses.replace(
            policy, requests_per_second_per_host=policy.requests_per_second_per_host / processes
        )
        self.shared_policy = share
        settings = (share, resolve_config, image_config, run_id, concurrency)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        command = [sys.executable, "-c", _WORKER_COMMAND]
        self._results: queue.Queue = queue.Queue()
        self._workers = []
        for index in range(processes):
            worker = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            pickle.dump(settings, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            reader = threading.Thread(
                target=self._read, args=(worker, f"fetch-{index}"), daemon=True
            )
            reader.start()
            self._workers.append(worker)
        self._next = 0
        self.in_flight = 0

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the workers."""
        return tuple(worker.pid for worker in self._workers)

    def _read(self, worker: subprocess.Popen, name: str) -> None:
        try:
            while True:
                self._results.put(pickle.load(worker.stdout))
        except (EOFError, OSError, pickle.UnpicklingError):
            code = worker.wait()
            self._results.put(FetchWorkerDied(f"fetch worker {name} exited with code {code}"))

    def put(self, entry: CatalogEntry) -> None:
        """Hand a film to the next worker (round robin)."""
        worker = self._workers[self._next % len(self._workers)]
        self._next += 1
        try:
            pickle.dump(entry, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            worker.stdin.flush()
        except OSError as exc:  # BrokenPipeError: the worker is gone
            raise FetchWorkerDied(f"fetch worker exited ({exc}); see its error above") from exc
        self.in_flight += 1

    def get(self, block: bool) -> FetchedPoster | DeadLetter | None:
        """The next result; None when ``block`` is False and none is ready."""
        while True:
            try:
                result = self._results.get(block=block)
            except queue.Empty:
                return None
            if isinstance(result, FetchWorkerDied):
                if self.in_flight:
                    raise FetchWorkerDied(f"{result} with {self.in_flight} films in flight")
                continue  # a worker that ended after its last film
            self.in_flight -= 1
            return result

    def close(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError):
                pickle.dump(None, worker.stdin)
                worker.stdin.close()
        for worker in self._workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


_WORKER_COMMAND = "from transforms.fetch import serve_fetch_worker; serve_fetch_worker()"


class _FetchPostersFn(beam.DoFn):
    """Fetches posters with a per-worker session and a bounded pool of threads."""

    def __init__(
        self,
        policy: FetchPolicy,
        resolve_config: ResolveConfig,
        image_config: ImageConfig,
        run_id: str,
        concurrency: int,
        processes: int = 0,
    ) -> None:
        self._policy = policy
        self._resolve_config = resolve_config
        self._image_config = image_config
        self._run_id = run_id
        self._concurrency = concurrency
        self._processes = processes
        self._ok = beam.metrics.Metrics.counter("scrape", "fetched")
        self._failed = beam.metrics.Metrics.counter("scrape", "fetch_failed")
        self._attempts = beam.metrics.Metrics.distribution("scrape", "http_attempts")

    def setup(self) -> None:
        self._workers = None
        if self._processes > 0:
            self._workers = FetchWorkers(
                self._processes,
                self._policy,
                self._resolve_config,
                self._image_config,
                self._run_id,
                self._concurrency,
            )
            return
        self._fetcher = PoliteFetcher(self._policy)
        self._scraper = PosterScraper(self._fetcher, self._resolve_config, self._image_config)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix="fetch"
        )

    def start_bundle(self) -> None:
        self._pending: list[concurrent.futures.Future] = []

    def process(self, entry: CatalogEntry) -> Iterator:
        if self._workers is not None:
            self._workers.put(entry)
            limit = 2 * self._concurrency * self._processes
            while (result := self._workers.get(block=self._workers.in_flight >= limit)) is not None:
                yield from self._emit(result, windowed=False)
            return
        future = self._pool.submit(scrape_or_dead_letter, self._scraper, entry, self._run_id)
        self._pending.append(future)
        if len(self._pending) >= 2 * self._concurrency:
            done, _ = concurrent.futures.wait(
                self._pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            yield from self._drain(done, windowed=False)

    def finish_bundle(self) -> Iterator:
        if self._workers is not None:
            while self._workers.in_flight:
                yield from self._emit(self._workers.get(block=True), windowed=True)
            return
        done, _ = concurrent.futures.wait(self._pending)
        yield from self._drain(done, windowed=True)

    def teardown(self) -> None:
        for name in ("_workers", "_fetcher"):
            held = getattr(self, name, None)
            if held is not None:
                held.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)

    def _drain(self, done: set, *, windowed: bool) -> Iterator:
        remaining = []
        for future in self._pending:
            if future in done:
                yield from self._emit(future.result(), windowed=windowed)
            else:
                remaining.append(future)
        self._pending = remaining

    def _emit(self, result: FetchedPoster | DeadLetter, *, windowed: bool) -> Iterator:
        self._attempts.update(result.attempts)
        progress.advance(PROGRESS_TASK)
        value = WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()]) if windowed else result
        if isinstance(result, DeadLetter):
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, value)
        else:
            self._ok.inc()
            yield value


class FetchPosters(beam.PTransform):
    """CatalogEntry -> FetchedPoster, with failures as DeadLetter on ``dead_letter``."""

    def __init__(
        self,
        policy: FetchPolicy,
        resolve_config: ResolveConfig,
        image_config: ImageConfig,
        run_id: str,
        concurrency: int = 16,
        processes: int = 0,
    ) -> None:
        super().__init__()
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if processes < 0:
            raise ValueError("processes must be >= 0")
        self._fn = _FetchPostersFn(
            policy, resolve_config, image_config, run_id, concurrency, processes
        )

    def expand(self, entries: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return entries | "FetchAndValidate" >> beam.ParDo(self._fn).with_outputs(
            DEAD_LETTER, main="posters"
        )
