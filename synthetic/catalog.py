"""A deterministic synthetic movie catalog with planted duplicate posters.

`make_catalog` invents MovieLens-style films (ids, IMDb and TMDb ids, titles,
years, genres), draws a poster for each and plants exact and near duplicate
posters whose ground truth is kept in `SyntheticCatalog.duplicates`.
`make_watch_history` invents MovieLens ratings rows from users with genre
tastes and a preferred poster look, and the `write_*` functions write the
catalog in the input formats the scraper accepts.

Every poster has a hidden look (`LOOKS`: fine stripes in one of four
directions), drawn from the seed and movie id and written to no metadata, and
every user prefers one look (`user_looks`), so who watches a film depends on
its art beyond its genres.  `SyntheticCatalog.look` and `user_looks` are the
ground truth.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import threading
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np
from PIL import Image

from schemas.catalogs import CATALOG_HEADERS
from schemas.catalogs import CatalogFormat
from schemas.genres import MOVIELENS_GENRES
from synthetic import posters

GENRES = MOVIELENS_GENRES

GENRE_WEIGHTS: dict[str, float] = {
    "Drama": 25.0,
    "Comedy": 16.0,
    "Thriller": 8.0,
    "Romance": 7.5,
    "Action": 7.5,
    "Horror": 6.0,
    "Documentary": 4.0,
    "Crime": 5.0,
    "Adventure": 4.0,
    "Sci-Fi": 3.6,
    "Children": 2.8,
    "Animation": 2.8,
    "Mystery": 2.8,
    "Fantasy": 2.7,
    "War": 1.8,
    "Western": 1.4,
    "Musical": 1.0,
    "Film-Noir": 0.5,
    "IMAX": 0.3,
}

TMDB_GENRES: dict[str, tuple[int, str] | None] = {
    "Action": (28, "Action"),
    "Adventure": (12, "Adventure"),
    "Animation": (16, "Animation"),
    "Children": (10751, "Family"),
    "Comedy": (35, "Comedy"),
    "Crime": (80, "Crime"),
    "Documentary": (99, "Documentary"),
    "Drama": (18, "Drama"),
    "Fantasy": (14, "Fantasy"),
    "Film-Noir": (80, "Crime"),
    "Horror": (27, "Horror"),
    "IMAX": None,
    "Musical": (10402, "Music"),
    "Mystery": (9648, "Mystery"),
    "Romance": (10749, "Romance"),
    "Sci-Fi": (878, "Science Fiction"),
    "Thriller": (53, "Thriller"),
    "War": (10752, "War"),
    "Western": (37, "Western"),
}

# The writers produce exactly the headers the scrape stage's reader accepts.
TMDB5000_HEADER = CATALOG_HEADERS[CatalogFormat.TMDB5000]
LINKS_HEADER = CATALOG_HEADERS[CatalogFormat.LINKS]
MOVIEGENRE_HEADER = CATALOG_HEADERS[CatalogFormat.MOVIEGENRE]
PLAIN_HEADER = CATALOG_HEADERS[CatalogFormat.PLAIN]
RATINGS_HEADER: tuple[str, ...] = ("userId", "movieId", "rating", "timestamp")

HISTORY_START = 1420070400  # 2015-01-01T00:00:00Z
HISTORY_END = 1609459199  # 2020-12-31T23:59:59Z

LOOKS = posters.LOOKS
# How much a user's preferred poster look adds to a film's chance of being watched
# (each shared genre adds 1.0, every film has 0.04) and to its expected rating.
# The watch weight is 2.5 so the look outweighs two shared genres: at 1.0 it was too weak
# beside the genres for a poster model to beat the genre profile on cold-start films.
LOOK_WATCH_WEIGHT = 2.5
LOOK_RATING_BONUS = 0.6

_ADJECTIVES = (
    "Silent",
    "Crimson",
    "Broken",
    "Golden",
    "Hidden",
    "Last",
    "Midnight",
    "Wild",
    "Frozen",
    "Burning",
    "Lonely",
    "Electric",
    "Velvet",
    "Savage",
    "Quiet",
    "Endless",
    "Lost",
    "Iron",
    "Secret",
    "Distant",
    "Hollow",
    "Bright",
    "Forgotten",
    "Restless",
    "Emerald",
    "Scarlet",
    "Shattered",
    "Sleeping",
    "Wicked",
    "Gentle",
)
_NOUNS = (
    "River",
    "Harbor",
    "Kingdom",
    "Shadow",
    "Garden",
    "Empire",
    "Storm",
    "Mirror",
    "Highway",
    "Promise",
    "Orchard",
    "Frontier",
    "Signal",
    "Lantern",
    "Canyon",
    "Island",
    "Machine",
    "Letter",
    "Symphony",
    "Winter",
    "Horizon",
    "Station",
    "Circus",
    "Voyage",
    "Labyrinth",
    "Summer",
    "Witness",
    "Dynasty",
    "Outpost",
    "Carnival",
)
_PLACES = (
    "Paris",
    "the North",
    "Tomorrow",
    "Avalon",
    "the Deep",
    "Cairo",
    "Nowhere",
    "the Valley",
    "Saturn",
    "Lisbon",
    "the Plains",
    "Kyoto",
    "the Sea",
    "Berlin",
    "the Moon",
    "Montréal",
    "São Paulo",
    "the Dunes",
    "Oslo",
    "Zürich",
)
_NAMES = (
    "Anna",
    "Marcus",
    "Lola",
    "Henry",
    "Iris",
    "Victor",
    "Nadia",
    "Oscar",
    "Clara",
    "Felix",
    "Rosa",
    "Théo",
)
_OVERVIEW_SUBJECTS = (
    "a retired detective",
    "two estranged sisters",
    "a young inventor",
    "an exiled prince",
    "a small-town nurse",
    "a washed-up boxer",
    "a crew of smugglers",
    "a shy librarian",
    "a rookie astronaut",
    "an aging magician",
)
_OVERVIEW_ACTIONS = (
    "must confront a secret from the past",
    "races against time to save a friend",
    "discovers a hidden world",
    "is drawn into a dangerous game",
    "falls for the wrong person",
    "fights to keep the family farm",
    "uncovers a conspiracy",
    "sets out on an impossible journey",
)
_TAGLINES = (
    "Some secrets never sleep.",
    "One night. One chance.",
    "Every legend has a beginning.",
    "Love finds a way.",
    "Nowhere left to run.",
    "The truth is out there, somewhere.",
)
_COMPANIES = (
    "Lantern Pictures",
    "Northwind Films",
    "Blue Harbor Studios",
    "Orchid Entertainment",
    "Red Dune Media",
)
_KEYWORDS = (
    "friendship",
    "revenge",
    "small town",
    "journey",
    "betrayal",
    "family",
    "secret",
    "escape",
    "love",
)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Film:
    """One synthetic film with MovieLens, IMDb and TMDb identifiers."""

    movie_id: int
    imdb_id: str
    tmdb_id: int
    title: str
    year: int
    genres: tuple[str, ...]

    @property
    def imdb_number(self) -> int:
        """The IMDb id as an integer, without 'tt'."""
        return int(self.imdb_id[2:])


@dataclass(frozen=True)
class PlantedDuplicate:
    """Ground truth: movie_id's poster is a copy of source_movie_id's poster."""

    movie_id: int
    source_movie_id: int
    kind: str
    transform: str


def tmdb_style_path(key: str) -> str:
    """A deterministic TMDb-style image path ('/' + 27 base-62 chars + '.jpg') derived from key."""
    number = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=20).digest(), "big")
    chars = []
    for _ in range(27):
        number, rem = divmod(number, 62)
        chars.append(_BASE62[rem])
    return "/" + "".join(chars) + ".jpg"


class SyntheticCatalog:
    """Films, their deterministic posters and the planted duplicate ground truth."""

    def __init__(self, films: list[Film], duplicates: list[PlantedDuplicate], seed: int) -> None:
        """Index films, duplicates and poster paths (posters are drawn lazily, then cached)."""
        self.films = films
        self.duplicates = duplicates
        self.seed = seed
        self._by_id = {f.movie_id: f for f in films}
        self._dup_by_id = {d.movie_id: d for d in duplicates}
        self._paths = {f.movie_id: tmdb_style_path(f"poster:{seed}:{f.movie_id}") for f in films}
        if len(set(self._paths.values())) != len(self._paths):
            raise ValueError("poster paths collide")
        self._cache: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        """A short description."""
        return (
            f"SyntheticCatalog(films={len(self.films)}, duplicates={len(self.duplicates)}, "
            f"seed={self.seed})"
        )

    def __len__(self) -> int:
        """Number of films."""
        return len(self.films)

    def film(self, movie_id: int) -> Film:
        """The film with this movie id (KeyError if unknown)."""
        return self._by_id[movie_id]

    def duplicate_of(self, movie_id: int) -> PlantedDuplicate | None:
        """The planted duplicate record of a film whose poster is a copy, else None."""
        return self._dup_by_id.get(movie_id)

    def poster_image(self, movie_id: int) -> Image.Image:
        """The freshly drawn (unencoded) original poster of a film."""
        return posters.draw_poster(self.film(movie_id), self.seed)

    def poster_bytes(self, movie_id: int) -> bytes:
        """The film's poster as JPEG bytes (deterministic, cached, duplicates planted)."""
        with self._lock:
            cached = self._cache.get(movie_id)
        if cached is not None:
            return cached
        dup = self._dup_by_id.get(movie_id)
        if dup is None:
            data = posters.encode_jpeg(self.poster_image(movie_id))
        elif dup.kind == "exact":
            data = self.poster_bytes(dup.source_movie_id)
        else:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, movie_id & 0xFFFFFFFF, 0xD0B])
            data = posters.near_copy(self.poster_bytes(dup.source_movie_id), dup.transform, rng)
        with self._lock:
            return self._cache.setdefault(movie_id, data)

    def look(self, movie_id: int) -> str:
        """The hidden look of the film's poster (a planted copy shows its source's look)."""
        dup = self._dup_by_id.get(movie_id)
        return film_look(self.film(movie_id if dup is None else dup.source_movie_id), self.seed)

    def poster_path(self, movie_id: int) -> str:
        """The film's TMDb-style poster path, e.g. '/aRJAoQ6mqPHAKXjP3CqNyLC8FAh.jpg'."""
        self.film(movie_id)
        return self._paths[movie_id]


