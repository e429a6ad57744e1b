"""Every table of the system, defined once.

Each class is the single definition of a table: its TFRecord feature spec, Arrow (Parquet)
schema and BigQuery schema are derived from it (see :mod:`schemas.core`). Required columns come
first, then nullable and repeated ones (dataclass ordering).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import ClassVar

from schemas.core import Kind
from schemas.core import Record
from schemas.core import column


@dataclasses.dataclass(frozen=True)
class CatalogEntry(Record):
    """One parsed catalog row: a film and what is known about where its poster is."""

    TABLE = "catalog_entries"

    line_number: int = column(Kind.INT64, "1-based line of the row in the catalog file")
    movie_id: int = column(Kind.INT64, "The catalog's primary film id (MovieLens id for links.csv)")
    imdb_id: str | None = column(Kind.STRING, "IMDb title id, 'tt' + 7+ digits", nullable=True)
    tmdb_id: int | None = column(Kind.INT64, "TMDb movie id", nullable=True)
    title: str | None = column(Kind.STRING, "Film title", nullable=True)
    year: int | None = column(Kind.INT64, "Release year", nullable=True)
    poster_url: str | None = column(Kind.STRING, "Poster URL given by the catalog", nullable=True)
    genres: tuple[str, ...] = column(Kind.STRING, "MovieLens genres", repeated=True)


@dataclasses.dataclass(frozen=True)
class PosterRecord(Record):
    """A validated, normalised, deduplicated poster: the scrape stage's TFRecord output."""

    TABLE = "posters"

    movie_id: int = column(Kind.INT64, "The catalog's primary film id")
    image_jpeg: bytes = column(Kind.BYTES, "Normalised RGB JPEG bytes")
    width: int = column(Kind.INT64, "Width of the stored JPEG in pixels")
    height: int = column(Kind.INT64, "Height of the stored JPEG in pixels")
    original_width: int = column(Kind.INT64, "Width of the fetched image in pixels")
    original_height: int = column(Kind.INT64, "Height of the fetched image in pixels")
    original_format: str = column(Kind.STRING, "Pillow format of the fetched image (JPEG, PNG...)")
    content_sha256: str = column(Kind.STRING, "SHA-256 (hex) of the fetched bytes")
    phash: str = column(Kind.STRING, "64-bit DCT perceptual hash, 16 hex digits")
    source_url: str = column(Kind.STRING, "URL the image was fetched from (secrets removed)")
    fetched_at: datetime.datetime = column(Kind.TIMESTAMP, "When the image was fetched (UTC)")
    catalog_line: int = column(Kind.INT64, "Line of the film in the catalog file")
    imdb_id: str | None = column(Kind.STRING, "IMDb title id", nullable=True)
    tmdb_id: int | None = column(Kind.INT64, "TMDb movie id", nullable=True)
    title: str | None = column(Kind.STRING, "Film title", nullable=True)
    year: int | None = column(Kind.INT64, "Release year", nullable=True)
    genres: tuple[str, ...] = column(Kind.STRING, "MovieLens genres", repeated=True)


@dataclasses.dataclass(frozen=True)
class EmbeddingRow(Record):
    """One poster's embedding vector."""

    TABLE = "embeddings"

    movie_id: int = column(Kind.INT64, "Film id")
    dim: int = column(Kind.INT64, "Length of the embedding")
    model_name: str = column(Kind.STRING, "Backbone or trained model name")
    model_version: str = column(Kind.STRING, "Digest of backbone, weights and preprocessing")
    content_sha256: str = column(Kind.STRING, "SHA-256 of the poster bytes that were embedded")
    poster_of: int = column(
        Kind.INT64,
        "Film whose poster was embedded: movie_id itself, or the canonical film when this film's "
        "poster duplicates it (films sharing a poster are never each other's neighbours)",
    )
    embedded_at: datetime.datetime = column(Kind.TIMESTAMP, "When the vector was computed (UTC)")
    embedding: tuple[float, ...] = column(
        Kind.FLOAT32, "L2-normalised vector", repeated=True, fixed_size=True
    )


@dataclasses.dataclass(frozen=True)
class NeighborRow(Record):
    """One of a film's nearest neighbours for one run date."""

    TABLE = "neighbors"

    movie_id: int = column(Kind.INT64, "Query film id")
    rank: int = column(Kind.INT64, "1-based rank among the film's neighbours")
    neighbor_id: int = column(Kind.INT64, "Neighbour film id")
    score: float = column(Kind.FLOAT64, "Similarity (higher is closer)")
    source: str = column(Kind.STRING, "Where the neighbour comes from: cowatch, poster, both")
    model_version: str = column(Kind.STRING, "Model version of the vectors")
    run_date: datetime.date = column(Kind.DATE, "Nightly run date (partition)")


@dataclasses.dataclass(frozen=True)
class CandidateRow(Record):
    """One candidate film for one user for one run date."""

    TABLE = "candidates"

    user_id: int = column(Kind.INT64, "User id")
    rank: int = column(Kind.INT64, "1-based rank among the user's candidates")
    movie_id: int = column(Kind.INT64, "Candidate film id")
    score: float = column(
        Kind.FLOAT64, "Blended neighbour score x recency x rating weight, plus popularity"
    )
    model_version: str = column(Kind.STRING, "Model version of the vectors")
    run_date: datetime.date = column(Kind.DATE, "Nightly run date (partition)")
    contributing_movie_ids: tuple[int, ...] = column(
        Kind.INT64, "Watched films that contributed to the score", repeated=True
    )


