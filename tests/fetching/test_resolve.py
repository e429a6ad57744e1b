"""Tests for fetching.resolve: IMDb title pages, TMDb answers, URL building and redaction."""

from __future__ import annotations

import json
import pathlib
import urllib.parse

import pytest

from fetching import resolve
from fetching.resolve import NoPosterFound
from fetching.resolve import NotATitlePage

STAR_WARS_OG_IMAGE = (
    "https://m.media-amazon.com/images/M/MV5BNzVlY2MwMjktM2E4OS00Y2Y3LWE3ZjctYzhkZGM3YzA1ZWM2"
    "XkEyXkFqcGdeQXVyNzkwMjQ5NzM@._V1_FMjpg_UX1000_.jpg"
)
POSTER = "https://images.example.org/posters/MV5Babc@._V1_FMjpg_UX1000_.jpg"


def page(head: str, body: str = "") -> str:
    """A minimal HTML page with the given head and body markup."""
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>"


def json_ld(data: object) -> str:
    """A JSON-LD script element holding the data."""
    return f'<script type="application/ld+json">{json.dumps(data)}</script>'


def canonical(url: str) -> str:
    """A canonical link element."""
    return f'<link rel="canonical" href="{url}">'


def og(prop: str, content: str) -> str:
    """An Open Graph meta element."""
    return f'<meta property="og:{prop}" content="{content}">'


def imdb_case(shared_data: pathlib.Path, number: int) -> tuple[str, dict]:
    """The HTML of a real saved IMDb page and the fields expected from it."""
    folder = shared_data / "pages" / "imdb"
    html = (folder / f"case-{number}.html").read_text(encoding="utf-8")
    expected = json.loads((folder / f"case-{number}.expected.json").read_text(encoding="utf-8"))
    return html, expected


def tmdb_body(shared_data: pathlib.Path, name: str) -> dict:
    """A real TMDb answer body, unwrapped from its recording when recorded."""
    data = json.loads((shared_data / "pages" / "tmdb" / name).read_text(encoding="utf-8"))
    return data["body"] if "request_uri" in data else data


def test_real_star_wars_page_gives_its_og_image(shared_data: pathlib.Path):
    html, expected = imdb_case(shared_data, 4)
    url = resolve.parse_imdb_title_page(html, "https://www.imdb.com/title/tt0076759/")
    assert url == STAR_WARS_OG_IMAGE
    assert resolve.imdb_image_id(url) == resolve.imdb_image_id(expected["media"]["poster"])


@pytest.mark.parametrize("number", range(1, 11))
def test_every_real_imdb_page(shared_data: pathlib.Path, number: int):
    html, expected = imdb_case(shared_data, number)
    media = expected.get("media")
    if media is None or media.get("poster") is None:
        with pytest.raises(NotATitlePage) as raised:
            resolve.parse_imdb_title_page(html)
        assert raised.value.reason == "not_a_title_page"
        return
    url = resolve.parse_imdb_title_page(html)
    assert urllib.parse.urlsplit(url).netloc == "m.media-amazon.com"
    assert resolve.imdb_image_id(url) == resolve.imdb_image_id(media["poster"])


@pytest.mark.parametrize(
    ("number", "kind", "title_url"),
    [
        (5, "keywords", "https://www.imdb.com/title/tt2527336/"),
        (8, "episodes", "https://www.imdb.com/title/tt0412142/"),
    ],
)
def test_real_subpages_say_what_they_are(shared_data, number, kind, title_url):
    html, _ = imdb_case(shared_data, number)
    with pytest.raises(NotATitlePage, match=f"IMDb {kind} page, not a title page") as raised:
        resolve.parse_imdb_title_page(html)
    assert f"give the title URL {title_url}" in str(raised.value)


def test_og_image_only():
    html = page(canonical("https://www.imdb.com/title/tt0076759/") + og("image", POSTER))
    assert resolve.parse_imdb_title_page(html) == POSTER


