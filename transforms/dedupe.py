"""Deduplication: by film id (catalog rows), by content hash, and by perceptual hash.

Decisions are made once, globally, on small keys (ids and hashes, never image bytes), then
applied to the full elements through a side input. Every dropped element becomes a
:class:`schemas.DuplicateRecord` naming its canonical element, the kind and the evidence.

A near duplicate needs two independent pieces of evidence: the 64-bit perceptual hashes within
the threshold, and then, checked in parallel for those candidate pairs only, the aligned
thumbnails correlating at least ``min_confirmation`` (:mod:`imaging.image_match`). Only the
posters of candidate pairs are thumbnailed, and their thumbnails travel with the pairs, never to
one place.

Canonical rule (deterministic): a poster already written by an earlier run wins; then the poster
with the most original pixels; then the lowest catalog line. A dropped poster's film is not lost:
its duplicates row names the canonical film, whose poster (and, in the embed stage, vector) the
film shares.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterable
from collections.abc import Iterator

import apache_beam as beam
import numpy as np

from imaging.image_match import DEFAULT_MIN_CONFIRMATION
from imaging.image_match import confirmation_score
from imaging.image_match import signature
from imaging.images import phash_from_hex
from imaging.phash_index import candidate_pairs
from schemas import CatalogEntry
from schemas import DuplicateRecord
from schemas import PosterRecord
from transforms.fetch_worker import ScrapedPoster
from transforms.sinks import GroupByShard

DUPLICATES = "duplicates"
FILM_ID, EXACT, NEAR = DuplicateRecord.FILM_ID, DuplicateRecord.EXACT, DuplicateRecord.NEAR


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
                title=entry.title,
                year=entry.year,
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
    """Why one poster is dropped: its canonical poster, the kind and the evidence."""

    canonical_movie_id: int
    canonical_content_sha256: str
    kind: str
    distance: int
    confirmation: float | None = None


@dataclasses.dataclass(frozen=True)
class HashPlan:
    """Exact duplicates, decided; and the near-duplicate candidates that still need confirming.

    ``survivors`` (posters left after exact deduplication) are in priority order: the first of a
    group becomes its canonical. ``pairs`` are (movie id, movie id, hash distance) of survivors
    within the threshold, at least one of them new (two earlier posters are never merged).
    """

    exact: dict[int, Decision]
    survivors: tuple[ImageKey, ...]
    pairs: tuple[tuple[int, int, int], ...]

    @functools.cached_property
    def involved(self) -> frozenset[int]:
        """Movie ids whose thumbnails the confirmation needs."""
        return frozenset(m for a, b, _ in self.pairs for m in (a, b))


def _priority(key: ImageKey) -> tuple:
    return (not key.existing, -key.pixels, key.line_number, key.movie_id)


def plan_hash_candidates(keys: list[ImageKey], threshold: int) -> HashPlan:
    """Exact duplicates (same bytes) decided, and pHash candidate pairs among the rest."""
    ordered = sorted(keys, key=_priority)
    exact: dict[int, Decision] = {}
    by_sha: dict[str, ImageKey] = {}
    survivors: list[ImageKey] = []
    for key in ordered:
        canonical = by_sha.get(key.content_sha256)
        if canonical is None:
            by_sha[key.content_sha256] = key
            survivors.append(key)
        elif not key.existing:
            exact[key.movie_id] = Decision(canonical.movie_id, canonical.content_sha256, EXACT, 0)
    pairs: list[tuple[int, int, int]] = []
    if len(survivors) > 1:
        hashes = np.array([k.phash for k in survivors], dtype=np.uint64)
        first, second, distance = candidate_pairs(hashes, threshold)
        for i, j, d in zip(first.tolist(), second.tolist(), distance.tolist(), strict=True):
            a, b = survivors[i], survivors[j]
            if not (a.existing and b.existing):
                pairs.append((a.movie_id, b.movie_id, d))
    return HashPlan(exact, tuple(survivors), tuple(pairs))


def plan_image_duplicates(
    plan: HashPlan,
    scored: list[tuple[int, int, int, float]],
    min_confirmation: float = DEFAULT_MIN_CONFIRMATION,
) -> dict[int, Decision]:
    """Dropped movie id -> Decision: the exact ones, then near ones confirmed by thumbnails.

    ``scored`` holds (movie id, movie id, hash distance, confirmation score) of the plan's pairs.
    Leader clustering in priority order: an unassigned poster becomes a canonical and takes every
    unassigned poster it has a confirmed pair with. So each dropped poster is confirmed against
    its own canonical (never merely through a chain), and no poster written earlier is dropped.
    """
    edges: dict[int, list[tuple[int, int, float]]] = {}
    for a, b, distance, score in scored:
        if score >= min_confirmation:
            edges.setdefault(a, []).append((b, distance, score))
            edges.setdefault(b, []).append((a, distance, score))
    decisions = dict(plan.exact)
    by_id = {k.movie_id: k for k in plan.survivors}
    assigned: set[int] = set()
    for key in plan.survivors:
        if key.movie_id in assigned or key.movie_id not in edges:
            continue
        assigned.add(key.movie_id)
        near = sorted(edges[key.movie_id], key=lambda edge: _priority(by_id[edge[0]]))
        for other, distance, score in near:
            if other in assigned or by_id[other].existing:
                continue
            assigned.add(other)
            decisions[other] = Decision(
                key.movie_id, key.content_sha256, NEAR, distance, round(score, 4)
            )
    return decisions


def image_key(poster: ScrapedPoster) -> ImageKey:
    """The dedupe key of a freshly fetched poster."""
    return ImageKey(
        movie_id=poster.movie_id,
        line_number=poster.line_number,
        content_sha256=poster.content_sha256,
        phash=poster.phash,
        pixels=poster.original_pixels,
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


def shard_row(poster: ScrapedPoster) -> tuple:
    """What the shard grouping carries of a poster, as a tuple of plain values: Beam encodes
    those itself, where it would pickle (and unpickle, at each hop) a dataclass.

    (movie id, catalog line, content SHA-256, source URL, title, year, framed PosterRecord)
    """
    return (
        poster.movie_id,
        poster.line_number,
        poster.content_sha256,
        poster.source_url,
        poster.title,
        poster.year,
        poster.record,
    )


class _ApplyImageDuplicatesFn(beam.DoFn):
    """One shard's posters (:func:`shard_row`): (shard, kept (movie id, framed PosterRecord)),
    and a DuplicateRecord per dropped one."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._exact = beam.metrics.Metrics.counter("scrape", "duplicates_exact")
        self._near = beam.metrics.Metrics.counter("scrape", "duplicates_near")
        self._kept = beam.metrics.Metrics.counter("scrape", "posters_kept")

    def process(
        self, shard: tuple[int, Iterable[tuple]], decisions: dict[int, Decision]
    ) -> Iterator:
        index, rows = shard
        kept = []
        for row in rows:
            movie_id, record = row[0], row[-1]
            decision = decisions.get(movie_id)
            if decision is None:
                kept.append((movie_id, record))
            else:
                yield self._duplicate(row, decision)
        self._kept.inc(len(kept))
        yield index, kept

    def _duplicate(self, row: tuple, decision: Decision) -> beam.pvalue.TaggedOutput:
        (self._exact if decision.kind == EXACT else self._near).inc()
        movie_id, line_number, content_sha256, source_url, title, year, _ = row
        return beam.pvalue.TaggedOutput(
            DUPLICATES,
            DuplicateRecord(
                run_id=self._run_id,
                movie_id=movie_id,
                canonical_movie_id=decision.canonical_movie_id,
                kind=decision.kind,
                distance=decision.distance,
                line_number=line_number,
                content_sha256=content_sha256,
                canonical_content_sha256=decision.canonical_content_sha256,
                source_url=source_url,
                confirmation=decision.confirmation,
                title=title,
                year=year,
            ),
        )