def film_look(film: Film, seed: int) -> str:
    """The hidden look (one of LOOKS) of the poster drawn for a film; no metadata reveals it."""
    return posters.look_for(film.movie_id, seed)


def _choose_genres(rng: np.random.Generator) -> tuple[str, ...]:
    """1-3 distinct genres, the first one primary, weighted towards common genres."""
    names = list(GENRE_WEIGHTS)
    weights = np.array([GENRE_WEIGHTS[g] for g in names])
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    picked = rng.choice(len(names), size=count, replace=False, p=weights / weights.sum())
    return tuple(names[i] for i in picked)


def _make_title(rng: np.random.Generator) -> str:
    """A title made from word lists."""
    adj = _ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]
    noun = _NOUNS[int(rng.integers(len(_NOUNS)))]
    noun2 = _NOUNS[int(rng.integers(len(_NOUNS)))]
    place = _PLACES[int(rng.integers(len(_PLACES)))]
    name = _NAMES[int(rng.integers(len(_NAMES)))]
    pattern = int(rng.integers(7))
    if pattern == 0:
        return f"The {adj} {noun}"
    if pattern == 1:
        return f"{noun} of {place}"
    if pattern == 2:
        return f"{adj} {noun}"
    if pattern == 3:
        return f"{name}'s {noun}"
    if pattern == 4:
        return f"{noun}: The {adj} {noun2}"
    if pattern == 5:
        return f"Goodbye, {name}"
    return f"The {noun} and the {noun2}"


