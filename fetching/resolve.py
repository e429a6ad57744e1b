"""Where a film's poster is: IMDb title pages and TMDb API answers parsed, and their URLs built.

Everything here is pure (no HTTP): the fetch layer downloads a page or an API answer and calls
these functions to find the poster image URL in it. Failures raise :class:`NotATitlePage` or
:class:`NoPosterFound`, whose ``reason`` is the dead-letter reason code.

An IMDb page is a title page when the address it gives for itself (``<link rel="canonical">``,
else ``og:url``) is ``/title/ttNNNNNNN/`` with nothing after it. Subpages such as
``/title/tt2527336/keywords`` or ``/title/tt0412142/episodes?season=8`` carry ``og:type
video.movie`` and an ``og:image`` too, so ``og:type`` alone cannot tell them apart. A page that
gives no address for itself is judged by the address it was fetched from, then by its structured
data (a JSON-LD film or series object, or an ``og:type`` of ``video.*``).

The poster URL returned is the page's ``og:image`` (on IMDb the whole poster, 1000 pixels wide),
else the ``image`` of the page's JSON-LD film object (the full-size original).
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

import bs4

from schemas.genres import normalise_genres

NOT_A_TITLE_PAGE = "not_a_title_page"
NO_POSTER_IN_PAGE = "no_poster_in_page"
NO_POSTER_PATH = "no_poster_path"
REDACTED = "REDACTED"

TITLE_TYPES = frozenset(
    {
        "Movie",
        "TVMovie",
        "TVSeries",
        "TVMiniSeries",
        "TVSeason",
        "TVEpisode",
        "VideoGame",
        "CreativeWork",
        "CreativeWorkSeries",
        "CreativeWorkSeason",
    }
)
"""JSON-LD ``@type`` values of the object that describes a title (not its trailer or people)."""

_IMDB_ID = re.compile(r"tt\d{7,}")
_TITLE_PATH = re.compile(r"/title/(?P<id>tt\d{7,})/?")
_TITLE_SUBPAGE_PATH = re.compile(r"/title/(?P<id>tt\d{7,})/(?P<kind>[^/]+)/?.*")
_GENERIC_IMAGE_PATH = "/images/G/"
_API_KEY = re.compile(r"(?P<name>api_key)(?P<sep>=|%3D)(?P<value>(?:%(?!26)|[^&\s#\"'<>%])*)", re.I)


class NotATitlePage(ValueError):
    """The page is not an IMDb title page (a subpage, a person page, ...)."""

    reason = NOT_A_TITLE_PAGE


class NoPosterFound(ValueError):
    """The page or API answer names no poster."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def imdb_title_url(imdb_base: str, imdb_id: str) -> str:
    """The URL of an IMDb title page, such as https://www.imdb.com/title/tt0076759/."""
    if not isinstance(imdb_id, str) or not _IMDB_ID.fullmatch(imdb_id):
        raise ValueError(f"IMDb id {imdb_id!r} is not 'tt' followed by 7 or more digits")
    return f"{imdb_base.rstrip('/')}/title/{imdb_id}/"


def imdb_image_id(url: str) -> str:
    """The image id in an IMDb image URL: the file name before its size suffix (``._V1_...``)."""
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    return name.split("._", 1)[0] if "._" in name else name.rsplit(".", 1)[0]


def _meta_content(soup: bs4.BeautifulSoup, prop: str) -> str:
    tag = soup.find("meta", attrs={"property": prop}) or soup.find("meta", attrs={"name": prop})
    content = tag.get("content") if tag is not None else None
    return content.strip() if isinstance(content, str) else ""


def _canonical_url(soup: bs4.BeautifulSoup, page_url: str) -> str:
    """The address the page gives for itself: rel=canonical, else og:url; '' when none."""
    for link in soup.find_all("link", href=True):
        rel = link.get("rel") or []
        rels = rel if isinstance(rel, list) else str(rel).split()
        if "canonical" in (r.lower() for r in rels):
            return urllib.parse.urljoin(page_url, link["href"].strip())
    og_url = _meta_content(soup, "og:url")
    return urllib.parse.urljoin(page_url, og_url) if og_url else ""


def _json_ld_objects(soup: bs4.BeautifulSoup) -> Iterator[dict[str, Any]]:
    for script in soup.find_all("script", attrs={"type": "application/ld+json"}):
        try:
            data = json.loads(script.string or script.get_text() or "")
        except ValueError:
            continue
        stack = data if isinstance(data, list) else [data]
        for item in stack:
            if isinstance(item, dict):
                yield item
                graph = item.get("@graph")
                if isinstance(graph, list):
                    yield from (node for node in graph if isinstance(node, dict))


