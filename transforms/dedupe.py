"""Deduplication: by film id (catalog rows), by content hash, and by perceptual hash.

Decisions are made once, globally, on small keys (ids and hashes, never image bytes), then
applied to the full elements through a side input. Every dropped element becomes a
:class:`schemas.DuplicateRecord` naming its canonical element, the kind and the distance.

Canonical rule (deterministic): a poster already written by an earlier run wins; then the poster
with the most original pixels; then the lowest catalog line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from collections.abc import Iterator

import apache_beam as beam
import numpy as np

from schemas import CatalogEntry
from schemas import DuplicateRecord
from schemas import PosterRecord
from transforms.fetch import FetchedPoster
from transforms.images import phash_from_hex
from transforms.images import phash_hex
from transforms.phash_index import group_near_duplicates

DUPLICATES = "duplicates"
FILM_ID, EXACT, NEAR = "film_id", "exact", "near"


# ---------------------------------------------------------------------------- by film id
def plan_catalog_duplicates(
    keys: Iterable[tuple[int, int, str | None, int | None]],
) -> dict[int, int]:
    """Dropped catalog line -> kept film id, for rows sharing a movie, IMDb or TMDb id.

    ``keys`` are ``(line_number, movie_id, imdb_id, tmdb_id)``; the earliest line wins.
    """
    seen: dict[tuple[str, object], int] = {}
    dropped: dict[int, int] = {}
    for line, movie_id, imdb_id, tmdb_id in sorted(keys, key=lambda k: k[0]):
        ids = [("movie", movie_id)]
        if imdb_id:
            ids.append(("imdb", imdb_id))
        if tmdb_id:
            ids.append(("tmdb", tmdb_id))
        kept = next((seen[i] for i in ids if i in seen), None)
        if kept is not None:
            dropped[line] = kept
            continue
        for i in ids:
            seen[i] = movie_id
    return dropped


class _ApplyCatalogDuplicatesFn(beam.DoFn):
    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._dropped = beam.metrics.Metrics.counter("scrape", "duplicates_film_id")

    def process(self, entry: CatalogEntry, dropped: dict[int, int]) -> Iterator:
        kept = dropped.get(entry.line_number)
        if kept is None:
            yield entry
            return
        self._dropped.inc()
        yield beam.pvalue.TaggedOutput(
            DUPLICATES,
            DuplicateRecord(
                run_id=self._run_id,
                movie_id=entry.movie_id,
                canonical_movie_id=kept,
                kind=FILM_ID,
                distance=0,
                line_number=entry.line_number,
                source_url=entry.poster_url,
            ),
        )


class DedupeCatalog(beam.PTransform):
    """Drops catalog rows whose film (movie, IMDb or TMDb id) appeared on an earlier line."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self._run_id = run_id

    def expand(self, entries: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        dropped = (
            entries
            | "FilmKeys" >> beam.Map(lambda e: (e.line_number, e.movie_id, e.imdb_id, e.tmdb_id))
            | "AllFilmKeys" >> beam.combiners.ToList()
            | "PlanFilmDuplicates" >> beam.Map(plan_catalog_duplicates)
        )
        return entries | "DropFilmDuplicates" >> beam.ParDo(
            _ApplyCatalogDuplicatesFn(self._run_id), beam.pvalue.AsSingleton(dropped)
        ).with_outputs(DUPLICATES, main="entries")


# ---------------------------------------------------------------------------- by image
@dataclasses.dataclass(frozen=True)
class ImageKey:
    """What image deduplication needs to know of one poster."""

    movie_id: int
    line_number: int
    content_sha256: str
    phash: int
    pixels: int
    existing: bool


@dataclasses.dataclass(frozen=True)
class Decision:
    """Why one poster is dropped: its canonical poster, the kind and the distance."""

    canonical_movie_id: int
    canonical_content_sha256: str
    kind: str
    distance: int


def plan_image_duplicates(keys: list[ImageKey], threshold: int) -> dict[int, Decision]:
    """Dropped movie id -> Decision, for exact (same bytes) then near (pHash) duplicates."""
    ordered = sorted(keys, key=lambda k: (not k.existing, -k.pixels, k.line_number, k.movie_id))
    decisions: dict[int, Decision] = {}
    by_sha: dict[str, ImageKey] = {}
    survivors: list[ImageKey] = []
    for key in ordered:
        canonical = by_sha.get(key.content_sha256)
        if canonical is None:
            by_sha[key.content_sha256] = key
            survivors.append(key)
        elif not key.existing:
            decisions[key.movie_id] = Decision(
                canonical.movie_id, canonical.content_sha256, EXACT, 0
            )
    if len(survivors) > 1:
        hashes = np.array([k.phash for k in survivors], dtype=np.uint64)
        order = np.arange(len(survivors))  # survivors are already in priority order
        canonical_index, distance = group_near_duplicates(hashes, order, threshold)
        for i, key in enumerate(survivors):
            c = int(canonical_index[i])
            if c != i and not key.existing:
                canon = survivors[c]
                decisions[key.movie_id] = Decision(
                    canon.movie_id, canon.content_sha256, NEAR, int(distance[i])
                )
    return decisions


def image_key(poster: FetchedPoster) -> ImageKey:
    """The dedupe key of a freshly fetched poster."""
    image = poster.image
    return ImageKey(
        movie_id=poster.entry.movie_id,
        line_number=poster.entry.line_number,
        content_sha256=image.content_sha256,
        phash=image.phash,
        pixels=image.original_width * image.original_height,
        existing=False,
    )


def existing_key(record: PosterRecord) -> ImageKey:
    """The dedupe key of a poster written by an earlier run."""
    return ImageKey(
        movie_id=record.movie_id,
        line_number=record.catalog_line,
        content_sha256=record.content_sha256,
        phash=phash_from_hex(record.phash),
        pixels=record.original_width * record.original_height,
        existing=True,
    )


def poster_record(poster: FetchedPoster) -> PosterRecord:
    """The TFRecord row of a kept poster."""
    entry, image = poster.entry, poster.image
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
        source_url=poster.source_url,
        fetched_at=poster.fetched_at,
        catalog_line=entry.line_number,
        imdb_id=entry.imdb_id,
        tmdb_id=entry.tmdb_id,
        title=entry.title,
        year=entry.year,
        genres=entry.genres,
    )