def make_catalog(
    n_films: int,
    seed: int = 0,
    exact_duplicate_fraction: float = 0.03,
    near_duplicate_fraction: float = 0.03,
) -> SyntheticCatalog:
    """Build a deterministic catalog of n_films films with planted duplicate posters."""
    if n_films < 0:
        raise ValueError("n_films must be >= 0")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xCA7A])
    gaps = rng.choice([1, 1, 1, 2, 3, 5, 17], size=n_films)
    movie_ids = np.cumsum(gaps).tolist()
    imdb_numbers = rng.choice(np.arange(10_000, 9_999_999), size=n_films, replace=False)
    tmdb_ids = rng.choice(np.arange(2, 1_000_000), size=n_films, replace=False)
    titles: list[str] = []
    seen: set[str] = set()
    for _ in range(n_films):
        title = _make_title(rng)
        suffix = 2
        base = title
        while title in seen:
            title = f"{base} {suffix}"
            suffix += 1
        seen.add(title)
        titles.append(title)
    films = [
        Film(
            movie_id=int(movie_ids[i]),
            imdb_id=f"tt{int(imdb_numbers[i]):07d}",
            tmdb_id=int(tmdb_ids[i]),
            title=titles[i],
            year=int(rng.integers(1930, 2024)),
            genres=_choose_genres(rng),
        )
        for i in range(n_films)
    ]
    n_exact = round(n_films * exact_duplicate_fraction)
    n_near = round(n_films * near_duplicate_fraction)
    while 2 * (n_exact + n_near) > n_films:
        if n_exact >= n_near and n_exact > 0:
            n_exact -= 1
        else:
            n_near -= 1
    order = rng.permutation(n_films)
    total = n_exact + n_near
    copies, sources = order[:total], order[total : 2 * total]
    transforms = list(posters.NEAR_TRANSFORMS)
    rng.shuffle(transforms)
    duplicates = []
    for k, (c, s) in enumerate(zip(copies, sources, strict=True)):
        if k < n_exact:
            duplicates.append(PlantedDuplicate(films[c].movie_id, films[s].movie_id, "exact", ""))
        else:
            transform = transforms[(k - n_exact) % len(transforms)]
            duplicates.append(
                PlantedDuplicate(films[c].movie_id, films[s].movie_id, "near", transform)
            )
    duplicates.sort(key=lambda d: d.movie_id)
    return SyntheticCatalog(films=films, duplicates=duplicates, seed=seed)


