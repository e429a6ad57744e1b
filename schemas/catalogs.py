"""The catalog files a scrape reads: the four accepted CSV formats and their header rows."""

from __future__ import annotations

import enum


class CatalogFormat(enum.StrEnum):
    """The accepted catalog file formats."""

    LINKS = "links"
    TMDB5000 = "tmdb5000"
    MOVIEGENRE = "moviegenre"
    PLAIN = "plain"


CATALOG_HEADERS: dict[CatalogFormat, tuple[str, ...]] = {
    CatalogFormat.LINKS: ("movieId", "imdbId", "tmdbId"),
    CatalogFormat.TMDB5000: (
        "budget",
        "genres",
        "homepage",
        "id",
        "keywords",
        "original_language",
        "original_title",
        "overview",
        "popularity",
        "production_companies",
        "production_countries",
        "release_date",
        "revenue",
        "runtime",
        "spoken_languages",
        "status",
        "tagline",
        "title",
        "vote_average",
        "vote_count",
    ),
    CatalogFormat.MOVIEGENRE: ("imdbId", "Imdb Link", "Title", "IMDB Score", "Genre", "Poster"),
    CatalogFormat.PLAIN: ("movie_id", "poster_url", "title", "year", "genres"),
}