@pytest.mark.parametrize(
    "image",
    [POSTER, {"@type": "ImageObject", "url": POSTER}, [POSTER, "https://example.org/other.jpg"]],
)
def test_json_ld_image_only(image: object):
    html = page(json_ld({"@context": "https://schema.org", "@type": "Movie", "image": image}))
    assert resolve.parse_imdb_title_page(html, "https://www.imdb.com/title/tt0076759/") == POSTER


def test_json_ld_image_of_a_trailer_is_not_the_poster():
    trailer = json_ld({"@type": "VideoObject", "image": "https://example.org/trailer.jpg"})
    html = page(canonical("https://www.imdb.com/title/tt0076759/") + trailer)
    with pytest.raises(NoPosterFound) as raised:
        resolve.parse_imdb_title_page(html)
    assert raised.value.reason == "no_poster_in_page"


def test_og_image_wins_over_json_ld():
    film = json_ld({"@type": "Movie", "image": "https://example.org/original.jpg"})
    html = page(canonical("https://www.imdb.com/title/tt0076759/") + og("image", POSTER) + film)
    assert resolve.parse_imdb_title_page(html) == POSTER


def test_generic_imdb_share_image_is_not_a_poster():
    logo = "https://m.media-amazon.com/images/G/01/imdb/images/social/imdb_logo.png"
    film = json_ld({"@type": "TVSeries", "image": POSTER})
    html = page(canonical("https://www.imdb.com/title/tt0412142/") + og("image", logo) + film)
    assert resolve.parse_imdb_title_page(html) == POSTER


def test_relative_image_url_is_resolved_against_the_page_url():
    html = page(og("type", "video.movie") + og("image", "/images/M/poster.jpg"))
    url = resolve.parse_imdb_title_page(html, "http://127.0.0.1:8080/title/tt0076759/")
    assert url == "http://127.0.0.1:8080/images/M/poster.jpg"


def test_relative_image_url_without_any_base_is_no_poster():
    html = page(og("type", "video.movie") + og("image", "/images/M/poster.jpg"))
    with pytest.raises(NoPosterFound, match="no absolute poster image URL"):
        resolve.parse_imdb_title_page(html)


def test_keywords_page_is_not_a_title_page():
    html = page(
        canonical("https://www.imdb.com/title/tt2527336/keywords")
        + og("type", "video.movie")
        + og("image", POSTER)
    )
    with pytest.raises(NotATitlePage) as raised:
        resolve.parse_imdb_title_page(html)
    assert raised.value.reason == "not_a_title_page"
    assert str(raised.value) == (
        "page https://www.imdb.com/title/tt2527336/keywords is an IMDb keywords page, not a "
        "title page; give the title URL https://www.imdb.com/title/tt2527336/"
    )


def test_subpage_url_without_canonical_is_not_a_title_page():
    html = page(og("type", "video.movie") + og("image", POSTER))
    with pytest.raises(NotATitlePage, match="IMDb fullcredits page"):
        resolve.parse_imdb_title_page(html, "https://www.imdb.com/title/tt0076759/fullcredits")


def test_person_page_is_not_a_title_page():
    html = page(
        canonical("https://www.imdb.com/name/nm0000148/")
        + og("type", "profile")
        + og("image", POSTER)
    )
    with pytest.raises(NotATitlePage, match="nm0000148/ is not an IMDb title page"):
        resolve.parse_imdb_title_page(html)


def test_page_without_address_or_film_markup_is_not_a_title_page():
    with pytest.raises(NotATitlePage, match="give the title URL /title/ttNNNNNNN/"):
        resolve.parse_imdb_title_page(page("<title>Hello</title>", "<p>hi</p>"))


def test_title_page_without_poster():
    html = page(og("url", "https://www.imdb.com/title/tt0000001/") + og("type", "video.movie"))
    with pytest.raises(NoPosterFound) as raised:
        resolve.parse_imdb_title_page(html)
    assert raised.value.reason == "no_poster_in_page"
    assert "https://www.imdb.com/title/tt0000001/" in str(raised.value)


def test_imdb_image_id_ignores_size_suffix():
    assert resolve.imdb_image_id(STAR_WARS_OG_IMAGE) == resolve.imdb_image_id(
        STAR_WARS_OG_IMAGE.replace("FMjpg_UX1000_", "QL75_UX380_CR0,14,380,562_")
    )
    assert resolve.imdb_image_id("https://example.org/a/poster.jpg") == "poster"


