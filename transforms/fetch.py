"""Resolve each film's poster URL, fetch it politely and validate it, concurrently per worker.

``FetchPosters`` turns :class:`schemas.CatalogEntry` elements into :class:`FetchedPoster`
elements, or :class:`schemas.DeadLetter` records on the ``dead_letter`` output. One
:class:`transforms.http.PoliteFetcher` (and its HTTP session) is created per DoFn instance in
``setup()``; within a bundle up to ``concurrency`` films are in flight at once on a thread pool.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from schemas import CatalogEntry
from schemas import DeadLetter
from transforms import resolve
from transforms.http import FetchError
from transforms.http import FetchPolicy
from transforms.http import PoliteFetcher
from transforms.images import ImageRejected
from transforms.images import NormalisedImage
from transforms.images import normalise_image

DEAD_LETTER = "dead_letter"
RESOLVERS = ("auto", "url", "tmdb", "imdb")
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


class _FetchPostersFn(beam.DoFn):
    """Fetches posters with a per-worker session and a bounded pool of threads."""

    def __init__(
        self,
        policy: FetchPolicy,
        resolve_config: ResolveConfig,
        image_config: ImageConfig,
        run_id: str,
        concurrency: int,
    ) -> None:
        self._policy = policy
        self._resolve_config = resolve_config
        self._image_config = image_config
        self._run_id = run_id
        self._concurrency = concurrency
        self._ok = beam.metrics.Metrics.counter("scrape", "fetched")
        self._failed = beam.metrics.Metrics.counter("scrape", "fetch_failed")
        self._attempts = beam.metrics.Metrics.distribution("scrape", "http_attempts")

    def setup(self) -> None:
        self._fetcher = PoliteFetcher(self._policy)
        self._scraper = PosterScraper(self._fetcher, self._resolve_config, self._image_config)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix="fetch"
        )

    def start_bundle(self) -> None:
        self._pending: list[concurrent.futures.Future] = []

    def process(self, entry: CatalogEntry) -> Iterator:
        self._pending.append(self._pool.submit(self._scrape_one, entry))
        if len(self._pending) >= 2 * self._concurrency:
            done, _ = concurrent.futures.wait(
                self._pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            yield from self._drain(done, windowed=False)

    def finish_bundle(self) -> Iterator:
        done, _ = concurrent.futures.wait(self._pending)
        yield from self._drain(done, windowed=True)

    def teardown(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        fetcher = getattr(self, "_fetcher", None)
        if fetcher is not None:
            fetcher.close()

    def _scrape_one(self, entry: CatalogEntry) -> FetchedPoster | DeadLetter:
        try:
            return self._scraper.scrape(entry)
        except _Failure as failure:
            return dead_letter_for(entry, failure, self._run_id)

    def _drain(self, done: set, *, windowed: bool) -> Iterator:
        remaining = []
        for future in self._pending:
            if future not in done:
                remaining.append(future)
                continue
            result = future.result()
            if isinstance(result, DeadLetter):
                self._failed.inc()
                self._attempts.update(result.attempts)
                value = (
                    WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()]) if windowed else result
                )
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, value)
            else:
                self._ok.inc()
                self._attempts.update(result.attempts)
                yield WindowedValue(result, MIN_TIMESTAMP, [GlobalWindow()]) if windowed else result
        self._pending = remaining


class FetchPosters(beam.PTransform):
    """CatalogEntry -> FetchedPoster, with failures as DeadLetter on ``dead_letter``."""

    def __init__(
        self,
        policy: FetchPolicy,
        resolve_config: ResolveConfig,
        image_config: ImageConfig,
        run_id: str,
        concurrency: int = 16,
    ) -> None:
        super().__init__()
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._fn = _FetchPostersFn(policy, resolve_config, image_config, run_id, concurrency)

    def expand(self, entries: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return entries | "FetchAndValidate" >> beam.ParDo(self._fn).with_outputs(
            DEAD_LETTER, main="posters"
        )
