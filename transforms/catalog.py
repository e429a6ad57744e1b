"""Reading film catalogs: the four accepted CSV formats, parsed into catalog entries.

A catalog is a CSV file with a header row. Its format is detected from the header (or given
with ``--catalog_format``):

- ``links``: MovieLens ``links.csv`` (``movieId,imdbId,tmdbId``);
- ``tmdb5000``: Kaggle ``tmdb_5000_movies.csv`` (the TMDb id is the film id);
- ``moviegenre``: Kaggle ``MovieGenre.csv`` (the IMDb number is the film id);
- ``plain``: ``movie_id,poster_url[,title,year,genres]``.

Every data row becomes exactly one :class:`schemas.CatalogEntry` or one
:class:`CatalogParseError`; a malformed row never raises. :class:`ReadCatalog` does the same in
a pipeline and routes parse errors to a dead-letter output.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import urllib.parse
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

import schemas
from schemas.catalogs import CATALOG_HEADERS
from schemas.catalogs import CatalogFormat
from schemas.genres import normalise_genres

ENTRIES_TAG = "entries"
DEAD_LETTER_TAG = "dead_letter"
PARSE_STAGE = "parse"
METRICS_NAMESPACE = "scrape"
MAX_RAW_CHARS = 2000
MIN_YEAR = 1870
MAX_YEAR = 2100
_NO_GENRES = "(no genres listed)"
_IMDB_ID = re.compile(r"(?:tt)?(\d{1,10})", re.IGNORECASE)
_INTEGER = re.compile(r"\+?\d+")
_SPACE = re.compile(r"\s")
_RELEASE_DATE = re.compile(r"(\d{4})-\d{2}-\d{2}")
_TITLE_WITH_YEAR = re.compile(r"(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*")


_REQUIRED_COLUMNS = {fmt: len(header) for fmt, header in CATALOG_HEADERS.items()}
_REQUIRED_COLUMNS[CatalogFormat.PLAIN] = 2
_SOURCES = {
    CatalogFormat.LINKS: "MovieLens links.csv",
    CatalogFormat.TMDB5000: "Kaggle tmdb_5000_movies.csv",
    CatalogFormat.MOVIEGENRE: "Kaggle MovieGenre.csv",
    CatalogFormat.PLAIN: "optional columns in brackets",
}


def _describe_header(fmt: CatalogFormat) -> str:
    header = CATALOG_HEADERS[fmt]
    required = _REQUIRED_COLUMNS[fmt]
    text = ",".join(header[:required])
    if required < len(header):
        text += "[," + ",".join(header[required:]) + "]"
    return f"{fmt.value}: {text} ({_SOURCES[fmt]})"


ACCEPTED_HEADERS = "; ".join(_describe_header(fmt) for fmt in CatalogFormat)
"""The four accepted header rows, as shown in error messages."""


def _normalise_name(name: str) -> str:
    return name.replace("\ufeff", "").strip().lower()


def _column_index(header: Sequence[str], fmt: CatalogFormat) -> dict[str, int] | None:
    """Map each of the format's column names (lower case) present in ``header`` to its index."""
    positions = {_normalise_name(name): i for i, name in enumerate(header)}
    wanted = [name.lower() for name in CATALOG_HEADERS[fmt]]
    if not all(name in positions for name in wanted[: _REQUIRED_COLUMNS[fmt]]):
        return None
    return {name: positions[name] for name in wanted if name in positions}


def detect_format(header: Sequence[str]) -> CatalogFormat:
    """The catalog format whose columns the header row holds (case and order insensitive)."""
    for fmt in CatalogFormat:
        if _column_index(header, fmt) is not None:
            return fmt
    shown = ",".join(name.replace("\ufeff", "").strip() for name in header)
    raise ValueError(
        f"unrecognised catalog header {shown!r}; the accepted headers are: {ACCEPTED_HEADERS}. "
        f"Pass --catalog_format ({', '.join(f.value for f in CatalogFormat)}) to name the "
        "format of a file whose header differs."
    )