def test_imdb_title_url():
    assert (
        resolve.imdb_title_url("https://www.imdb.com/", "tt0076759")
        == "https://www.imdb.com/title/tt0076759/"
    )
    assert (
        resolve.imdb_title_url("http://127.0.0.1:9000", "tt13675894")
        == "http://127.0.0.1:9000/title/tt13675894/"
    )
    for bad in ("0076759", "tt123", "tt0076759/keywords", "nm0000148"):
        with pytest.raises(ValueError, match="not 'tt' followed by 7 or more digits"):
            resolve.imdb_title_url("https://www.imdb.com", bad)


def test_tmdb_urls():
    api = "https://api.themoviedb.org/3"
    assert resolve.tmdb_movie_url(api + "/", 299537) == "https://api.themoviedb.org/3/movie/299537"
    assert (
        resolve.tmdb_image_url(
            "https://image.tmdb.org/t/p/w500/", "/aRJAoQ6mqPHAKXjP3CqNyLC8FAh.jpg"
        )
        == "https://image.tmdb.org/t/p/w500/aRJAoQ6mqPHAKXjP3CqNyLC8FAh.jpg"
    )
    for bad_id in (0, -1, True, "862"):
        with pytest.raises(ValueError, match="not a positive integer"):
            resolve.tmdb_movie_url(api, bad_id)
    for bad_path in ("abc.jpg", "//evil.example.org/x.jpg", "/../x.jpg"):
        with pytest.raises(ValueError, match="not a path"):
            resolve.tmdb_image_url("https://image.tmdb.org/t/p/w500", bad_path)


def test_real_tmdb_movie_answers(shared_data: pathlib.Path):
    assert (
        resolve.parse_tmdb_movie(tmdb_body(shared_data, "movie_299537.json"))
        == "/aRJAoQ6mqPHAKXjP3CqNyLC8FAh.jpg"
    )
    assert (
        resolve.parse_tmdb_movie(tmdb_body(shared_data, "movie__detail.json"))
        == "/bJBZxzFHfTAOtBg8fOCCaBmh4hF.jpg"
    )


def test_real_recorded_uris_carry_no_key(shared_data: pathlib.Path):
    folder = shared_data / "pages" / "tmdb"
    for path in sorted(folder.glob("*__*.json")):
        uri = json.loads(path.read_text(encoding="utf-8"))["request_uri"]
        assert resolve.redact_secrets(uri, []) == uri


def test_tmdb_movie_without_poster():
    with pytest.raises(NoPosterFound) as raised:
        resolve.parse_tmdb_movie({"id": 5, "poster_path": None})
    assert raised.value.reason == "no_poster_path"
    with pytest.raises(NoPosterFound, match="could not be found"):
        resolve.parse_tmdb_movie(
            {"status_code": 34, "status_message": "The resource you requested could not be found."}
        )


def test_redact_secrets():
    key = "k3y/with+chars"
    url = f"https://api.themoviedb.org/3/movie/11?api_key={urllib.parse.quote(key, safe='')}"
    assert resolve.redact_secrets(url, [key]) == (
        "https://api.themoviedb.org/3/movie/11?api_key=REDACTED"
    )
    message = f"GET failed for ?x=1&api_key=other-key&y=2 with bearer {key}"
    assert resolve.redact_secrets(message, [key, ""]) == (
        "GET failed for ?x=1&api_key=REDACTED&y=2 with bearer REDACTED"
    )
    encoded = "next=%2F3%2Fmovie%3Fapi_key%3Dabc123%26page%3D2"
    assert (
        resolve.redact_secrets(encoded, []) == "next=%2F3%2Fmovie%3Fapi_key%3DREDACTED%26page%3D2"
    )
    assert resolve.redact_secrets(f"plus form {urllib.parse.quote_plus(key)}", [key]) == (
        "plus form REDACTED"
    )
    assert resolve.redact_secrets("nothing secret", ["", "absent"]) == "nothing secret"
