"""Tests for transforms.catalog: format detection, row parsing, parse errors and ReadCatalog."""

from __future__ import annotations

import gzip
import pathlib

import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

import schemas
from tests.conftest import local_pipeline
from transforms import catalog
from transforms.catalog import CatalogFormat
from transforms.catalog import CatalogParseError

# The in-process FnApiRunner: "DirectRunner" would first try Prism, which downloads a binary.

LINKS_TEXT = "movieId,imdbId,tmdbId\n1,0114709,862\n260,0076759,11\n"
TMDB_HEADER = (
    "budget,genres,homepage,id,keywords,original_language,original_title,overview,popularity,"
    "production_companies,production_countries,release_date,revenue,runtime,spoken_languages,"
    "status,tagline,title,vote_average,vote_count\n"
)
TOY_STORY_GENRES = (
    '"[{""id"": 16, ""name"": ""Animation""}, {""id"": 35, ""name"": ""Comedy""}, '
    '{""id"": 10751, ""name"": ""Family""}]"'
)
TOY_STORY_TMDB = (
    f"30000000,{TOY_STORY_GENRES},http://toystory.disney.com,862,[],en,Toy Story,"
    '"Led by Woody, Andy\'s toys live happily in his room.\nUntil Buzz arrives.",21.9,[],[],'
    "1995-10-30,373554033,81,[],Released,,Toy Story,7.7,5415\n"
)
STAR_WARS_GENRES = (
    '"[{""id"": 12, ""name"": ""Adventure""}, {""id"": 878, ""name"": ""Science Fiction""}]"'
)
STAR_WARS_TMDB = (
    f'11000000,{STAR_WARS_GENRES},,11,[],en,Star Wars,"Princess Leia is captured.",126.4,'
    "[],[],1977-05-25,775398007,121,[],Released,,Star Wars,8.1,6624\n"
)
MOVIEGENRE_TEXT = (
    "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"
    "114709,http://www.imdb.com/title/tt114709,Toy Story (1995),8.3,"
    "Animation|Adventure|Comedy|Family,https://images-na.ssl-images-amazon.com/images/M/toy.jpg\n"
    "76759,http://www.imdb.com/title/tt76759,Star Wars (1977),8.6,"
    "Action|Adventure|Fantasy|Sci-Fi,\n"
)
PLAIN_TEXT = (
    "movie_id,poster_url,title,year,genres\n"
    "1,https://example.org/posters/1.jpg,Toy Story,1995,Adventure|Animation|Children|Comedy\n"
    "260,https://example.org/posters/260.jpg,Star Wars,1977,(no genres listed)\n"
)


def entry(line_number: int, movie_id: int, **kwargs: object) -> schemas.CatalogEntry:
    """A catalog entry with the given line, film id and other fields."""
    return schemas.CatalogEntry(line_number=line_number, movie_id=movie_id, **kwargs)


def errors_of(text: str) -> list[tuple[int, str]]:
    """(line number, reason) of each parse error of a catalog text."""
    return [
        (item.line_number, item.reason)
        for item in catalog.parse_catalog(text)
        if isinstance(item, CatalogParseError)
    ]


def test_links_rows_parse_with_padded_imdb_ids():
    assert list(catalog.parse_catalog(LINKS_TEXT)) == [
        entry(2, 1, imdb_id="tt0114709", tmdb_id=862),
        entry(3, 260, imdb_id="tt0076759", tmdb_id=11),
    ]


def test_links_row_without_tmdb_id_keeps_imdb_id():
    (item,) = catalog.parse_catalog("movieId,imdbId,tmdbId\n4,0114885,\n")
    assert item == entry(2, 4, imdb_id="tt0114885", tmdb_id=None)


def test_tmdb5000_rows_parse_with_quoted_newline_and_mapped_genres():
    assert list(catalog.parse_catalog(TMDB_HEADER + TOY_STORY_TMDB + STAR_WARS_TMDB)) == [
        entry(
            2,
            862,
            tmdb_id=862,
            title="Toy Story",
            year=1995,
            genres=("Animation", "Comedy", "Children"),
        ),
        entry(4, 11, tmdb_id=11, title="Star Wars", year=1977, genres=("Adventure", "Sci-Fi")),
    ]


def test_moviegenre_rows_parse_title_year_and_poster():
    assert list(catalog.parse_catalog(MOVIEGENRE_TEXT)) == [
        entry(
            2,
            114709,
            imdb_id="tt0114709",
            title="Toy Story",
            year=1995,
            poster_url="https://images-na.ssl-images-amazon.com/images/M/toy.jpg",
            genres=("Animation", "Adventure", "Comedy", "Children"),
        ),
        entry(
            3,
            76759,
            imdb_id="tt0076759",
            title="Star Wars",
            year=1977,
            genres=("Action", "Adventure", "Fantasy", "Sci-Fi"),
        ),
    ]