def parse_catalog_format(value: CatalogFormat | str | None) -> CatalogFormat | None:
    """A catalog format from its name (case-insensitive); ``None`` stays ``None``."""
    if value is None or isinstance(value, CatalogFormat):
        return value
    try:
        return CatalogFormat(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(fmt.value for fmt in CatalogFormat)
        raise ValueError(
            f"unknown catalog format {value!r}; choose one of: {choices} "
            "(or leave it unset to detect the format from the header)"
        ) from None


def decode_catalog_bytes(data: bytes) -> str:
    """Catalog text from file bytes: UTF-8 (BOM removed), else Windows-1252/Latin-1."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


@dataclasses.dataclass(frozen=True)
class CatalogParseError:
    """A catalog row that could not be parsed, with where it is and why."""

    line_number: int
    raw: str
    reason: str
    detail: str


class _RowError(Exception):
    """Raised inside row parsing; becomes a :class:`CatalogParseError`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Row:
    """The cells of one data row, looked up by the format's column names."""

    def __init__(self, cells: Sequence[str], columns: dict[str, int], fmt: CatalogFormat) -> None:
        self._cells = cells
        self._columns = columns
        self._names = {name.lower(): name for name in CATALOG_HEADERS[fmt]}

    def get(self, column: str) -> str:
        index = self._columns.get(column.lower())
        return "" if index is None else self._cells[index].strip()

    def error(self, reason: str, column: str, expected: str) -> _RowError:
        value = self.get(column)[:200]
        return _RowError(reason, f"column {self._names[column.lower()]!r} is {value!r}, {expected}")

    def positive_int(self, column: str, reason: str) -> int:
        value = self.get(column)
        if not _INTEGER.fullmatch(value) or int(value) <= 0:
            raise self.error(reason, column, "not a positive integer")
        return int(value)

    def optional_positive_int(self, column: str, reason: str) -> int | None:
        return self.positive_int(column, reason) if self.get(column) else None

    def imdb_id(self, column: str) -> str | None:
        value = self.get(column)
        if not value:
            return None
        match = _IMDB_ID.fullmatch(value)
        if match is None or int(match.group(1)) <= 0:
            raise self.error("bad_imdb_id", column, "not an IMDb number (like 0114709)")
        return f"tt{int(match.group(1)):07d}"

    def year(self, column: str) -> int | None:
        value = self.get(column)
        if not value:
            return None
        if not _INTEGER.fullmatch(value) or not MIN_YEAR <= int(value) <= MAX_YEAR:
            raise self.error("bad_year", column, f"not a year from {MIN_YEAR} to {MAX_YEAR}")
        return int(value)

    def release_year(self, column: str) -> int | None:
        value = self.get(column)
        if not value:
            return None
        match = _RELEASE_DATE.fullmatch(value)
        if match is None or not MIN_YEAR <= int(match.group(1)) <= MAX_YEAR:
            raise self.error("bad_year", column, "not a release date like 1995-10-30")
        return int(match.group(1))

    def url(self, column: str) -> str | None:
        value = self.get(column)
        if not value:
            return None
        parts = urllib.parse.urlsplit(value)
        if (
            parts.scheme.lower() not in ("http", "https")
            or not parts.netloc
            or _SPACE.search(value)
        ):
            raise self.error("bad_url", column, "not an http(s) URL")
        return value

    def pipe_genres(self, column: str) -> tuple[str, ...]:
        value = self.get(column)
        if not value or value == _NO_GENRES:
            return ()
        return normalise_genres(value.split("|"))

    def json_genres(self, column: str) -> tuple[str, ...]:
        value = self.get(column)
        if not value:
            return ()
        try:
            names = [item["name"] for item in json.loads(value)]
        except (ValueError, TypeError, KeyError):
            raise self.error("bad_genres", column, 'not a JSON list of {"id", "name"}') from None
        if not all(isinstance(name, str) for name in names):
            raise self.error("bad_genres", column, "a list with a genre name that is not text")
        return normalise_genres(names)

    def title_and_year(self, column: str) -> tuple[str | None, int | None]:
        value = self.get(column)
        match = _TITLE_WITH_YEAR.fullmatch(value)
        if match is None or not MIN_YEAR <= int(match.group("year")) <= MAX_YEAR:
            return (value or None), None
        return (match.group("title") or None), int(match.group("year"))


def _entry(row: _Row, fmt: CatalogFormat, line_number: int) -> schemas.CatalogEntry:
    imdb_id = None
    tmdb_id = None
    title = None
    year = None
    poster_url = None
    genres: tuple[str, ...] = ()
    if fmt == CatalogFormat.LINKS:
        movie_id = row.positive_int("movieId", "bad_movie_id")
        imdb_id = row.imdb_id("imdbId")
        tmdb_id = row.optional_positive_int("tmdbId", "bad_tmdb_id")
    elif fmt == CatalogFormat.TMDB5000:
        movie_id = row.positive_int("id", "bad_movie_id")
        tmdb_id = movie_id
        title = row.get("title") or None
        year = row.release_year("release_date")
        genres = row.json_genres("genres")
    elif fmt == CatalogFormat.MOVIEGENRE:
        movie_id = row.positive_int("imdbId", "bad_movie_id")
        imdb_id = f"tt{movie_id:07d}"
        title, year = row.title_and_year("Title")
        genres = row.pipe_genres("Genre")
        poster_url = row.url("Poster")
    else:
        movie_id = row.positive_int("movie_id", "bad_movie_id")
        poster_url = row.url("poster_url")
        title = row.get("title") or None
        year = row.year("year")
        genres = row.pipe_genres("genres")
    if poster_url is None and imdb_id is None and tmdb_id is None:
        raise _RowError(
            "missing_poster_source",
            f"film {movie_id} has no poster URL, IMDb id or TMDb id to find its poster by",
        )
    return schemas.CatalogEntry(
        line_number=line_number,
        movie_id=movie_id,
        imdb_id=imdb_id,
        tmdb_id=tmdb_id,
        title=title,
        year=year,
        poster_url=poster_url,
        genres=genres,
    )


class _RecordingLines:
    """Iterates physical lines and keeps the ones read since the last :meth:`take`."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self._taken: list[str] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self._taken.append(line)
        return line

    def take(self) -> str:
        raw = "".join(self._taken).rstrip("\r\n")
        self._taken = []
        return raw[:MAX_RAW_CHARS]


def _columns_for(header: Sequence[str], fmt: CatalogFormat) -> dict[str, int]:
    """Column positions by name, or by the format's column order when the names differ."""
    columns = _column_index(header, fmt)
    if columns is not None:
        return columns
    names = [name.lower() for name in CATALOG_HEADERS[fmt]]
    if not _REQUIRED_COLUMNS[fmt] <= len(header) <= len(names):
        raise ValueError(
            f"catalog header has {len(header)} columns, which does not fit the "
            f"{fmt.value} format ({_describe_header(fmt)})"
        )
    return {name: i for i, name in enumerate(names[: len(header)])}


def parse_catalog(
    source: str | Iterable[str], catalog_format: CatalogFormat | str | None = None
) -> Iterator[schemas.CatalogEntry | CatalogParseError]:
    """Parse catalog text (or its lines) into one entry or parse error per data row."""
    lines = io.StringIO(source, newline="") if isinstance(source, str) else source
    recorder = _RecordingLines(lines)
    reader = csv.reader(recorder, strict=True)
    fmt = parse_catalog_format(catalog_format)
    header: list[str] | None = None
    columns: dict[str, int] = {}
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raw = recorder.take()
            if header is None:
                raise ValueError(
                    f"catalog header on line {start} is not valid CSV: {error}"
                ) from None
            yield CatalogParseError(start, raw, "bad_csv", f"row is not valid CSV: {error}")
            continue
        raw = recorder.take()
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if header is None:
            header = cells
            fmt = fmt or detect_format(header)
            columns = _columns_for(header, fmt)
            continue
        if len(cells) != len(header):
            yield CatalogParseError(
                start,
                raw,
                "wrong_column_count",
                f"row has {len(cells)} columns but the header has {len(header)}",
            )
            continue
        try:
            yield _entry(_Row(cells, columns, fmt), fmt, start)
        except _RowError as error:
            yield CatalogParseError(start, raw, error.reason, error.detail)


def read_catalog_header(path: str) -> list[str]:
    """The header row of a catalog file (local, gs:// or any Beam filesystem; gzip allowed)."""
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"catalog file {path} does not exist")
    with FileSystems.open(path) as handle:
        line = handle.readline()
        while line and not line.strip():
            line = handle.readline()
    for row in csv.reader(io.StringIO(decode_catalog_bytes(line), newline="")):
        return row
    return []