def _genre_rng_weights(catalog: SyntheticCatalog) -> tuple[list[str], np.ndarray]:
    """Genres present in the catalog and their film counts."""
    counts: dict[str, int] = {}
    for film in catalog.films:
        for g in film.genres:
            counts[g] = counts.get(g, 0) + 1
    names = [g for g in GENRES if g in counts]
    return names, np.array([counts[g] for g in names], dtype=np.float64)


def user_tastes(
    catalog: SyntheticCatalog, n_users: int, seed: int = 0
) -> dict[int, tuple[str, ...]]:
    """Each user's 2-3 favourite genres (user ids 1..n_users), as used by make_watch_history."""
    names, counts = _genre_rng_weights(catalog)
    tastes: dict[int, tuple[str, ...]] = {}
    for user_id in range(1, n_users + 1):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, user_id, 0x7A57E])
        k = min(len(names), int(rng.integers(2, 4)))
        picked = rng.choice(
            len(names), size=k, replace=False, p=np.sqrt(counts) / np.sqrt(counts).sum()
        )
        tastes[user_id] = tuple(names[i] for i in picked)
    return tastes


def user_looks(n_users: int, seed: int = 0) -> dict[int, str]:
    """Each user's preferred poster look (user ids 1..n_users), as used by make_watch_history."""
    looks: dict[int, str] = {}
    for user_id in range(1, n_users + 1):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, user_id, 0x5EE])
        looks[user_id] = LOOKS[int(rng.integers(len(LOOKS)))]
    return looks


