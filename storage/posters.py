"""The scrape stage's tables read back: where its poster TFRecords and duplicate records are, and
every film's poster record (films that share a poster included)."""

from __future__ import annotations

import dataclasses
import json

from apache_beam.io.filesystems import FileSystems

from schemas import DuplicateRecord
from schemas import PosterRecord
from storage.files import read_parquet_records
from storage.files import read_tfrecord_records
from storage.files import write_bytes


def posters_glob(posters: str) -> str:
    """The TFRecord glob for --posters: a glob as given, or a scrape output root."""
    if any(ch in posters for ch in "*?[") or posters.endswith(".tfrecord"):
        return posters
    return FileSystems.join(posters, PosterRecord.TABLE, "*", f"{PosterRecord.TABLE}-*.tfrecord")


def duplicates_glob(posters: str, duplicates: str | None) -> str | None:
    """The DuplicateRecord glob: as given, else beside a scrape output root, else None."""
    if duplicates:
        return duplicates
    if posters_glob(posters) == posters:
        return None
    table = DuplicateRecord.TABLE
    return FileSystems.join(posters, table, "*", f"{table}-*.parquet")


def read_posters(posters: str) -> dict[int, PosterRecord]:
    """The scrape stage's posters by movie id (``posters``: its output root or a glob).

    Given an output root, films whose poster duplicates another film's (duplicates of kind
    exact or near, the latest record per film) are included too: the canonical film's image
    under their own id, title and year, as the embed stage gives them the canonical's vector.
    """
    films = {r.movie_id: r for r in read_tfrecord_records(posters_glob(posters), PosterRecord)}
    pattern = duplicates_glob(posters, None)
    if pattern is None:
        return films
    latest: dict[int, DuplicateRecord] = {}
    for record in read_parquet_records(pattern, DuplicateRecord):
        held = latest.get(record.movie_id)
        if held is None or record.recency() > held.recency():
            latest[record.movie_id] = record
    for movie_id, record in sorted(latest.items()):
        canonical = films.get(record.canonical_movie_id)
        shares_poster = record.kind in DuplicateRecord.POSTER_KINDS
        if shares_poster and canonical is not None and movie_id not in films:
            films[movie_id] = dataclasses.replace(
                canonical,
                movie_id=movie_id,
                title=record.title,
                year=record.year,
                catalog_line=record.line_number,
                imdb_id=None,
                tmdb_id=None,
                genres=(),
            )
    return films


FILM_INDEX = "films.json"
"""Beside a scrape run's poster shards: which films each shard holds (shard file name -> ids)."""


def film_index_path(folder: str) -> str:
    """The film index of the run folder that holds a scrape run's shards."""
    return FileSystems.join(folder, FILM_INDEX)


def write_film_index(folder: str, shards: dict[str, list[int]]) -> None:
    """Record which films each poster shard of a run holds (shard file name -> sorted ids)."""
    body = {name: sorted(int(m) for m in ids) for name, ids in sorted(shards.items())}
    write_bytes(film_index_path(folder), json.dumps(body, sort_keys=True).encode())


def read_film_index(folder: str) -> dict[str, frozenset[int]] | None:
    """A run folder's film index, or None when its scrape wrote none (an earlier version)."""
    path = film_index_path(folder)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        body = json.loads(handle.read())
    return {name: frozenset(ids) for name, ids in body.items()}