class _ParseCatalogFn(beam.DoFn):
    """Reads a whole catalog file; emits entries, and dead letters on a tagged output."""

    def __init__(self, run_id: str, catalog_format: CatalogFormat) -> None:
        self._run_id = run_id
        self._catalog_format = catalog_format
        self._rows = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "catalog_rows")
        self._errors = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "catalog_parse_errors")

    def process(self, path: str) -> Iterator[schemas.CatalogEntry | beam.pvalue.TaggedOutput]:
        with FileSystems.open(path) as handle:
            text = decode_catalog_bytes(handle.read())
        for item in parse_catalog(text, self._catalog_format):
            self._rows.inc()
            if isinstance(item, CatalogParseError):
                self._errors.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, self._dead_letter(item))
            else:
                yield item

    def _dead_letter(self, error: CatalogParseError) -> schemas.DeadLetter:
        return schemas.DeadLetter(
            run_id=self._run_id,
            stage=PARSE_STAGE,
            reason=error.reason,
            detail=error.detail,
            input_row=error.raw,
            attempts=0,
            line_number=error.line_number,
            movie_id=None,
            url=None,
            http_status=None,
        )


class CatalogOutputs(NamedTuple):
    """The outputs of :class:`ReadCatalog`."""

    entries: beam.PCollection
    dead_letter: beam.PCollection