class _SignatureFn(beam.DoFn):
    """(movie id, thumbnail signature) of the posters that are in a candidate pair.

    New posters carry the signature computed when they were fetched (from their pixels, in the
    fetching process); posters of earlier runs are decoded from their stored JPEG.
    """

    def process(
        self, element: tuple[int, tuple[bytes, bool]], involved: frozenset[int]
    ) -> Iterator[tuple[int, bytes]]:
        movie_id, (data, is_jpeg) = element
        if movie_id in involved:
            yield movie_id, signature(data) if is_jpeg else data


def _first_side(joined: tuple[int, dict]) -> Iterator[tuple[int, tuple[int, int, bytes]]]:
    """(b, (a, distance, signature of a)) for each pair (a, b, distance) keyed by a."""
    a, groups = joined
    for sig in groups["signature"]:
        for b, distance in groups["pair"]:
            yield b, (a, distance, sig)


class _ScorePairsFn(beam.DoFn):
    def __init__(self) -> None:
        self._scored = beam.metrics.Metrics.counter("scrape", "near_candidates_checked")

    def process(self, joined: tuple[int, dict]) -> Iterator[tuple[int, int, int, float]]:
        b, groups = joined
        for sig_b in groups["signature"]:
            for a, distance, sig_a in groups["half"]:
                self._scored.inc()
                yield a, b, distance, confirmation_score(sig_a, sig_b)


