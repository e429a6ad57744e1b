"""The synthetic catalog: determinism, planted duplicates, watch history and CSV writers."""

from __future__ import annotations

import collections
import csv
import json
import pathlib
import re

import pytest

from synthetic import catalog as cat_mod
from synthetic.catalog import GENRES
from synthetic.catalog import LOOKS
from synthetic.catalog import SyntheticCatalog
from synthetic.catalog import film_look
from synthetic.catalog import make_catalog
from synthetic.catalog import make_watch_history
from synthetic.catalog import user_looks
from synthetic.catalog import user_tastes
from synthetic.catalog import write_links_csv
from synthetic.catalog import write_moviegenre_csv
from synthetic.catalog import write_plain_csv
from synthetic.catalog import write_ratings_csv
from synthetic.catalog import write_tmdb5000_csv


def _url(film: cat_mod.Film) -> str:
    """A poster URL for the URL-column writers."""
    return f"http://127.0.0.1:9/posters/{film.movie_id}.jpg"


def _read(path: pathlib.Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_genre_list_is_movielens() -> None:
    assert len(GENRES) == 19
    assert GENRES[0] == "Action" and GENRES[-1] == "Western"
    assert "Film-Noir" in GENRES and "Sci-Fi" in GENRES and "IMAX" in GENRES


def test_same_seed_same_catalog_and_bytes() -> None:
    a = make_catalog(40, seed=7)
    b = make_catalog(40, seed=7)
    assert a.films == b.films
    assert a.duplicates == b.duplicates
    for film in a.films[:10]:
        assert a.poster_bytes(film.movie_id) == b.poster_bytes(film.movie_id)
        assert a.poster_path(film.movie_id) == b.poster_path(film.movie_id)


def test_different_seed_different_catalog() -> None:
    a = make_catalog(40, seed=7)
    b = make_catalog(40, seed=8)
    assert [f.title for f in a.films] != [f.title for f in b.films]
    assert a.poster_bytes(a.films[0].movie_id) != b.poster_bytes(b.films[0].movie_id)


def test_film_fields(catalog: SyntheticCatalog) -> None:
    films = catalog.films
    ids = [f.movie_id for f in films]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert any(b - a > 1 for a, b in zip(ids, ids[1:], strict=False)), "ids should be sparse"
    assert len({f.title for f in films}) == len(films)
    assert len({f.imdb_id for f in films}) == len(films)
    assert len({f.tmdb_id for f in films}) == len(films)
    for film in films:
        assert re.fullmatch(r"tt\d{7}", film.imdb_id)
        assert 1930 <= film.year <= 2023
        assert 1 <= len(film.genres) <= 3
        assert len(set(film.genres)) == len(film.genres)
        assert set(film.genres) <= set(GENRES)
    primary = collections.Counter(f.genres[0] for f in films)
    assert primary["Drama"] > primary.get("Western", 0)
    assert primary["Comedy"] > primary.get("Musical", 0)


def test_film_lookup_and_paths(catalog: SyntheticCatalog) -> None:
    film = catalog.films[5]
    assert catalog.film(film.movie_id) is film
    with pytest.raises(KeyError):
        catalog.film(-1)
    paths = [catalog.poster_path(f.movie_id) for f in catalog.films]
    assert len(set(paths)) == len(paths)
    assert all(re.fullmatch(r"/[0-9A-Za-z]{27}\.jpg", p) for p in paths)


def test_planted_duplicates(catalog: SyntheticCatalog) -> None:
    dups = catalog.duplicates
    kinds = collections.Counter(d.kind for d in dups)
    assert kinds["exact"] == 12 and kinds["near"] == 12
    assert {d.transform for d in dups if d.kind == "near"} == {
        "reencode",
        "resize",
        "crop",
        "brightness",
    }
    assert all(d.transform == "" for d in dups if d.kind == "exact")
    copies = {d.movie_id for d in dups}
    sources = {d.source_movie_id for d in dups}
    assert not copies & sources
    assert len(sources) == len(dups)
    for dup in dups:
        assert catalog.duplicate_of(dup.movie_id) == dup
        copy = catalog.poster_bytes(dup.movie_id)
        source = catalog.poster_bytes(dup.source_movie_id)
        if dup.kind == "exact":
            assert copy == source
        else:
            assert copy != source
            assert copy[:2] == b"\xff\xd8"


def test_tiny_catalogs() -> None:
    assert make_catalog(0).films == []
    one = make_catalog(1)
    assert len(one.films) == 1 and one.duplicates == []
    assert one.poster_bytes(one.films[0].movie_id)[:2] == b"\xff\xd8"


def test_watch_history_deterministic_and_well_formed(catalog: SyntheticCatalog) -> None:
    rows = make_watch_history(catalog, 30, seed=3)
    assert rows == make_watch_history(catalog, 30, seed=3)
    assert rows != make_watch_history(catalog, 30, seed=4)
    assert rows == sorted(rows, key=lambda r: (r[0], r[3], r[1]))
    assert {r[0] for r in rows} == set(range(1, 31))
    known = {f.movie_id for f in catalog.films}
    per_user: dict[int, list[tuple[int, int, float, int]]] = collections.defaultdict(list)
    for row in rows:
        user, movie, rating, ts = row
        assert movie in known
        assert 0.5 <= rating <= 5.0 and (rating * 2) == int(rating * 2)
        assert 1420070400 <= ts <= 1609459199
        per_user[user].append(row)
    for user_rows in per_user.values():
        assert 15 <= len(user_rows) <= 60
        stamps = [r[3] for r in user_rows]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert len({r[1] for r in user_rows}) == len(user_rows)


def test_watch_history_follows_tastes(catalog: SyntheticCatalog) -> None:
    n_users = 40
    rows = make_watch_history(catalog, n_users, seed=5)
    tastes = user_tastes(catalog, n_users, seed=5)
    assert all(2 <= len(t) <= 3 for t in tastes.values())
    genres_of = {f.movie_id: set(f.genres) for f in catalog.films}
    hit_share, base_share, liked, other = [], [], [], []
    for user, taste in tastes.items():
        mine = [r for r in rows if r[0] == user]
        hits = [r for r in mine if genres_of[r[1]] & set(taste)]
        hit_share.append(len(hits) / len(mine))
        base_share.append(sum(1 for g in genres_of.values() if g & set(taste)) / len(genres_of))
        liked += [r[2] for r in hits]
        other += [r[2] for r in mine if not genres_of[r[1]] & set(taste)]
    mean_hit = sum(hit_share) / n_users
    mean_base = sum(base_share) / n_users
    # The preferred look (LOOK_WATCH_WEIGHT) takes a share of the watches, so the lift from
    # genres is about 0.19 here (0.17-0.22 over other seeds); users who ignored genres give 0.
    assert mean_hit > mean_base + 0.15, (mean_hit, mean_base)
    assert sum(liked) / len(liked) > sum(other) / len(other) + 0.7


def test_film_and_user_looks_are_deterministic_ground_truth(catalog: SyntheticCatalog) -> None:
    looks = {f.movie_id: catalog.look(f.movie_id) for f in catalog.films}
    assert set(looks.values()) == set(LOOKS)
    again = make_catalog(len(catalog), seed=0)
    assert looks == {f.movie_id: again.look(f.movie_id) for f in again.films}
    assert [film_look(f, 1) for f in catalog.films] != [film_look(f, 0) for f in catalog.films]
    for dup in catalog.duplicates:
        assert looks[dup.movie_id] == film_look(catalog.film(dup.source_movie_id), 0)
    originals = [f for f in catalog.films if catalog.duplicate_of(f.movie_id) is None]
    assert all(looks[f.movie_id] == film_look(f, 0) for f in originals)
    drama = [looks[f.movie_id] for f in catalog.films if f.genres[0] == "Drama"]
    assert set(drama) == set(LOOKS), "the look does not follow the genre"
    users = user_looks(200, seed=3)
    assert users == user_looks(200, seed=3) and users != user_looks(200, seed=4)
    assert sorted(users) == list(range(1, 201))
    assert min(collections.Counter(users.values()).values()) > 200 / 8


def test_watch_history_follows_preferred_looks(catalog: SyntheticCatalog) -> None:
    n_users = 40
    rows = make_watch_history(catalog, n_users, seed=5)
    preferred = user_looks(n_users, seed=5)
    tastes = user_tastes(catalog, n_users, seed=5)
    look_of = {f.movie_id: catalog.look(f.movie_id) for f in catalog.films}
    genres_of = {f.movie_id: set(f.genres) for f in catalog.films}
    share, chance = [], []
    ratings: dict[tuple[bool, bool], list[float]] = collections.defaultdict(list)
    for user, look in preferred.items():
        mine = [r for r in rows if r[0] == user]
        share.append(sum(look_of[r[1]] == look for r in mine) / len(mine))
        chance.append(sum(v == look for v in look_of.values()) / len(look_of))
        for r in mine:
            in_taste = bool(genres_of[r[1]] & set(tastes[user]))
            ratings[(in_taste, look_of[r[1]] == look)].append(r[2])
    mean_share, mean_chance = sum(share) / n_users, sum(chance) / n_users
    assert mean_share > 2 * mean_chance, (mean_share, mean_chance)
    assert sum(s > c for s, c in zip(share, chance, strict=True)) >= 0.9 * n_users
    mean = {key: sum(v) / len(v) for key, v in ratings.items()}
    assert mean[(True, True)] > mean[(True, False)] + 0.3, mean
    assert mean[(False, True)] > mean[(False, False)] + 0.3, mean


def test_write_ratings_csv(tmp_path: pathlib.Path, catalog: SyntheticCatalog) -> None:
    rows = make_watch_history(catalog, 3, seed=1)
    path = tmp_path / "ratings.csv"
    write_ratings_csv(path, rows)
    header, parsed = _read(path)
    assert header == ["userId", "movieId", "rating", "timestamp"]
    back = [
        (int(r["userId"]), int(r["movieId"]), float(r["rating"]), int(r["timestamp"]))
        for r in parsed
    ]
    assert back == rows


def test_write_links_csv(tmp_path: pathlib.Path, catalog: SyntheticCatalog) -> None:
    path = tmp_path / "links.csv"
    write_links_csv(path, catalog.films)
    header, rows = _read(path)
    assert header == ["movieId", "imdbId", "tmdbId"]
    assert len(rows) == len(catalog.films)
    for row, film in zip(rows, catalog.films, strict=True):
        assert int(row["movieId"]) == film.movie_id
        assert re.fullmatch(r"\d{7}", row["imdbId"]) and "tt" + row["imdbId"] == film.imdb_id
        assert int(row["tmdbId"]) == film.tmdb_id


def test_write_tmdb5000_csv(tmp_path: pathlib.Path, catalog: SyntheticCatalog) -> None:
    path = tmp_path / "tmdb_5000_movies.csv"
    write_tmdb5000_csv(path, catalog.films)
    header, rows = _read(path)
    assert header == list(cat_mod.TMDB5000_HEADER)
    assert header[:4] == ["budget", "genres", "homepage", "id"]
    assert len(rows) == len(catalog.films)
    tmdb_names = {"Family", "Music", "Science Fiction", "Crime", "Drama", "Comedy", "Action"}
    seen_names: set[str] = set()
    for row, film in zip(rows, catalog.films, strict=True):
        assert int(row["id"]) == film.tmdb_id
        assert row["title"] == film.title
        assert re.fullmatch(rf"{film.year}-\d\d-\d\d", row["release_date"])
        genres = json.loads(row["genres"])
        assert all(set(g) == {"id", "name"} for g in genres)
        seen_names |= {g["name"] for g in genres}
        expected = [cat_mod.TMDB_GENRES[g] for g in film.genres if cat_mod.TMDB_GENRES[g]]
        assert {(g["id"], g["name"]) for g in genres} == set(expected)
        assert row["overview"] == cat_mod.film_overview(film)
        json.loads(row["keywords"])
        json.loads(row["production_companies"])
    assert "IMAX" not in seen_names and "Film-Noir" not in seen_names
    assert seen_names & tmdb_names
    overviews = [r["overview"] for r in rows]
    assert any("\n" in o and "," in o and '"' in o for o in overviews)


def test_write_moviegenre_csv(tmp_path: pathlib.Path, catalog: SyntheticCatalog) -> None:
    path = tmp_path / "MovieGenre.csv"
    write_moviegenre_csv(path, catalog.films, _url)
    header, rows = _read(path)
    assert header == ["imdbId", "Imdb Link", "Title", "IMDB Score", "Genre", "Poster"]
    for row, film in zip(rows, catalog.films, strict=True):
        assert row["imdbId"] == str(int(film.imdb_id[2:]))
        assert row["Imdb Link"] == f"http://www.imdb.com/title/{film.imdb_id}"
        assert row["Title"] == f"{film.title} ({film.year})"
        assert 0 < float(row["IMDB Score"]) <= 10
        assert row["Genre"].split("|") == list(film.genres)
        assert row["Poster"] == _url(film)


def test_write_plain_csv(tmp_path: pathlib.Path, catalog: SyntheticCatalog) -> None:
    path = tmp_path / "plain.csv"
    write_plain_csv(path, catalog.films, _url)
    header, rows = _read(path)
    assert header == ["movie_id", "poster_url", "title", "year", "genres"]
    for row, film in zip(rows, catalog.films, strict=True):
        assert int(row["movie_id"]) == film.movie_id
        assert row["poster_url"] == _url(film)
        assert row["title"] == film.title and int(row["year"]) == film.year
        assert tuple(row["genres"].split("|")) == film.genres
