"""The genre vocabulary: MovieLens genres, the only genres a film carries in any table."""

from __future__ import annotations

from collections.abc import Iterable

MOVIELENS_GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip

GENRE_ALIASES: dict[str, str] = {
    "science fiction": "Sci-Fi",
    "family": "Children",
    "music": "Musical",
}
"""TMDb/IMDb genre names renamed to a MovieLens genre; other non-MovieLens names are dropped."""

_GENRE_BY_KEY = {name.lower(): name for name in MOVIELENS_GENRES}


def normalise_genres(names: Iterable[str]) -> tuple[str, ...]:
    """MovieLens genres of the given names: aliases renamed, others dropped, duplicates removed."""
    genres: list[str] = []
    for name in names:
        key = name.strip().lower()
        genre = _GENRE_BY_KEY.get(key) or GENRE_ALIASES.get(key)
        if genre is not None and genre not in genres:
            genres.append(genre)
    return tuple(genres)
