"""Resolve each film's poster URL, fetch it politely and validate it, concurrently per worker.

``FetchPosters`` turns :class:`schemas.CatalogEntry` elements into
:class:`transforms.fetch_worker.ScrapedPoster` elements (the poster normalised, hashed and
encoded as its framed PosterRecord), or :class:`schemas.DeadLetter` records on the
``dead_letter`` output. One :class:`fetching.http.PoliteFetcher` (and its HTTP session) is
created per DoFn instance in ``setup()``; within a bundle up to ``concurrency`` films are in
flight at once on a thread pool.

Decoding, hashing and encoding are CPU work that threads cannot spread over cores (the GIL).
With ``processes`` > 0 a DoFn instance hands its films to that many worker processes
(:class:`transforms.fetch_worker.FetchWorkers`), each with its own session, robots.txt cache and
``concurrency`` threads, and the per-host rate split between them so the total stays the same:
how a local run uses every core while the Beam process only dedupes and writes. On Dataflow
each core already runs its own SDK process, so there it stays 0 and films are fetched on the
DoFn's own threads.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from monitoring import progress
from schemas import CatalogEntry
from schemas import DeadLetter
from transforms.fetch_worker import FetchSettings
from transforms.fetch_worker import FetchWorkers
from transforms.fetch_worker import ScrapedPoster
from transforms.fetch_worker import make_scraper
from transforms.fetch_worker import scrape_or_dead_letter

DEAD_LETTER = "dead_letter"
PROGRESS_TASK = "films fetched"
_LOG = logging.getLogger(__name__)


class _FetchPostersFn(beam.DoFn):
    """Fetches posters with a per-worker session and a bounded pool of threads."""

    def __init__(self, settings: FetchSettings, processes: int = 0) -> None:
        self._settings = settings
        self._processes = processes
        self._ok = beam.metrics.Metrics.counter("scrape", "fetched")
        self._failed = beam.metrics.Metrics.counter("scrape", "fetch_failed")
        self._attempts = beam.metrics.Metrics.distribution("scrape", "http_attempts")

    def setup(self) -> None:
        self._workers = None
        if self._processes > 0:
            self._workers = FetchWorkers(self._processes, self._settings)
            return
        self._scraper = make_scraper(self._settings)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._settings.concurrency, thread_name_prefix="fetch"
        )

    def start_bundle(self) -> None:
        self._pending: list[concurrent.futures.Future] = []

    def process(self, entry: CatalogEntry) -> Iterator:
        if self._workers is not None:
            self._workers.put(entry)
            limit = 2 * self._settings.concurrency * self._processes
            while (result := self._workers.get(block=self._workers.in_flight >= limit)) is not None:
                yield from self._emit(result, windowed=False)
            return
        future = self._pool.submit(
            scrape_or_dead_letter, self._scraper, entry, self._settings.run_id
        )
        self._pending.append(future)
        if len(self._pending) >= 2 * self._settings.concurrency:
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
        workers = getattr(self, "_workers", None)
        if workers is not None:
            workers.close()
        scraper = getattr(self, "_scraper", None)
        if scraper is not None:
            scraper.fetcher.close()
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

    def _emit(self, result: ScrapedPoster | DeadLetter, *, windowed: bool) -> Iterator:
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
    """CatalogEntry -> ScrapedPoster, with failures as DeadLetter on ``dead_letter``.

    ``processes`` > 0: the films are fetched by that many worker processes per DoFn instance
    (:class:`transforms.fetch_worker.FetchWorkers`), else on the DoFn's own threads.
    """

    def __init__(self, settings: FetchSettings, processes: int = 0) -> None:
        super().__init__()
        if processes < 0:
            raise ValueError(f"processes must be >= 0, not {processes}")
        self._fn = _FetchPostersFn(settings, processes)

    def expand(self, entries: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return entries | "FetchAndValidate" >> beam.ParDo(self._fn).with_outputs(
            DEAD_LETTER, main="posters"
        )