class _ApplyImageDuplicatesFn(beam.DoFn):
    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._exact = beam.metrics.Metrics.counter("scrape", "duplicates_exact")
        self._near = beam.metrics.Metrics.counter("scrape", "duplicates_near")
        self._kept = beam.metrics.Metrics.counter("scrape", "posters_kept")

    def process(self, poster: FetchedPoster, decisions: dict[int, Decision]) -> Iterator:
        decision = decisions.get(poster.entry.movie_id)
        if decision is None:
            self._kept.inc()
            yield poster_record(poster)
            return
        (self._exact if decision.kind == EXACT else self._near).inc()
        yield beam.pvalue.TaggedOutput(
            DUPLICATES,
            DuplicateRecord(
                run_id=self._run_id,
                movie_id=poster.entry.movie_id,
                canonical_movie_id=decision.canonical_movie_id,
                kind=decision.kind,
                distance=decision.distance,
                line_number=poster.entry.line_number,
                content_sha256=poster.image.content_sha256,
                canonical_content_sha256=decision.canonical_content_sha256,
                source_url=poster.source_url,
            ),
        )


class DedupePosters(beam.PTransform):
    """FetchedPoster -> PosterRecord, dropping exact and near duplicates (``duplicates`` out).

    ``existing`` holds PosterRecords written by earlier runs: they win every tie and are never
    dropped, so a new run only adds posters that are not duplicates of what is already there.
    """

    def __init__(self, run_id: str, threshold: int, existing: beam.PCollection) -> None:
        super().__init__()
        if not 0 <= threshold <= 32:
            raise ValueError("near-duplicate threshold must be between 0 and 32 bits")
        self._run_id = run_id
        self._threshold = threshold
        self._existing = existing

    def expand(self, posters: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        threshold = self._threshold
        new_keys = posters | "NewImageKeys" >> beam.Map(image_key)
        old_keys = self._existing | "ExistingImageKeys" >> beam.Map(existing_key)
        decisions = (
            (new_keys, old_keys)
            | "AllImageKeys" >> beam.Flatten()
            | "CollectImageKeys" >> beam.combiners.ToList()
            | "PlanImageDuplicates" >> beam.Map(plan_image_duplicates, threshold)
        )
        return posters | "DropImageDuplicates" >> beam.ParDo(
            _ApplyImageDuplicatesFn(self._run_id), beam.pvalue.AsSingleton(decisions)
        ).with_outputs(DUPLICATES, main="posters")