def _is_title_object(item: dict[str, Any]) -> bool:
    kinds = item.get("@type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return any(kind in TITLE_TYPES for kind in kinds if isinstance(kind, str))


def _has_title_markup(soup: bs4.BeautifulSoup) -> bool:
    if any(_is_title_object(item) for item in _json_ld_objects(soup)):
        return True
    return _meta_content(soup, "og:type").lower().startswith("video.")


def _check_title_page(soup: bs4.BeautifulSoup, page_url: str) -> None:
    """Raise NotATitlePage unless the page is an IMDb title page."""
    canonical = _canonical_url(soup, page_url)
    address = canonical or page_url
    path = urllib.parse.urlsplit(address).path if address else ""
    if _TITLE_PATH.fullmatch(path):
        return
    subpage = _TITLE_SUBPAGE_PATH.fullmatch(path)
    if subpage is not None:
        parts = urllib.parse.urlsplit(address)
        title_url = f"{parts.scheme}://{parts.netloc}/title/{subpage.group('id')}/"
        raise NotATitlePage(
            f"page {address} is an IMDb {subpage.group('kind')} page, not a title page; "
            f"give the title URL {title_url}"
        )
    if not canonical and _has_title_markup(soup):
        return
    shown = address or "(no address given)"
    raise NotATitlePage(
        f"page {shown} is not an IMDb title page: its address is not /title/ttNNNNNNN/ and it "
        "has no film or series markup; give the title URL /title/ttNNNNNNN/"
    )


def _json_ld_image(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in ("url", "contentUrl"):
            if isinstance(value.get(key), str):
                yield value[key]
    elif isinstance(value, list):
        for item in value:
            yield from _json_ld_image(item)


def _poster_candidates(soup: bs4.BeautifulSoup) -> Iterator[str]:
    og_image = _meta_content(soup, "og:image")
    if og_image and _GENERIC_IMAGE_PATH not in og_image:
        yield og_image
    for item in _json_ld_objects(soup):
        if _is_title_object(item):
            yield from (url.strip() for url in _json_ld_image(item.get("image")) if url.strip())


def parse_imdb_title_page(html: str, page_url: str = "") -> str:
    """The poster image URL of an IMDb title page (og:image, else the JSON-LD film image)."""
    soup = bs4.BeautifulSoup(html, "html.parser")
    _check_title_page(soup, page_url)
    base = page_url or _canonical_url(soup, "")
    for candidate in _poster_candidates(soup):
        url = urllib.parse.urljoin(base, candidate)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc:
            return url
    shown = page_url or _canonical_url(soup, "") or "(no address given)"
    raise NoPosterFound(
        NO_POSTER_IN_PAGE,
        f"title page {shown} has no absolute poster image URL in og:image or JSON-LD image",
    )


def tmdb_movie_url(api_base: str, tmdb_id: int) -> str:
    """The TMDb API v3 URL of a movie's details (the API key is added by the caller)."""
    if isinstance(tmdb_id, bool) or not isinstance(tmdb_id, int) or tmdb_id <= 0:
        raise ValueError(f"TMDb id {tmdb_id!r} is not a positive integer")
    return f"{api_base.rstrip('/')}/movie/{tmdb_id}"


def _poster_path(body: Any) -> str | None:
    path = body.get("poster_path") if isinstance(body, dict) else None
    return path.strip() if isinstance(path, str) and path.strip() else None


def parse_tmdb_movie(body: dict) -> str:
    """The ``poster_path`` of a TMDb movie-details answer."""
    path = _poster_path(body)
    if path is None:
        status = body.get("status_message") if isinstance(body, dict) else None
        why = f" (TMDb says: {status})" if status else ""
        movie = body.get("id") if isinstance(body, dict) else None
        raise NoPosterFound(NO_POSTER_PATH, f"TMDb movie {movie} has no poster_path{why}")
    return path


def tmdb_image_url(image_base: str, poster_path: str) -> str:
    """The image URL of a TMDb poster path, such as https://image.tmdb.org/t/p/w500/abc.jpg."""
    if not poster_path.startswith("/") or poster_path.startswith("//") or ".." in poster_path:
        raise ValueError(f"TMDb poster_path {poster_path!r} is not a path like /abc.jpg")
    return image_base.rstrip("/") + poster_path


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """The text with every secret, and every api_key query value, replaced by REDACTED."""
    forms = set()
    for secret in secrets:
        if secret:
            forms.update(
                {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
            )
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return _API_KEY.sub(lambda m: f"{m.group('name')}{m.group('sep')}{REDACTED}", text)


@dataclasses.dataclass(frozen=True)
class FilmMetadata:
    """Title, year and genres found while resolving a poster (to fill catalog gaps)."""

    title: str | None = None
    year: int | None = None
    genres: tuple[str, ...] = ()


def _year_of(date: Any) -> int | None:
    match = re.match(r"(\d{4})", str(date or ""))
    return int(match.group(1)) if match else None


# TMDb genre ids -> MovieLens genres (ids, unlike names, do not depend on the response language).
TMDB_GENRE_IDS = {
    28: "Action", 12: "Adventure", 16: "Animation", 35: "Comedy", 80: "Crime",
    99: "Documentary", 18: "Drama", 10751: "Children", 14: "Fantasy", 27: "Horror",
    10402: "Musical", 9648: "Mystery", 10749: "Romance", 878: "Sci-Fi", 53: "Thriller",
    10752: "War", 37: "Western",
}  # fmt: skip


def tmdb_metadata(body: dict) -> FilmMetadata:
    """Title, release year and genres (by TMDb genre id) of a TMDb /movie response."""
    genres = [
        TMDB_GENRE_IDS.get(g.get("id"), g.get("name", ""))
        for g in body.get("genres") or []
        if isinstance(g, dict)
    ]
    return FilmMetadata(
        title=body.get("title") or None,
        year=_year_of(body.get("release_date")),
        genres=normalise_genres(genres),
    )


def imdb_metadata(html: str) -> FilmMetadata:
    """Title, year and genres from the JSON-LD of an IMDb title page."""
    soup = bs4.BeautifulSoup(html, "html.parser")
    for item in _json_ld_objects(soup):
        if _is_title_object(item):
            genre = item.get("genre") or []
            genres = [genre] if isinstance(genre, str) else [str(g) for g in genre]
            return FilmMetadata(
                title=item.get("name") or None,
                year=_year_of(item.get("datePublished")),
                genres=normalise_genres(genres),
            )
    return FilmMetadata()