def test_plain_rows_parse_with_optional_columns():
    assert list(catalog.parse_catalog(PLAIN_TEXT)) == [
        entry(
            2,
            1,
            title="Toy Story",
            year=1995,
            poster_url="https://example.org/posters/1.jpg",
            genres=("Adventure", "Animation", "Children", "Comedy"),
        ),
        entry(
            3, 260, title="Star Wars", year=1977, poster_url="https://example.org/posters/260.jpg"
        ),
    ]


def test_plain_needs_only_id_and_url():
    (item,) = catalog.parse_catalog("movie_id,poster_url\n7,http://example.org/7.png\n")
    assert item == entry(2, 7, poster_url="http://example.org/7.png")


def test_same_film_has_same_external_ids_in_every_format():
    star_wars = [
        next(e for e in catalog.parse_catalog(text) if e.title == "Star Wars" or e.movie_id == 260)
        for text in (LINKS_TEXT, TMDB_HEADER + STAR_WARS_TMDB, MOVIEGENRE_TEXT, PLAIN_TEXT)
    ]
    links, tmdb, moviegenre, plain = star_wars
    assert links.imdb_id == moviegenre.imdb_id == "tt0076759"
    assert links.tmdb_id == tmdb.tmdb_id == tmdb.movie_id == 11
    assert moviegenre.movie_id == 76759
    assert links.movie_id == plain.movie_id == 260
    assert tmdb.year == moviegenre.year == plain.year == 1977


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (["movieId", "imdbId", "tmdbId"], CatalogFormat.LINKS),
        (["\ufeffMOVIEID ", " imdbid", "TmdbId"], CatalogFormat.LINKS),
        (TMDB_HEADER.strip().split(","), CatalogFormat.TMDB5000),
        (
            ["imdbId", "Imdb Link", "Title", "IMDB Score", "Genre", "Poster"],
            CatalogFormat.MOVIEGENRE,
        ),
        (["movie_id", "poster_url"], CatalogFormat.PLAIN),
        (["movie_id", "poster_url", "genres"], CatalogFormat.PLAIN),
        (["movie_id", "poster_url", "title", "year", "genres"], CatalogFormat.PLAIN),
    ],
)
def test_detect_format(header, expected):
    assert catalog.detect_format(header) == expected


def test_detect_format_rejects_unknown_header_naming_the_flag_and_headers():
    with pytest.raises(ValueError, match="--catalog_format") as raised:
        catalog.detect_format(["id", "url"])
    message = str(raised.value)
    assert "'id,url'" in message
    assert "movieId,imdbId,tmdbId" in message
    assert "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster" in message
    assert "budget,genres,homepage,id" in message
    assert "movie_id,poster_url[,title,year,genres]" in message


def test_parse_catalog_raises_on_unknown_header():
    with pytest.raises(ValueError, match="--catalog_format"):
        list(catalog.parse_catalog("id,url\n1,http://example.org/1.jpg\n"))


def test_explicit_format_reads_columns_by_position():
    items = list(catalog.parse_catalog("id,url\n1,http://example.org/1.jpg\n", "plain"))
    assert items == [entry(2, 1, poster_url="http://example.org/1.jpg")]


def test_unknown_format_name_lists_choices():
    with pytest.raises(ValueError, match="links, tmdb5000, moviegenre, plain"):
        catalog.parse_catalog_format("csv")


def test_quoted_newlines_keep_physical_line_numbers():
    text = (
        "movie_id,poster_url,title\n"
        '1,http://example.org/1.jpg,"A\nlong\ntitle"\n'
        "\n"
        '2,http://example.org/2.jpg,"B, with comma"\n'
        "x,http://example.org/3.jpg,C\n"
    )
    items = list(catalog.parse_catalog(text))
    assert items[0] == entry(2, 1, poster_url="http://example.org/1.jpg", title="A\nlong\ntitle")
    assert items[1] == entry(6, 2, poster_url="http://example.org/2.jpg", title="B, with comma")
    assert items[2].line_number == 7
    assert items[2].raw == "x,http://example.org/3.jpg,C"


def test_crlf_lines_and_lists_of_lines_are_accepted():
    text = "movieId,imdbId,tmdbId\r\n1,0114709,862\r\n\r\n260,0076759,11\r\n"
    expected = [
        entry(2, 1, imdb_id="tt0114709", tmdb_id=862),
        entry(4, 260, imdb_id="tt0076759", tmdb_id=11),
    ]
    assert list(catalog.parse_catalog(text)) == expected
    assert list(catalog.parse_catalog(text.splitlines(keepends=True))) == expected