class ReadCatalog(beam.PTransform):
    """Reads a catalog file into CatalogEntry rows plus parse-stage DeadLetter rows."""

    def __init__(
        self, path: str, run_id: str, catalog_format: CatalogFormat | str | None = None
    ) -> None:
        super().__init__()
        if not path:
            raise ValueError("ReadCatalog needs the catalog path (--catalog)")
        if not run_id:
            raise ValueError("ReadCatalog needs a non-empty run_id")
        fmt = parse_catalog_format(catalog_format)
        if fmt is None:
            fmt = detect_format(read_catalog_header(path))
        self._path = path
        self._run_id = run_id
        self._catalog_format = fmt

    @property
    def catalog_format(self) -> CatalogFormat:
        """The format the catalog is read as (given or detected)."""
        return self._catalog_format

    def expand(self, pbegin: beam.pvalue.PBegin) -> CatalogOutputs:
        """Wire reading, parsing and spreading of the catalog rows."""
        outputs = (
            pbegin
            | "CatalogPath" >> beam.Create([self._path])
            | "ParseCatalog"
            >> beam.ParDo(_ParseCatalogFn(self._run_id, self._catalog_format)).with_outputs(
                DEAD_LETTER_TAG, main=ENTRIES_TAG
            )
        )
        entries = outputs[ENTRIES_TAG] | "SpreadEntries" >> beam.Reshuffle()
        return CatalogOutputs(entries=entries, dead_letter=outputs[DEAD_LETTER_TAG])