def _user_rows(
    user_id: int,
    films: Sequence[Film],
    overlap: np.ndarray,
    match: np.ndarray,
    rng: np.random.Generator,
    n_events: int,
) -> list[tuple[int, int, float, int]]:
    """One user's ratings rows, watched with odds 0.04 + genre overlap + look weight."""
    weights = 0.04 + overlap + LOOK_WATCH_WEIGHT * match
    chosen = rng.choice(len(films), size=n_events, replace=False, p=weights / weights.sum())
    start = int(rng.integers(HISTORY_START, HISTORY_END - 86_400 * 400))
    span = int(rng.integers(86_400, 86_400 * 365))
    offsets = np.sort(rng.choice(span, size=n_events, replace=False))
    rows = []
    for k, idx in enumerate(chosen):
        liked = overlap[idx] > 0
        score = rng.normal(3.9 if liked else 2.6, 0.7) + 0.2 * overlap[idx]
        score += LOOK_RATING_BONUS * match[idx]
        rating = float(min(5.0, max(0.5, round(score * 2) / 2)))
        rows.append((user_id, films[idx].movie_id, rating, start + int(offsets[k])))
    return rows


def make_watch_history(
    catalog: SyntheticCatalog,
    n_users: int,
    seed: int = 0,
    events_per_user: tuple[int, int] = (15, 60),
) -> list[tuple[int, int, float, int]]:
    """MovieLens ratings rows (userId, movieId, rating, timestamp) from users' genres and looks."""
    films = catalog.films
    if not films:
        return []
    tastes = user_tastes(catalog, n_users, seed)
    looks = user_looks(n_users, seed)
    film_looks = np.array([catalog.look(f.movie_id) for f in films])
    rows: list[tuple[int, int, float, int]] = []
    for user_id in range(1, n_users + 1):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, user_id, 0x415])
        taste = set(tastes[user_id])
        overlap = np.array([len(taste.intersection(f.genres)) for f in films], dtype=np.float64)
        match = (film_looks == looks[user_id]).astype(np.float64)
        n_events = min(len(films), int(rng.integers(events_per_user[0], events_per_user[1] + 1)))
        rows += _user_rows(user_id, films, overlap, match, rng, n_events)
    rows.sort(key=lambda r: (r[0], r[3], r[1]))
    return rows


def _open_csv(path: str | os.PathLike[str]) -> TextIO:
    """Open a CSV file for writing (UTF-8, newline='')."""
    return open(path, "w", newline="", encoding="utf-8")