class ConfirmPairs(beam.PTransform):
    """The plan's candidate pairs, each scored by comparing the two posters' thumbnails.

    Pairs are joined to the thumbnails of both posters by two keyed joins, so scoring runs in
    parallel and no worker ever holds every thumbnail.
    """

    def __init__(self, plan: beam.PCollection, existing: beam.PCollection) -> None:
        super().__init__()
        self._plan = plan
        self._existing = existing

    def expand(self, posters: beam.PCollection) -> beam.PCollection:
        # Only the ids of the plan as a side input: the runner measures the size of every side
        # input it caches, and the whole plan is thousands of objects.
        involved = self._plan | "InvolvedIds" >> beam.Map(lambda plan: plan.involved)
        # One signature step after the Flatten: the FnApiRunner (Beam 2.77) leaves bundles
        # unexecuted when two steps reading the same side input are flattened.
        signatures = (
            (
                posters | "NewSignatures" >> beam.Map(lambda p: (p.movie_id, (p.signature, False))),
                self._existing
                | "OldJpegs" >> beam.Map(lambda r: (r.movie_id, (r.image_jpeg, True))),
            )
            | "AllThumbnails" >> beam.Flatten()
            | "Signatures" >> beam.ParDo(_SignatureFn(), beam.pvalue.AsSingleton(involved))
        )
        pairs = self._plan | "CandidatePairs" >> beam.FlatMap(
            lambda p: [(a, (b, d)) for a, b, d in p.pairs]
        )
        halves = (
            {"pair": pairs, "signature": signatures}
            | "JoinFirst" >> beam.CoGroupByKey()
            | "FirstSide" >> beam.FlatMap(_first_side)
        )
        return (
            {"half": halves, "signature": signatures}
            | "JoinSecond" >> beam.CoGroupByKey()
            | "ScorePairs" >> beam.ParDo(_ScorePairsFn())
        )


def duplicate_groups(records: Iterable[DuplicateRecord]) -> list[dict]:
    """Each canonical film with the films that share its poster, and the evidence of each."""
    groups: dict[int, list[DuplicateRecord]] = {}
    for record in records:
        groups.setdefault(record.canonical_movie_id, []).append(record)
    return [
        {
            "canonical_movie_id": canonical,
            "films": [
                {
                    "movie_id": d.movie_id,
                    "kind": d.kind,
                    "hash_distance": d.distance,
                    "confirmation": d.confirmation,
                }
                for d in sorted(members, key=lambda d: (d.movie_id, d.line_number))
            ],
        }
        for canonical, members in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    ]


def rejected_pairs(scored: Iterable[tuple], min_confirmation: float, limit: int = 20) -> list:
    """The best-scoring candidate pairs the thumbnails did not confirm (kept apart), best first."""
    rejected = sorted(
        (-score, a, b, distance) for a, b, distance, score in scored if score < min_confirmation
    )
    return [
        {"movie_ids": [a, b], "hash_distance": distance, "confirmation": round(-negative, 4)}
        for negative, a, b, distance in rejected[:limit]
    ]


class DedupeOutputs(typing.NamedTuple):
    """The kept posters as (shard, [(movie id, framed PosterRecord)]) groups for
    WriteGroupedShards, DuplicateRecords, and every scored near candidate pair."""

    shards: beam.PCollection
    duplicates: beam.PCollection
    scored: beam.PCollection


class DedupePosters(beam.PTransform):
    """ScrapedPoster -> kept posters grouped by shard, dropping exact and near duplicates.

    ``existing`` holds PosterRecords written by earlier runs: they win every tie and are never
    dropped, so a new run only adds posters that are not duplicates of what is already there.
    The ``scored`` output holds every near candidate pair with its hash distance and confirmation
    score, merged or not, for the run's evidence.
    """

    def __init__(
        self,
        run_id: str,
        threshold: int,
        existing: beam.PCollection,
        min_confirmation: float = DEFAULT_MIN_CONFIRMATION,
        num_shards: int = 1,
    ) -> None:
        super().__init__()
        if not 0 <= threshold <= 32:
            raise ValueError("near-duplicate threshold must be between 0 and 32 bits")
        if not 0.0 < min_confirmation <= 1.0:
            raise ValueError(
                f"near-duplicate confirmation must be within (0, 1], got {min_confirmation}"
            )
        self._run_id = run_id
        self._threshold = threshold
        self._existing = existing
        self._min_confirmation = min_confirmation
        self._num_shards = num_shards

    def expand(self, posters: beam.PCollection) -> DedupeOutputs:
        new_keys = posters | "NewImageKeys" >> beam.Map(image_key)
        old_keys = self._existing | "ExistingImageKeys" >> beam.Map(existing_key)
        plan = (
            (new_keys, old_keys)
            | "AllImageKeys" >> beam.Flatten()
            | "CollectImageKeys" >> beam.combiners.ToList()
            | "PlanHashCandidates" >> beam.Map(plan_hash_candidates, self._threshold)
        )
        scored = posters | "ConfirmPairs" >> ConfirmPairs(plan, self._existing)
        scores = scored | "CollectScores" >> beam.combiners.ToList()
        decisions = plan | "PlanImageDuplicates" >> beam.Map(
            plan_image_duplicates, beam.pvalue.AsSingleton(scores), self._min_confirmation
        )
        # Grouped by output shard while the posters are still arriving, so the only wait for the
        # decisions is this one grouping, and each shard's kept posters go straight to its file.
        grouped = (
            posters
            | "ShardRows" >> beam.Map(shard_row)
            | "ByShard" >> GroupByShard(self._num_shards, lambda row: row[0])
        )
        outputs = grouped | "DropImageDuplicates" >> beam.ParDo(
            _ApplyImageDuplicatesFn(self._run_id), beam.pvalue.AsSingleton(decisions)
        ).with_outputs(DUPLICATES, main="shards")
        return DedupeOutputs(outputs.shards, outputs[DUPLICATES], scored)
