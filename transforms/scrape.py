"""The scrape stage as one composite: catalog in, deduplicated PosterRecords and side tables out.

Steps: read and parse the catalog (malformed rows dead-lettered), drop catalog duplicates (film
id), skip films an earlier run already wrote, resolve + fetch + validate posters (failures
dead-lettered), drop exact and near duplicates, write sharded TFRecords, the dead-letter and
duplicates tables, and the run manifest whose counts must add up.
"""

from __future__ import annotations

import dataclasses
import posixpath
import typing

import apache_beam as beam

from imaging.image_match import DEFAULT_MIN_CONFIRMATION
from imaging.phash_index import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from monitoring import progress
from schemas import DeadLetter
from schemas import DuplicateRecord
from schemas import PosterRecord
from storage.files import parquet_encoder
from storage.files import read_tfrecord_records
from storage.files import shard_path
from storage.posters import film_index_path
from storage.posters import write_film_index
from transforms import manifest
from transforms.catalog import CatalogFormat
from transforms.catalog import ReadCatalog
from transforms.dedupe import DedupeCatalog
from transforms.dedupe import DedupePosters
from transforms.dedupe import duplicate_groups
from transforms.dedupe import rejected_pairs
from transforms.fetch import PROGRESS_TASK
from transforms.fetch import FetchPosters
from transforms.fetch_worker import FetchSettings
from transforms.manifest import OutputLayout
from transforms.sinks import WriteGroupedShards
from transforms.sinks import WriteShards

POSTERS_TABLE = PosterRecord.TABLE
TFRECORD_SUFFIX = ".tfrecord"
PARQUET_SUFFIX = ".parquet"


@dataclasses.dataclass(frozen=True)
class ScrapeConfig:
    """Everything one scrape run needs, fixed before the pipeline is built."""

    catalog: str
    layout: OutputLayout
    catalog_format: CatalogFormat | None
    fetch: FetchSettings
    near_duplicate_threshold: int = DEFAULT_NEAR_DUPLICATE_THRESHOLD
    min_confirmation: float = DEFAULT_MIN_CONFIRMATION
    num_shards: int = 4
    existing_runs: tuple[str, ...] = ()
    fetch_processes: int = 0


def _index_entry(shard_and_items: tuple, prefix: str, num_shards: int) -> tuple[str, list[int]]:
    """(shard file name, its films) of one group of kept posters."""
    index, items = shard_and_items
    name = posixpath.basename(shard_path(prefix, index, num_shards, TFRECORD_SUFFIX))
    return name, [movie_id for movie_id, _ in items]


def _write_index(entries: list[tuple[str, list[int]]], folder: str) -> tuple[str, int]:
    """Write the run's film index (embed accounts for every film from it); (path, films)."""
    write_film_index(folder, dict(entries))
    return film_index_path(folder), sum(len(ids) for _, ids in entries)


class ScrapeOutputs(typing.NamedTuple):
    """The PCollections a scrape run produces."""

    dead_letter: beam.PCollection
    duplicates: beam.PCollection
    written_files: beam.PCollection
    counts: dict[str, beam.PCollection]


def framed_records(records: typing.Iterable[tuple[int, bytes]]) -> bytes:
    """A TFRecord file of (movie id, PosterRecord framed when it was fetched) pairs."""
    return b"".join(record for _, record in records)


class ReadExistingPosters(beam.PTransform):
    """PosterRecords written by the given completed runs of the same output root."""

    def __init__(self, layout: OutputLayout, run_ids: typing.Sequence[str]) -> None:
        super().__init__()
        self._patterns = [layout.table_glob(POSTERS_TABLE, TFRECORD_SUFFIX, r) for r in run_ids]

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "ExistingPatterns" >> beam.Create(self._patterns)
            | "ReadExisting" >> beam.FlatMap(read_tfrecord_records, PosterRecord)
        )


class _SkipExistingFn(beam.DoFn):
    def __init__(self) -> None:
        self._skipped = beam.metrics.Metrics.counter("scrape", "already_present")

    def process(self, entry, existing_ids: set[int]):
        if entry.movie_id in existing_ids:
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput("already_present", entry)
        else:
            progress.add_total(PROGRESS_TASK)
            yield entry


