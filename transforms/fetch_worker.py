"""Resolve, fetch, validate and encode one film's poster, in threads and worker processes.

:class:`PosterScraper` turns a :class:`schemas.CatalogEntry` into a :class:`ScrapedPoster` (the
poster normalised, hashed, thumbnailed and already encoded as its framed PosterRecord) or raises;
:func:`scrape_or_dead_letter` turns the failure into the film's :class:`schemas.DeadLetter`.
:class:`FetchWorkers` runs this in worker processes, each a fresh ``python`` running
:func:`serve_fetch_worker` with its own session, robots.txt cache and threads, so decoding and
hashing use every core. No Beam here: a worker starts and exits in a fraction of a second (the
DoFn that drives the workers is :mod:`transforms.fetch`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import traceback
from typing import BinaryIO

from fetching import resolve
from fetching.http import FetchError
from fetching.http import FetchPolicy
from fetching.http import PoliteFetcher
from imaging.images import ImageRejected
from imaging.images import NormalisedImage
from imaging.images import normalise_image
from imaging.images import phash_hex
from schemas import CatalogEntry
from schemas import DeadLetter
from schemas import PosterRecord
from storage.tfrecord import tfrecord_frame

RESOLVERS = ("auto", "url", "tmdb", "imdb")


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
class FetchSettings:
    """Everything that fetches posters needs, as one value (sent once to each worker process)."""

    policy: FetchPolicy
    resolve: ResolveConfig
    image: ImageConfig
    run_id: str
    concurrency: int = 16

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {self.concurrency}")

    def shared_by(self, processes: int) -> FetchSettings:
        """The settings of one of ``processes`` worker processes: each gets its share of the
        per-host rate, so that together they are as polite as one."""
        rate = self.policy.requests_per_second_per_host / processes
        policy = dataclasses.replace(self.policy, requests_per_second_per_host=rate)
        return dataclasses.replace(self, policy=policy)


@dataclasses.dataclass(frozen=True)
class ScrapedPoster:
    """A film's poster as the rest of the stage needs it, made where it was fetched.

    The facts deduplication decides on, the thumbnail signature that confirms a near duplicate
    (:func:`imaging.image_match.thumbnail_signature` of the stored pixels), what a duplicates row
    names, and the film's PosterRecord already encoded as one framed TFRecord, ready to write.
    """

    movie_id: int
    line_number: int
    content_sha256: str
    phash: int
    original_pixels: int
    signature: bytes
    record: bytes
    source_url: str
    title: str | None
    year: int | None
    attempts: int


def poster_record(
    entry: CatalogEntry, image: NormalisedImage, source_url: str, fetched_at: datetime.datetime
) -> PosterRecord:
    """The TFRecord row of a fetched poster."""
    return PosterRecord(
        movie_id=entry.movie_id,
        image_jpeg=image.jpeg,
        width=image.width,
        height=image.height,
        original_width=image.original_width,
        original_height=image.original_height,
        original_format=image.original_format,
        content_sha256=image.content_sha256,
        phash=phash_hex(image.phash),
        source_url=source_url,
        fetched_at=fetched_at,
        catalog_line=entry.line_number,
        imdb_id=entry.imdb_id,
        tmdb_id=entry.tmdb_id,
        title=entry.title,
        year=entry.year,
        genres=entry.genres,
    )


def scraped_poster(
    entry: CatalogEntry,
    image: NormalisedImage,
    source_url: str,
    fetched_at: datetime.datetime,
    attempts: int,
) -> ScrapedPoster:
    """A fetched poster with its PosterRecord encoded."""
    record = poster_record(entry, image, source_url, fetched_at)
    return ScrapedPoster(
        movie_id=entry.movie_id,
        line_number=entry.line_number,
        content_sha256=image.content_sha256,
        phash=image.phash,
        original_pixels=image.original_width * image.original_height,
        signature=image.signature,
        record=tfrecord_frame(record.to_example()),
        source_url=source_url,
        title=entry.title,
        year=entry.year,
        attempts=attempts,
    )


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
    """Resolves, fetches, validates and encodes one film's poster (thread-safe)."""

    def __init__(
        self, fetcher: PoliteFetcher, resolve_config: ResolveConfig, image_config: ImageConfig
    ) -> None:
        self.fetcher = fetcher
        self.resolve_config = resolve_config
        self.image_config = image_config

    def scrape(self, entry: CatalogEntry) -> ScrapedPoster:
        """The film's fetched, normalised and encoded poster; raises _Failure."""
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
        fetched_at = datetime.datetime.now(datetime.UTC)
        return scraped_poster(entry, image, self.fetcher.redact(url), fetched_at, attempts)

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
) -> ScrapedPoster | DeadLetter:
    """The film's poster, or the dead-letter record of why it has none."""
    try:
        return scraper.scrape(entry)
    except _Failure as failure:
        return dead_letter_for(entry, failure, run_id)


