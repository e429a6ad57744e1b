"""Real posters (../shared/data) served on 127.0.0.1 and scraped; cross-set duplicates found."""

from __future__ import annotations

import csv
import pathlib

import pyarrow.parquet as pq
import pytest
from PIL import Image

from imaging.image_match import DEFAULT_MIN_CONFIRMATION
from imaging.image_match import confirmation_score
from imaging.image_match import signature
from pipelines import scrape
from schemas import DuplicateRecord
from synthetic.catalog import Film
from synthetic.catalog import write_plain_csv
from synthetic.posters import phash64
from synthetic.web import PosterWeb

SET_B_ID_OFFSET = 10_000_000  # set_b rows get their own ids so only their art can pair them


def load_set(folder: pathlib.Path, offset: int) -> list[tuple[Film, pathlib.Path]]:
    rows = []
    with open(folder / "index.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            imdb_number = int(row["imdbId"][2:])
            movie_id = offset + imdb_number if offset else int(row["movieId"])
            title = row["title"]
            year = int(title[-5:-1]) if title.endswith(")") and title[-5:-1].isdigit() else 2000
            genres = tuple(g for g in row["genres"].split("|") if g and g[0] != "(")
            film = Film(movie_id, row["imdbId"], int(row["tmdbId"] or 0), title, year, genres)
            rows.append((film, folder / row["poster_file"]))
    return rows


@pytest.fixture(scope="module")
def real_run(shared_data, tmp_path_factory):
    set_a = load_set(shared_data / "posters" / "set_a", 0)
    set_b = load_set(shared_data / "posters" / "set_b", SET_B_ID_OFFSET)
    in_b = {f.imdb_id for f, _ in set_b}
    in_a = {f.imdb_id for f, _ in set_a}
    both_a = [(f, p) for f, p in set_a if f.imdb_id in in_b]
    both_b = [(f, p) for f, p in set_b if f.imdb_id in in_a]
    others = [(f, p) for f, p in set_a if f.imdb_id not in in_b][:300]
    chosen = both_a + others + both_b
    files = {f.movie_id: p for f, p in chosen}
    tmp = tmp_path_factory.mktemp("real")
    with PosterWeb([f for f, _ in chosen], lambda m: files[m].read_bytes()) as web:
        catalog = tmp / "plain.csv"
        write_plain_csv(catalog, [f for f, _ in chosen], web.poster_url)
        manifest = scrape.run([
            f"--catalog={catalog}", f"--output={tmp / 'out'}", f"--allowed_hosts={web.host}",
            "--requests_per_second_per_host=2000", "--fetch_concurrency=16",
        ])  # fmt: skip
    dups = [
        r
        for f in sorted((tmp / "out" / "duplicates").rglob("*.parquet"))
        for r in DuplicateRecord.from_arrow(pq.read_table(f))
    ]
    films = {f.movie_id: (f, p) for f, p in chosen}
    return manifest, dups, films, both_a, both_b


def test_real_posters_are_all_scraped_and_accounted_for(real_run):
    manifest, dups, films, _, _ = real_run
    assert manifest["accounting_ok"]
    assert manifest["input_rows"] == len(films)
    assert manifest["dead_lettered"] == 0, manifest["counts"]
    assert manifest["written"] + manifest["duplicates"] == len(films)


def test_same_art_across_sets_is_detected_and_distinct_films_are_not_merged(real_run):
    _, dups, films, both_a, both_b = real_run
    threshold = scrape.DEFAULT_NEAR_DUPLICATE_THRESHOLD
    pairs = {frozenset((d.movie_id, d.canonical_movie_id)) for d in dups}
    b_by_imdb = {f.imdb_id: (f, p) for f, p in both_b}
    same_art = kept_apart = 0
    for film_a, path_a in both_a:
        film_b, path_b = b_by_imdb[film_a.imdb_id]
        distance = bin(phash64(Image.open(path_a)) ^ phash64(Image.open(path_b))).count("1")
        score = confirmation_score(signature(path_a.read_bytes()), signature(path_b.read_bytes()))
        paired = frozenset((film_a.movie_id, film_b.movie_id)) in pairs
        if distance <= threshold and score >= DEFAULT_MIN_CONFIRMATION:
            same_art += 1
            assert paired, f"{film_a.title}: {distance} bits and {score:.3f} apart but not paired"
        else:
            kept_apart += paired is False
    assert same_art >= 200, f"only {same_art} of {len(both_a)} films share art across the sets"
    assert kept_apart == len(both_a) - same_art
    for record in dups:
        kept, dropped = films[record.canonical_movie_id][0], films[record.movie_id][0]
        assert kept.imdb_id == dropped.imdb_id, (
            f"distinct films merged: {dropped.title} into {kept.title} ({record.distance} bits)"
        )
        assert record.kind == "near" and record.distance <= threshold
        assert record.confirmation >= DEFAULT_MIN_CONFIRMATION