def test_empty_catalog_has_no_rows():
    assert list(catalog.parse_catalog("")) == []
    assert list(catalog.parse_catalog("movieId,imdbId,tmdbId\n")) == []


def test_decode_catalog_bytes_handles_utf8_bom_and_latin1():
    assert catalog.decode_catalog_bytes("\ufeffTitle,Amélie\n".encode()) == "Title,Amélie\n"
    assert catalog.decode_catalog_bytes("Amélie (2001)".encode("latin-1")) == "Amélie (2001)"
    assert catalog.decode_catalog_bytes(b"Ocean\x92s Eleven") == "Ocean\u2019s Eleven"


def test_latin1_moviegenre_file_parses():
    text = (
        "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"
        "211915,http://www.imdb.com/title/tt211915,Amélie (2001),8.3,Comedy|Romance,\n"
    )
    (item,) = catalog.parse_catalog(catalog.decode_catalog_bytes(text.encode("latin-1")))
    assert item == entry(
        2, 211915, imdb_id="tt0211915", title="Amélie", year=2001, genres=("Comedy", "Romance")
    )


def test_genres_map_to_movielens_names():
    names = ["Science Fiction", "Family", "Music", "History", "TV Movie", "Drama", "drama", "IMAX"]
    assert catalog.normalise_genres(names) == ("Sci-Fi", "Children", "Musical", "Drama", "IMAX")
    assert catalog.normalise_genres(["Foreign", "Biography"]) == ()


@pytest.mark.parametrize(
    ("row", "reason", "value"),
    [
        ("1,0114709", "wrong_column_count", "2 columns"),
        ("1,0114709,862,9", "wrong_column_count", "4 columns"),
        ("one,0114709,862", "bad_movie_id", "'one'"),
        ("0,0114709,862", "bad_movie_id", "'0'"),
        ("-3,0114709,862", "bad_movie_id", "'-3'"),
        (",0114709,862", "bad_movie_id", "''"),
        ("1.5,0114709,862", "bad_movie_id", "'1.5'"),
        ("1,nm0000123,862", "bad_imdb_id", "'nm0000123'"),
        ("1,0000000,862", "bad_imdb_id", "'0000000'"),
        ("1,0114709,862.0", "bad_tmdb_id", "'862.0'"),
        ("1,0114709,-862", "bad_tmdb_id", "'-862'"),
        ("1,,", "missing_poster_source", "film 1"),
    ],
)
def test_malformed_links_rows(row, reason, value):
    text = f"movieId,imdbId,tmdbId\n260,0076759,11\n{row}\n2,0113497,8844\n"
    items = list(catalog.parse_catalog(text))
    assert len(items) == 3
    error = items[1]
    assert isinstance(error, CatalogParseError)
    assert (error.line_number, error.reason, error.raw) == (3, reason, row)
    assert value in error.detail
    assert items[2] == entry(4, 2, imdb_id="tt0113497", tmdb_id=8844)


@pytest.mark.parametrize(
    ("row", "reason", "column"),
    [
        ("1,ftp://example.org/1.jpg,A,1995,", "bad_url", "poster_url"),
        ("1,not a url,A,1995,", "bad_url", "poster_url"),
        ("1,//example.org/1.jpg,A,1995,", "bad_url", "poster_url"),
        ("1,http://example.org/1.jpg,A,199x,", "bad_year", "year"),
        ("1,http://example.org/1.jpg,A,1066,", "bad_year", "year"),
        ("1,,A,1995,Comedy", "missing_poster_source", "film 1"),
    ],
)
def test_malformed_plain_rows(row, reason, column):
    text = f"movie_id,poster_url,title,year,genres\n{row}\n"
    (error,) = catalog.parse_catalog(text)
    assert isinstance(error, CatalogParseError)
    assert (error.line_number, error.reason) == (2, reason)
    assert column in error.detail


def test_malformed_tmdb5000_rows():
    bad_genres = TOY_STORY_TMDB.replace(TOY_STORY_GENRES, '"[{""id"": 16}]"', 1)
    bad_date = STAR_WARS_TMDB.replace("1977-05-25", "May 1977")
    text = TMDB_HEADER + bad_genres + bad_date
    assert errors_of(text) == [(2, "bad_genres"), (4, "bad_year")]


def test_malformed_moviegenre_rows():
    text = (
        "imdbId,Imdb Link,Title,IMDB Score,Genre,Poster\n"
        "tt114709,x,Toy Story (1995),8.3,Comedy,\n"
        "114709,x,Toy Story (1995),8.3,Comedy,file:///etc/passwd\n"
    )
    assert errors_of(text) == [(2, "bad_movie_id"), (3, "bad_url")]


