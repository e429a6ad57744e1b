"""Synthetic scrape-stage posters for the training tests: records and TFRecord folders."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Sequence

from imaging.images import normalise_image
from imaging.images import phash_hex
from schemas import PosterRecord
from storage.files import tfrecord_frame
from storage.runs import publish_run
from synthetic.catalog import make_catalog

FETCHED_AT = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def poster_record(movie_id: int, data: bytes, genres: Sequence[str] = ()) -> PosterRecord:
    """A PosterRecord as the scrape stage writes it, for poster bytes ``data``."""
    image = normalise_image(data)
    return PosterRecord(
        movie_id=movie_id, image_jpeg=image.jpeg, width=image.width, height=image.height,
        original_width=image.original_width, original_height=image.original_height,
        original_format=image.original_format, content_sha256=image.content_sha256,
        phash=phash_hex(image.phash), source_url=f"http://127.0.0.1/{movie_id}.jpg",
        fetched_at=FETCHED_AT, catalog_line=movie_id, genres=tuple(genres),
    )  # fmt: skip


def synthetic_records(n_films: int, seed: int = 0) -> list[PosterRecord]:
    """Posters of a synthetic catalog (no planted duplicates), whose pixels carry the genres."""
    catalog = make_catalog(n_films, seed=seed, exact_duplicate_fraction=0,
                           near_duplicate_fraction=0)  # fmt: skip
    return [
        poster_record(film.movie_id, catalog.poster_bytes(film.movie_id), film.genres)
        for film in catalog.films
    ]


def write_poster_folder(records: Sequence[PosterRecord], root: pathlib.Path, shards: int = 2):
    """Write records as a scrape output root (posters/run-0001/posters-*.tfrecord); return root."""
    folder = root / PosterRecord.TABLE / "run-0001"
    folder.mkdir(parents=True)
    for shard in range(shards):
        part = records[shard::shards]
        (folder / f"{PosterRecord.TABLE}-{shard:05d}-of-{shards:05d}.tfrecord").write_bytes(
            b"".join(tfrecord_frame(r.to_example()) for r in part)
        )
    publish_run(str(root), "run-0001", "test")
    return root