def write_ratings_csv(
    path: str | os.PathLike[str], rows: Iterable[tuple[int, int, float, int]]
) -> None:
    """Write MovieLens ratings.csv (userId,movieId,rating,timestamp)."""
    with _open_csv(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(RATINGS_HEADER)
        for user_id, movie_id, rating, timestamp in rows:
            writer.writerow((user_id, movie_id, f"{rating:.1f}", timestamp))


def write_links_csv(path: str | os.PathLike[str], films: Sequence[Film]) -> None:
    """Write MovieLens links.csv (movieId,imdbId without 'tt' zero-padded to 7,tmdbId)."""
    with _open_csv(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(LINKS_HEADER)
        for film in films:
            writer.writerow((film.movie_id, film.imdb_id[2:], film.tmdb_id))


def film_rng(film: Film) -> random.Random:
    """A per-film random generator for descriptive metadata (overview, budget, ...)."""
    return random.Random(film.movie_id * 1_000_003 + film.tmdb_id)


def film_overview(film: Film) -> str:
    """A short plot overview; some contain a comma, quotes and a newline to exercise CSV quoting."""
    rng = film_rng(film)
    subject = rng.choice(_OVERVIEW_SUBJECTS)
    action = rng.choice(_OVERVIEW_ACTIONS)
    text = f"In {film.year}, {subject} {action}."
    if film.movie_id % 3 == 0:
        text += f'\nA "{film.genres[0].lower()}" story, told in two parts.'
    return text


def tmdb_genres(film: Film) -> list[dict[str, int | str]]:
    """The film's genres as TMDb [{'id': ..., 'name': ...}] (Film-Noir as Crime, IMAX dropped)."""
    out: list[dict[str, int | str]] = []
    for genre in film.genres:
        mapped = TMDB_GENRES.get(genre)
        if mapped is not None and all(g["id"] != mapped[0] for g in out):
            out.append({"id": mapped[0], "name": mapped[1]})
    return out


@dataclass(frozen=True)
class FilmMetadata:
    """Deterministic descriptive details of a film beyond the Film record."""

    budget: int
    revenue: int
    runtime: int
    popularity: float
    vote_average: float
    vote_count: int
    tagline: str
    company: str
    keywords: tuple[str, ...]
    release_date: str
    imdb_score: float


def film_metadata(film: Film) -> FilmMetadata:
    """Descriptive details shared by the TMDB-5000 writer and the fake TMDb/IMDb pages."""
    rng = film_rng(film)
    rng.random()
    budget = rng.randrange(0, 200) * 1_000_000
    return FilmMetadata(
        budget=budget,
        revenue=int(budget * rng.uniform(0.2, 4.0)),
        runtime=rng.randrange(75, 181),
        popularity=round(rng.uniform(0.5, 150.0), 6),
        vote_average=round(rng.uniform(3.0, 9.0), 1),
        vote_count=rng.randrange(5, 20_000),
        tagline=rng.choice(_TAGLINES),
        company=rng.choice(_COMPANIES),
        keywords=tuple(rng.sample(_KEYWORDS, 3)),
        release_date=f"{film.year:04d}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        imdb_score=round(rng.uniform(2.0, 9.5), 1),
    )


def write_tmdb5000_csv(path: str | os.PathLike[str], films: Sequence[Film]) -> None:
    """Write a Kaggle TMDB-5000 tmdb_5000_movies.csv with JSON-valued columns."""
    with _open_csv(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(TMDB5000_HEADER)
        for film in films:
            meta = film_metadata(film)
            keywords = [{"id": 1000 + _KEYWORDS.index(k), "name": k} for k in meta.keywords]
            writer.writerow(
                (
                    meta.budget,
                    json.dumps(tmdb_genres(film)),
                    "" if film.movie_id % 4 else f"http://www.example.com/{film.tmdb_id}",
                    film.tmdb_id,
                    json.dumps(keywords),
                    "en",
                    film.title,
                    film_overview(film),
                    meta.popularity,
                    json.dumps(
                        [
                            {
                                "name": meta.company,
                                "id": 100 + _COMPANIES.index(meta.company),
                            }
                        ]
                    ),
                    json.dumps([{"iso_3166_1": "US", "name": "United States of America"}]),
                    meta.release_date,
                    meta.revenue,
                    meta.runtime,
                    json.dumps([{"iso_639_1": "en", "name": "English"}]),
                    "Released",
                    meta.tagline,
                    film.title,
                    meta.vote_average,
                    meta.vote_count,
                )
            )


def write_moviegenre_csv(
    path: str | os.PathLike[str], films: Sequence[Film], poster_url: Callable[[Film], str]
) -> None:
    """Write a Kaggle MovieGenre.csv (imdbId,Imdb Link,Title,IMDB Score,Genre,Poster)."""
    with _open_csv(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(MOVIEGENRE_HEADER)
        for film in films:
            writer.writerow(
                (
                    film.imdb_number,
                    f"http://www.imdb.com/title/{film.imdb_id}",
                    f"{film.title} ({film.year})",
                    film_metadata(film).imdb_score,
                    "|".join(film.genres),
                    poster_url(film),
                )
            )


def write_plain_csv(
    path: str | os.PathLike[str], films: Sequence[Film], poster_url: Callable[[Film], str]
) -> None:
    """Write the plain catalog format (movie_id,poster_url,title,year,genres)."""
    with _open_csv(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(PLAIN_HEADER)
        for film in films:
            writer.writerow(
                (film.movie_id, poster_url(film), film.title, film.year, "|".join(film.genres))
            )