@dataclasses.dataclass(frozen=True)
class WatchEvent(Record):
    """One watch-history event (MovieLens ratings form)."""

    TABLE = "watch_history"

    user_id: int = column(Kind.INT64, "User id")
    movie_id: int = column(Kind.INT64, "Film id")
    rating: float = column(Kind.FLOAT32, "Rating, 0.5 to 5.0")
    watched_at: datetime.datetime = column(Kind.TIMESTAMP, "When the film was rated (UTC)")


@dataclasses.dataclass(frozen=True)
class DeadLetter(Record):
    """An input that could not be processed, with the stage and the reason."""

    TABLE = "dead_letter"

    run_id: str = column(Kind.STRING, "Run that produced the record")
    stage: str = column(Kind.STRING, "Stage that failed (parse, resolve, fetch, validate, ...)")
    reason: str = column(Kind.STRING, "Machine-readable reason code")
    detail: str = column(Kind.STRING, "Human-readable explanation (secrets removed)")
    input_row: str = column(Kind.STRING, "The input as read (catalog line or record key)")
    attempts: int = column(Kind.INT64, "HTTP attempts made (0 when none)")
    line_number: int | None = column(Kind.INT64, "Catalog line number", nullable=True)
    movie_id: int | None = column(Kind.INT64, "Film id when known", nullable=True)
    url: str | None = column(Kind.STRING, "URL involved (secrets removed)", nullable=True)
    http_status: int | None = column(Kind.INT64, "Last HTTP status when any", nullable=True)


@dataclasses.dataclass(frozen=True)
class DuplicateRecord(Record):
    """A catalog row whose poster was not stored again: it is another row's (the canonical's).

    The film is not lost: for kinds ``exact`` and ``near`` it shares the canonical film's poster
    and vector (``EmbeddingRow.poster_of``); ``film_id`` rows are the same film listed twice.
    """

    TABLE = "duplicates"
    FILM_ID: ClassVar[str] = "film_id"
    EXACT: ClassVar[str] = "exact"
    NEAR: ClassVar[str] = "near"
    POSTER_KINDS: ClassVar[tuple[str, ...]] = (EXACT, NEAR)
    """The kinds whose film shares the canonical film's poster (and vector)."""

    run_id: str = column(Kind.STRING, "Run that produced the record")
    movie_id: int = column(Kind.INT64, "Film id of the dropped row")
    canonical_movie_id: int = column(Kind.INT64, "Film id of the kept (canonical) poster")
    kind: str = column(Kind.STRING, "film_id, exact or near")
    distance: int = column(Kind.INT64, "Hamming distance of perceptual hashes (0 unless near)")
    line_number: int = column(Kind.INT64, "Catalog line of the dropped row")
    content_sha256: str | None = column(Kind.STRING, "SHA-256 of the dropped bytes", nullable=True)
    canonical_content_sha256: str | None = column(
        Kind.STRING, "SHA-256 of the canonical bytes", nullable=True
    )
    source_url: str | None = column(Kind.STRING, "URL of the dropped poster", nullable=True)
    confirmation: float | None = column(
        Kind.FLOAT64,
        "Near only: correlation of the two posters' aligned thumbnails (the second check)",
        nullable=True,
    )
    title: str | None = column(Kind.STRING, "Title of the dropped row's film", nullable=True)
    year: int | None = column(Kind.INT64, "Release year of the dropped row's film", nullable=True)

    def recency(self) -> tuple[str, int]:
        """Orders one film's records: the latest scrape run (films are re-fetched) last."""
        return self.run_id, self.line_number


@dataclasses.dataclass(frozen=True)
class RunManifest(Record):
    """What one stage run read, wrote and dropped, and whether its counts add up."""

    TABLE = "run_manifests"

    run_id: str = column(Kind.STRING, "Run id")
    stage: str = column(Kind.STRING, "Stage name")
    started_at: datetime.datetime = column(Kind.TIMESTAMP, "Pipeline construction time (UTC)")
    finished_at: datetime.datetime = column(Kind.TIMESTAMP, "Manifest write time (UTC)")
    input_path: str = column(Kind.STRING, "Input read")
    output_path: str = column(Kind.STRING, "Output root written")
    input_rows: int = column(Kind.INT64, "Rows read")
    written: int = column(Kind.INT64, "Rows written to the main output")
    duplicates: int = column(Kind.INT64, "Rows dropped as duplicates")
    dead_lettered: int = column(Kind.INT64, "Rows sent to the dead-letter table")
    already_present: int = column(Kind.INT64, "Rows skipped because an earlier run wrote them")
    accounting_ok: bool = column(
        Kind.BOOL, "input_rows == written + duplicates + dead_lettered + already_present"
    )
    counts_json: str = column(Kind.STRING, "Per-reason and per-kind counts as JSON")
    options_json: str = column(Kind.STRING, "Options of the run as JSON (secrets removed)")


ALL_TABLES: tuple[type[Record], ...] = (
    CatalogEntry,
    PosterRecord,
    EmbeddingRow,
    NeighborRow,
    CandidateRow,
    WatchEvent,
    DeadLetter,
    DuplicateRecord,
    RunManifest,
)
