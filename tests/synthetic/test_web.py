"""The synthetic poster web: TMDb/IMDb imitations, image routes, faults and the request log."""

from __future__ import annotations

import http.client
import io
import json
import pathlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from bs4 import BeautifulSoup
from PIL import Image

from synthetic.catalog import Film
from synthetic.catalog import SyntheticCatalog
from synthetic.posters import encode_jpeg
from synthetic.web import FAULT_KINDS
from synthetic.web import FORBIDDEN_REDIRECT
from synthetic.web import TMDB_IMAGE_SIZES
from synthetic.web import FaultPlan
from synthetic.web import PosterWeb

KEY = "s3cret-test-key-123"
TIMEOUT = (2.0, 5.0)


@pytest.fixture(scope="module")
def web(small_catalog: SyntheticCatalog) -> Iterator[PosterWeb]:
    """A fault-free server with one noai film and a robots.txt rule."""
    noai = [small_catalog.films[1].movie_id]
    server = PosterWeb.from_catalog(
        small_catalog, api_key=KEY, robots_disallow=["/private/"], noai_movie_ids=noai
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def every_fault(small_catalog: SyntheticCatalog) -> FaultPlan:
    """A plan that gives each of the seven fault kinds to about a seventh of the films."""
    share = 1 / len(FAULT_KINDS)
    return FaultPlan(**{k: share for k in FAULT_KINDS}, seed=2, slow_s=0.6, retry_after_s=7)


@pytest.fixture
def faulty(small_catalog: SyntheticCatalog, every_fault: FaultPlan) -> Iterator[PosterWeb]:
    """A server whose image routes all misbehave in one of the seven ways."""
    with PosterWeb.from_catalog(small_catalog, api_key=KEY, faults=every_fault) as server:
        yield server


def _tmdb(web: PosterWeb, tmdb_id: int, key: str | None = KEY) -> requests.Response:
    """GET /3/movie/{id} with an optional api_key."""
    params = {} if key is None else {"api_key": key}
    return requests.get(f"{web.tmdb_api_base}/movie/{tmdb_id}", params=params, timeout=TIMEOUT)


def test_addresses(web: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    assert web.base_url == f"http://127.0.0.1:{web.port}"
    assert web.host == f"127.0.0.1:{web.port}"
    assert web.tmdb_api_base == web.base_url + "/3"
    assert web.tmdb_image_base == web.base_url + "/t/p/w500"
    assert web.imdb_base == web.base_url
    film = small_catalog.films[0]
    assert web.poster_url(film) == f"{web.base_url}/posters/{film.movie_id}.jpg"
    assert web.tmdb_poster_path(film) == small_catalog.poster_path(film.movie_id)


def test_not_running_has_no_address(small_catalog: SyntheticCatalog) -> None:
    server = PosterWeb.from_catalog(small_catalog)
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    try:
        assert requests.get(server.base_url + "/robots.txt", timeout=TIMEOUT).ok
    finally:
        server.stop()
    server.stop()


def test_tmdb_movie_200(web: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.films[3]
    response = _tmdb(web, film.tmdb_id)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json;charset=utf-8"
    body = response.json()
    assert body["id"] == film.tmdb_id
    assert body["imdb_id"] == film.imdb_id
    assert body["title"] == film.title
    assert body["release_date"].startswith(str(film.year))
    assert body["poster_path"] == small_catalog.poster_path(film.movie_id)
    assert all(set(g) == {"id", "name"} for g in body["genres"])
    image = requests.get(web.tmdb_image_base + body["poster_path"], timeout=TIMEOUT)
    assert image.content == small_catalog.poster_bytes(film.movie_id)


def test_tmdb_movie_shaped_like_the_real_one(web: PosterWeb, shared_data: pathlib.Path) -> None:
    real = json.loads((shared_data / "pages" / "tmdb" / "movie_299537.json").read_text())
    film = web.films[0]
    body = _tmdb(web, film.tmdb_id).json()
    missing = set(real) - set(body) - {"images", "videos"}
    assert not missing
    for key in ("id", "budget", "revenue", "runtime", "vote_count"):
        assert isinstance(body[key], int)
    for key in ("title", "imdb_id", "poster_path", "backdrop_path", "overview", "release_date"):
        assert isinstance(body[key], str)


def test_tmdb_append_images_find_and_configuration(web: PosterWeb) -> None:
    film = web.films[2]
    url = f"{web.tmdb_api_base}/movie/{film.tmdb_id}"
    body = requests.get(
        url, params={"api_key": KEY, "append_to_response": "images"}, timeout=TIMEOUT
    ).json()
    assert body["images"]["posters"][0]["file_path"] == body["poster_path"]
    found = requests.get(
        f"{web.tmdb_api_base}/find/{film.imdb_id}",
        params={"api_key": KEY, "external_source": "imdb_id"},
        timeout=TIMEOUT,
    ).json()
    assert [m["id"] for m in found["movie_results"]] == [film.tmdb_id]
    assert found["movie_results"][0]["poster_path"] == body["poster_path"]
    config = requests.get(f"{web.tmdb_api_base}/configuration", params={"api_key": KEY}).json()
    assert config["images"]["base_url"] == web.base_url + "/t/p/"
    bearer = requests.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert bearer.status_code == 200


def test_tmdb_401_and_404(web: PosterWeb) -> None:
    film = web.films[0]
    for key in (None, "wrong-key", ""):
        response = _tmdb(web, film.tmdb_id, key)
        assert response.status_code == 401
        assert response.headers["Content-Type"] == "application/json;charset=utf-8"
        assert response.json() == {
            "status_code": 7,
            "status_message": "Invalid API key: You must be granted a valid key.",
            "success": False,
        }
    unknown = max(f.tmdb_id for f in web.films) + 1
    response = _tmdb(web, unknown)
    assert response.status_code == 404
    assert response.json() == {
        "status_code": 34,
        "status_message": "The resource you requested could not be found.",
        "success": False,
    }
    assert _tmdb(web, unknown, None).status_code == 401


def test_image_routes_serve_catalog_bytes(web: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.films[4]
    expected = small_catalog.poster_bytes(film.movie_id)
    urls = [web.poster_url(film), web.imdb_image_url(film), web.imdb_image_url(film, "UX190")]
    urls += [web.tmdb_poster_url(film, size) for size in TMDB_IMAGE_SIZES]
    with requests.Session() as session:
        for url in urls:
            response = session.get(url, timeout=TIMEOUT)
            assert response.status_code == 200, url
            assert response.headers["Content-Type"] == "image/jpeg"
            assert response.content == expected
    dup = small_catalog.duplicates[0]
    a = requests.get(web.poster_url(small_catalog.film(dup.movie_id)), timeout=TIMEOUT)
    assert a.content == small_catalog.poster_bytes(dup.movie_id)
    bad = [
        f"{web.base_url}/t/p/w999{small_catalog.poster_path(film.movie_id)}",
        f"{web.base_url}/t/p/w500/nope.jpg",
        f"{web.base_url}/images/M/MV5Bnope@._V1_.jpg",
        f"{web.base_url}/posters/999999.jpg",
        f"{web.base_url}/nothing/here",
    ]
    for url in bad:
        assert requests.get(url, timeout=TIMEOUT).status_code == 404, url


def test_head_and_keep_alive(web: PosterWeb) -> None:
    film = web.films[6]
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    try:
        conn.request("HEAD", f"/posters/{film.movie_id}.jpg")
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        length = int(head.getheader("Content-Length"))
        conn.request("GET", f"/posters/{film.movie_id}.jpg")
        got = conn.getresponse()
        assert len(got.read()) == length
        conn.request("GET", "/robots.txt")
        assert conn.getresponse().read().startswith(b"User-agent: *")
    finally:
        conn.close()


def test_serves_real_image_files_with_sniffed_type(small_catalog: SyntheticCatalog) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (20, 30), (200, 10, 10)).save(buf, format="PNG")
    files = {f.movie_id: buf.getvalue() for f in small_catalog.films[:3]}
    with PosterWeb(small_catalog.films[:3], files.__getitem__) as server:
        film = small_catalog.films[0]
        response = requests.get(server.poster_url(film), timeout=TIMEOUT)
        assert response.headers["Content-Type"] == "image/png"
        assert response.content == files[film.movie_id]
        path = server.tmdb_poster_path(film)
        assert requests.get(server.tmdb_image_base + path, timeout=TIMEOUT).ok


def test_imdb_title_page(web: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.films[7]
    response = requests.get(f"{web.imdb_base}/title/{film.imdb_id}/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    soup = BeautifulSoup(response.text, "html.parser")
    og_image = soup.find("meta", attrs={"property": "og:image"})["content"]
    assert og_image == web.imdb_image_url(film)
    assert og_image.startswith(f"{web.base_url}/images/M/") and og_image.endswith("._V1_.jpg")
    ld = json.loads(soup.find("script", attrs={"type": "application/ld+json"}).string)
    assert ld["@type"] == "Movie" and ld["name"] == film.title and ld["image"] == og_image
    assert soup.find("link", rel="canonical")["href"].endswith(f"/title/{film.imdb_id}/")
    image = requests.get(og_image, timeout=TIMEOUT)
    assert image.content == small_catalog.poster_bytes(film.movie_id)
    no_slash = requests.get(f"{web.imdb_base}/title/{film.imdb_id}", timeout=TIMEOUT)
    assert no_slash.status_code == 200


def test_imdb_keywords_page_and_404(web: PosterWeb) -> None:
    film = web.films[8]
    response = requests.get(f"{web.imdb_base}/title/{film.imdb_id}/keywords", timeout=TIMEOUT)
    assert response.status_code == 200
    soup = BeautifulSoup(response.text, "html.parser")
    assert soup.find("meta", attrs={"property": "og:image"}) is None
    for script in soup.find_all("script", attrs={"type": "application/ld+json"}):
        assert json.loads(script.string).get("@type") != "Movie"
    assert soup.find("meta", attrs={"property": "subpageType"})["content"] == "keywords"
    assert soup.find("link", rel="canonical")["href"].endswith("/keywords")
    unknown = requests.get(f"{web.imdb_base}/title/tt0000001/", timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert "text/html" in unknown.headers["Content-Type"]


def test_robots_txt(web: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    text = requests.get(web.base_url + "/robots.txt", timeout=TIMEOUT).text
    assert text.splitlines() == ["User-agent: *", "Disallow: /private/", "Allow: /"]
    with PosterWeb.from_catalog(small_catalog, crawl_delay_s=0.5) as server:
        lines = requests.get(server.base_url + "/robots.txt", timeout=TIMEOUT).text.splitlines()
        assert lines == ["User-agent: *", "Crawl-delay: 0.5", "Allow: /"]


def test_noai_header(web: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    tagged, plain = small_catalog.films[1], small_catalog.films[2]
    response = requests.get(web.poster_url(tagged), timeout=TIMEOUT)
    assert response.headers["X-Robots-Tag"] == "noai, noimageai"
    assert response.content == small_catalog.poster_bytes(tagged.movie_id)
    assert "X-Robots-Tag" not in requests.get(web.poster_url(plain), timeout=TIMEOUT).headers
    page = requests.get(f"{web.imdb_base}/title/{tagged.imdb_id}/", timeout=TIMEOUT)
    assert "X-Robots-Tag" not in page.headers


def test_request_log_redacts_key(web: PosterWeb) -> None:
    web.reset_log()
    film = web.films[9]
    _tmdb(web, film.tmdb_id)
    _tmdb(web, film.tmdb_id, "wrong-key")
    requests.get(web.poster_url(film), headers={"User-Agent": "poster-bot/1.0"}, timeout=TIMEOUT)
    log = web.request_log
    assert [(r.method, r.path, r.status) for r in log] == [
        ("GET", f"/3/movie/{film.tmdb_id}", 200),
        ("GET", f"/3/movie/{film.tmdb_id}", 401),
        ("GET", f"/posters/{film.movie_id}.jpg", 200),
    ]
    assert log[0].query == {"api_key": "REDACTED"} and log[1].query == {"api_key": "REDACTED"}
    assert log[2].user_agent == "poster-bot/1.0"
    assert log[0].time <= log[1].time <= log[2].time <= time.monotonic()
    assert KEY not in repr(log) and "wrong-key" not in repr(log)
    assert KEY not in repr(vars(web))
    assert [r.path for r in web.requests_for("/posters/")] == [f"/posters/{film.movie_id}.jpg"]
    web.reset_log()
    assert web.request_log == []


def test_latency(small_catalog: SyntheticCatalog) -> None:
    with PosterWeb.from_catalog(small_catalog, latency_s=0.2) as server:
        start = time.monotonic()
        requests.get(server.base_url + "/robots.txt", timeout=TIMEOUT)
        assert time.monotonic() - start >= 0.2


def test_fault_assignment(every_fault: FaultPlan, faulty: PosterWeb) -> None:
    ids = [f.movie_id for f in faulty.films]
    assigned = {kind: faulty.faulted_ids(kind) for kind in FAULT_KINDS}
    assert all(assigned.values()), assigned
    flat = [m for kind in FAULT_KINDS for m in assigned[kind]]
    assert sorted(flat) == sorted(ids), "fractions summing to 1 cover every film exactly once"
    assert all(every_fault.fault_for(m) == k for k, ms in assigned.items() for m in ms)
    plan = FaultPlan(http_500=0.1, bomb=0.2, seed=4)
    kinds = [plan.fault_for(m) for m in range(20_000)]
    assert abs(kinds.count("http_500") / 20_000 - 0.1) < 0.01
    assert abs(kinds.count("bomb") / 20_000 - 0.2) < 0.01
    assert kinds == [plan.fault_for(m) for m in range(20_000)]
    assert kinds != [FaultPlan(http_500=0.1, bomb=0.2, seed=5).fault_for(m) for m in range(20_000)]
    assert FaultPlan().fault_for(1) is None
    with pytest.raises(ValueError):
        FaultPlan(http_500=0.7, slow=0.5)


def test_faults_only_touch_image_routes(faulty: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.film(faulty.faulted_ids("http_500")[0])
    assert _tmdb(faulty, film.tmdb_id).status_code == 200
    assert requests.get(faulty.imdb_title_url(film), timeout=TIMEOUT).status_code == 200
    assert requests.get(faulty.base_url + "/robots.txt", timeout=TIMEOUT).status_code == 200


def test_http_500_is_transient_per_path(faulty: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.film(faulty.faulted_ids("http_500")[0])
    with requests.Session() as session:
        for url in (faulty.poster_url(film), faulty.tmdb_poster_url(film)):
            assert session.get(url, timeout=TIMEOUT).status_code == 500
            ok = session.get(url, timeout=TIMEOUT)
            assert ok.status_code == 200
            assert ok.content == small_catalog.poster_bytes(film.movie_id)
    faulty.reset_fault_counters()
    assert requests.get(faulty.poster_url(film), timeout=TIMEOUT).status_code == 500


def test_transient_failures_count(small_catalog: SyntheticCatalog) -> None:
    plan = FaultPlan(http_500=0.5, http_429=0.5, seed=1, transient_failures=3, retry_after_s=2)
    with PosterWeb.from_catalog(small_catalog, faults=plan) as server:
        for kind, status in (("http_500", 500), ("http_429", 429)):
            url = server.poster_url(small_catalog.film(server.faulted_ids(kind)[0]))
            statuses = [requests.get(url, timeout=TIMEOUT).status_code for _ in range(5)]
            assert statuses == [status, status, status, 200, 200]
    permanent = FaultPlan(http_500=1.0, transient_failures=10**9)
    with PosterWeb.from_catalog(small_catalog, faults=permanent) as server:
        url = server.poster_url(small_catalog.films[0])
        assert {requests.get(url, timeout=TIMEOUT).status_code for _ in range(4)} == {500}


def test_http_429_has_retry_after(faulty: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.film(faulty.faulted_ids("http_429")[0])
    first = requests.get(faulty.poster_url(film), timeout=TIMEOUT)
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "7"
    assert requests.get(faulty.poster_url(film), timeout=TIMEOUT).status_code == 200


def test_slow_then_fast(
    small_catalog: SyntheticCatalog, capfd: pytest.CaptureFixture[str]
) -> None:
    """A slow poster outlasts a read timeout once, then comes at once (a transient fault). The
    delay (2 s) leaves a loaded machine room: the timeouts sit well either side of it."""
    plan = FaultPlan(slow=1.0, seed=2, slow_s=2.0)
    with PosterWeb.from_catalog(small_catalog, api_key=KEY, faults=plan) as web:
        url = web.poster_url(small_catalog.film(web.faulted_ids("slow")[0]))
        start = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(url, timeout=(2.0, 0.3))
        assert time.monotonic() - start < plan.slow_s - 0.5
        fast = requests.get(url, timeout=(2.0, plan.slow_s - 0.5))
        assert fast.status_code == 200 and fast.content[:2] == b"\xff\xd8"
        time.sleep(plan.slow_s + 0.3)  # the first response's handler finishes quietly
    assert "Traceback" not in capfd.readouterr().err


def test_truncated(faulty: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    movie_id = faulty.faulted_ids("truncated")[0]
    full = small_catalog.poster_bytes(movie_id)
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", faulty.port, timeout=5)
        try:
            conn.request("GET", f"/posters/{movie_id}.jpg")
            response = conn.getresponse()
            assert response.status == 200
            assert int(response.getheader("Content-Length")) == len(full)
            with pytest.raises(http.client.IncompleteRead) as err:
                response.read()
            assert err.value.partial == full[: len(full) // 2]
        finally:
            conn.close()
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(faulty.poster_url(small_catalog.film(movie_id)), timeout=TIMEOUT)


def test_not_image(faulty: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.film(faulty.faulted_ids("not_image")[0])
    for _ in range(2):
        response = requests.get(faulty.tmdb_poster_url(film), timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.content.lstrip().lower().startswith(b"<!doctype html")
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(io.BytesIO(response.content))


def test_bomb(
    faulty: PosterWeb, small_catalog: SyntheticCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    film = small_catalog.film(faulty.faulted_ids("bomb")[0])
    response = requests.get(faulty.imdb_image_url(film), timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert len(response.content) < 5000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.size == (60000, 60000)


def test_bad_redirect_is_never_followed(faulty: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    film = small_catalog.film(faulty.faulted_ids("bad_redirect")[0])
    for url in (faulty.poster_url(film), faulty.tmdb_poster_url(film, "w185")):
        response = requests.get(url, timeout=TIMEOUT, allow_redirects=False)
        assert response.status_code == 302
        assert response.headers["Location"] == FORBIDDEN_REDIRECT


def test_client_hang_ups_are_quiet(faulty: PosterWeb, capfd: pytest.CaptureFixture[str]) -> None:
    movie_id = faulty.faulted_ids("truncated")[0]
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", faulty.port), timeout=2)
        sock.sendall(f"GET /posters/{movie_id}.jpg HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.close()
        raw = socket.create_connection(("127.0.0.1", faulty.port), timeout=2)
        raw.sendall(b"GET /robots")
        raw.close()
    time.sleep(0.2)
    assert requests.get(faulty.base_url + "/robots.txt", timeout=TIMEOUT).ok
    assert "Traceback" not in capfd.readouterr().err


def test_many_parallel_clients(web: PosterWeb, small_catalog: SyntheticCatalog) -> None:
    films = small_catalog.films[:24]

    def fetch(film: Film) -> bytes:
        return requests.get(web.poster_url(film), timeout=TIMEOUT).content

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(fetch, films))
    assert got == [small_catalog.poster_bytes(f.movie_id) for f in films]
    assert np.mean([len(g) for g in got]) > 1000
    assert encode_jpeg(Image.open(io.BytesIO(got[0])))[:2] == b"\xff\xd8"