class ScrapePosters(beam.PTransform):
    """Catalog file -> written poster TFRecords, dead-letter and duplicates tables."""

    def __init__(self, config: ScrapeConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, pbegin: beam.pvalue.PBegin) -> ScrapeOutputs:
        config = self._config
        run_id = config.layout.run_id
        catalog = pbegin | "ReadCatalog" >> ReadCatalog(
            config.catalog, run_id=run_id, catalog_format=config.catalog_format
        )
        unique = catalog.entries | "DedupeCatalog" >> DedupeCatalog(run_id)
        existing = pbegin | "ReadExistingPosters" >> ReadExistingPosters(
            config.layout, config.existing_runs
        )
        existing_ids = (
            existing
            | "ExistingIds" >> beam.Map(lambda r: r.movie_id)
            | "ExistingIdSet" >> beam.combiners.ToSet()
        )
        todo = unique.entries | "SkipExisting" >> beam.ParDo(
            _SkipExistingFn(), beam.pvalue.AsSingleton(existing_ids)
        ).with_outputs("already_present", main="entries")
        spread = todo.entries | "SpreadFetches" >> beam.Reshuffle()
        fetched = spread | "FetchPosters" >> FetchPosters(config.fetch, config.fetch_processes)
        deduped = fetched.posters | "DedupePosters" >> DedupePosters(
            run_id,
            config.near_duplicate_threshold,
            existing,
            config.min_confirmation,
            config.num_shards,
        )
        dead_letter = (
            catalog.dead_letter,
            fetched.dead_letter,
        ) | "AllDeadLetters" >> beam.Flatten()
        duplicates = (unique.duplicates, deduped.duplicates) | "AllDuplicates" >> beam.Flatten()

        layout = config.layout
        written_posters = deduped.shards | "WritePosters" >> WriteGroupedShards(
            layout.table_prefix(POSTERS_TABLE),
            TFRECORD_SUFFIX,
            config.num_shards,
            framed_records,
            sort_key=lambda movie_and_record: movie_and_record[0],
        )
        written_dead = dead_letter | "WriteDeadLetters" >> WriteShards(
            layout.table_prefix(DeadLetter.TABLE),
            PARQUET_SUFFIX,
            1,
            parquet_encoder(DeadLetter),
            sort_key=lambda d: (d.line_number or 0, d.stage, d.reason, d.input_row),
        )
        written_dups = duplicates | "WriteDuplicates" >> WriteShards(
            layout.table_prefix(DuplicateRecord.TABLE),
            PARQUET_SUFFIX,
            1,
            parquet_encoder(DuplicateRecord),
            sort_key=lambda d: (d.line_number, d.movie_id),
        )
        prefix = layout.table_prefix(POSTERS_TABLE)
        written_index = (
            deduped.shards
            | "FilmIndexEntries" >> beam.Map(_index_entry, prefix, config.num_shards)
            | "CollectFilmIndex" >> beam.combiners.ToList()
            | "WriteFilmIndex" >> beam.Map(_write_index, posixpath.dirname(prefix))
        )
        written_files = (
            written_posters,
            written_dead,
            written_dups,
            written_index,
        ) | "AllWrittenFiles" >> beam.Flatten()
        rows = (catalog.entries, catalog.dead_letter) | "AllCatalogRows" >> beam.Flatten()
        counts = {
            "input_rows": manifest.count(rows, "CountCatalogRows"),
            "written": written_posters
            | "ShardCounts" >> beam.Map(lambda path_and_count: path_and_count[1])
            | "SumWritten" >> beam.CombineGlobally(sum),
            "duplicates": manifest.count(duplicates, "CountDuplicates"),
            "dead_lettered": manifest.count(dead_letter, "CountDeadLetters"),
            "already_present": manifest.count(todo.already_present, "CountAlreadyPresent"),
            "dead_letter_reasons": manifest.dead_letter_reasons(dead_letter, "DeadLetterReasons"),
            "duplicate_kinds": manifest.count_by(duplicates, "DuplicateKinds", lambda d: d.kind),
            "files_written": manifest.count(written_files, "CountFiles"),
            "near_candidates": manifest.count(deduped.scored, "CountNearCandidates"),
            "duplicate_groups": duplicates
            | "CollectDuplicates" >> beam.combiners.ToList()
            | "DuplicateGroups" >> beam.Map(duplicate_groups),
            "near_candidates_kept_apart": deduped.scored
            | "CollectScored" >> beam.combiners.ToList()
            | "RejectedPairs" >> beam.Map(rejected_pairs, config.min_confirmation),
        }
        return ScrapeOutputs(dead_letter, duplicates, written_files, counts)