def test_invalid_csv_rows_are_errors_and_parsing_continues():
    text = (
        "movie_id,poster_url\n"
        '1,"http://example.org/1.jpg"x\n'
        "2,http://example.org/2.jpg\n"
        '3,"http://example.org/3.jpg\n'
        "4,http://example.org/4.jpg\n"
    )
    items = list(catalog.parse_catalog(text))
    assert [(i.line_number, getattr(i, "reason", None)) for i in items] == [
        (2, "bad_csv"),
        (3, None),
        (4, "bad_csv"),
    ]


def test_raw_row_is_truncated():
    row = "1," + "x" * 5000 + ",862"
    (error,) = catalog.parse_catalog(f"movieId,imdbId,tmdbId\n{row}\n")
    assert error.reason == "bad_imdb_id"
    assert error.raw == row[: catalog.MAX_RAW_CHARS]


def dead_letter(line_number: int, reason: str, detail: str, raw: str) -> schemas.DeadLetter:
    """The parse-stage dead letter of a catalog row in the pipeline test."""
    return schemas.DeadLetter(
        run_id="run-1",
        stage="parse",
        reason=reason,
        detail=detail,
        input_row=raw,
        attempts=0,
        line_number=line_number,
        movie_id=None,
        url=None,
        http_status=None,
    )


CATALOG_WITH_ERRORS = (
    "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497\nx,0113228,15602\n\n260,0076759,11\n5,,\n"
)


@pytest.mark.parametrize("compress", [False, True])
def test_read_catalog_pipeline(tmp_path: pathlib.Path, compress: bool):
    if compress:
        path = tmp_path / "links.csv.gz"
        path.write_bytes(gzip.compress(CATALOG_WITH_ERRORS.encode()))
    else:
        path = tmp_path / "links.csv"
        path.write_text(CATALOG_WITH_ERRORS)
    pipeline = local_pipeline()
    outputs = pipeline | "ReadCatalog" >> catalog.ReadCatalog(str(path), "run-1")
    assert_that(
        outputs.entries,
        equal_to(
            [
                entry(2, 1, imdb_id="tt0114709", tmdb_id=862),
                entry(6, 260, imdb_id="tt0076759", tmdb_id=11),
            ]
        ),
        label="CheckEntries",
    )
    assert_that(
        outputs.dead_letter,
        equal_to(
            [
                dead_letter(
                    3, "wrong_column_count", "row has 2 columns but the header has 3", "2,0113497"
                ),
                dead_letter(
                    4,
                    "bad_movie_id",
                    "column 'movieId' is 'x', not a positive integer",
                    "x,0113228,15602",
                ),
                dead_letter(
                    7,
                    "missing_poster_source",
                    "film 5 has no poster URL, IMDb id or TMDb id to find its poster by",
                    "5,,",
                ),
            ]
        ),
        label="CheckDeadLetters",
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("scrape"))["counters"]
    }
    assert counters == {"catalog_rows": 5, "catalog_parse_errors": 3}


def test_read_catalog_detects_format_at_construction(tmp_path: pathlib.Path):
    path = tmp_path / "plain.csv"
    path.write_bytes(b"\n\xef\xbb\xbf" + PLAIN_TEXT.encode())
    assert catalog.ReadCatalog(str(path), "run-1").catalog_format == CatalogFormat.PLAIN


def test_read_catalog_rejects_unknown_header_at_construction(tmp_path: pathlib.Path):
    path = tmp_path / "films.csv"
    path.write_text("id,url\n1,http://example.org/1.jpg\n")
    with pytest.raises(ValueError, match="--catalog_format"):
        catalog.ReadCatalog(str(path), "run-1")
    transform = catalog.ReadCatalog(str(path), "run-1", catalog_format="PLAIN")
    assert transform.catalog_format == CatalogFormat.PLAIN


def test_read_catalog_checks_its_arguments(tmp_path: pathlib.Path):
    with pytest.raises(ValueError, match="links, tmdb5000, moviegenre, plain"):
        catalog.ReadCatalog(str(tmp_path / "x.csv"), "run-1", catalog_format="json")
    with pytest.raises(ValueError, match="run_id"):
        catalog.ReadCatalog(str(tmp_path / "x.csv"), "", catalog_format="links")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        catalog.ReadCatalog(str(tmp_path / "missing.csv"), "run-1")


def test_real_movielens_links_parse_without_errors(shared_data: pathlib.Path):
    path = shared_data / "movielens" / "ml-latest-small" / "links.csv"
    items = list(catalog.parse_catalog(catalog.decode_catalog_bytes(path.read_bytes())))
    errors = [item for item in items if isinstance(item, CatalogParseError)]
    assert errors == []
    assert len(items) == 9742
    star_wars = next(item for item in items if item.movie_id == 260)
    assert (star_wars.imdb_id, star_wars.tmdb_id) == ("tt0076759", 11)
    assert len({item.movie_id for item in items}) == len(items)