def make_scraper(settings: FetchSettings) -> PosterScraper:
    """A scraper with its own polite fetcher (and HTTP session) for ``settings``."""
    return PosterScraper(PoliteFetcher(settings.policy), settings.resolve, settings.image)


class FetchWorkerDied(RuntimeError):
    """A fetch worker process raised or exited while films were in flight."""


def serve_fetch_worker(stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """A fetch worker process (see :class:`FetchWorkers`): pickles in on stdin, out on stdout.

    First the :class:`FetchSettings`, then films until ``None``; each film's result (or a
    :class:`FetchWorkerDied` naming it) is written back as it completes. Anything the libraries
    print goes to stderr, never into the result stream.
    """
    process = stdout is None  # a worker process (else called in-process, by tests)
    if stdout is None:
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        # Ctrl-C reaches the whole process group: the parent handles it, and its pipes closing
        # end this worker quietly (below).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = stdin or sys.stdin.buffer
    try:
        settings: FetchSettings = pickle.load(stdin)
    except (EOFError, OSError):
        return  # the parent is gone before it sent anything
    scraper = make_scraper(settings)
    slots = threading.BoundedSemaphore(settings.concurrency)
    write = threading.Lock()

    def one(entry: CatalogEntry) -> None:
        try:
            result = scrape_or_dead_letter(scraper, entry, settings.run_id)
        except Exception:  # handed to the Beam process, which fails the bundle
            result = FetchWorkerDied(f"film {entry.movie_id}: {traceback.format_exc()}")
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            with write:
                stdout.write(data)
                stdout.flush()
        except OSError:  # BrokenPipeError: the parent is gone, nobody reads the results
            if not process:
                raise
            _parent_gone()
        finally:
            slots.release()

    with concurrent.futures.ThreadPoolExecutor(
        settings.concurrency, thread_name_prefix="fetch"
    ) as pool:
        while (entry := _next_entry(stdin, process)) is not None:
            slots.acquire()
            pool.submit(one, entry)
    scraper.fetcher.close()
    stdout.close()


def _next_entry(stdin: BinaryIO, process: bool) -> CatalogEntry | None:
    """The next film the parent sends; None at its end; a pipe that closes without the end
    means the parent died (killed, or Ctrl-C): a worker process leaves at once, quietly."""
    try:
        return pickle.load(stdin)
    except (EOFError, OSError, pickle.UnpicklingError):
        if process:
            _parent_gone()
        return None


def _parent_gone() -> None:
    """End a worker whose parent is gone, without a traceback or waiting for its fetches."""
    os._exit(0)


_WORKER_COMMAND = "from transforms.fetch_worker import serve_fetch_worker; serve_fetch_worker()"


def fetch_worker_command() -> str:
    """The ``python -c`` program of a fetch worker process."""
    return _WORKER_COMMAND


class FetchWorkers:
    """Worker processes that resolve, fetch and validate films; results come back unordered.

    Each is a fresh ``python`` running :func:`serve_fetch_worker` (no fork of a threaded process,
    no re-import of the caller's ``__main__``), with its own :class:`PoliteFetcher` and
    ``settings.concurrency`` threads; the per-host rate is divided between the processes so that
    together they are as polite as one. Settings, secrets included, travel on the pipe, never in
    argv.
    """

    def __init__(self, processes: int, settings: FetchSettings) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, not {processes}")
        self.settings = settings.shared_by(processes)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        command = [sys.executable, "-c", _WORKER_COMMAND]
        self._results: queue.Queue = queue.Queue()
        self._workers = []
        for index in range(processes):
            worker = subprocess.Popen(  # its own process group: Ctrl-C is the parent's to handle
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, process_group=0
            )
            pickle.dump(self.settings, worker.stdin, protocol=pickle.HIGHEST_PROTOCOL)
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

    def get(self, block: bool) -> ScrapedPoster | DeadLetter | None:
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
        """Ask every worker to finish and wait for them (killing one that hangs)."""
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
