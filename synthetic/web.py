"""A local HTTP server that imitates the TMDb API, the TMDb image host and IMDb.

`PosterWeb` binds 127.0.0.1 on a free port and serves, for a list of films:

* ``/robots.txt``
* ``/3/movie/{tmdb_id}?api_key=K`` (TMDb API v3 movie details), ``/3/find/{imdb_id}``
  and ``/3/configuration``
* ``/t/p/{size}/{poster_path}`` (TMDb image host)
* ``/title/tt{digits}/`` and ``/title/tt{digits}/keywords`` (IMDb pages)
* ``/images/M/{name}`` (IMDb media host)
* ``/posters/{movie_id}.jpg`` (the URL column of URL-based catalogs)

`FaultPlan` injects faults into the image routes only: transient ones (HTTP 500,
HTTP 429 with Retry-After, a response slower than the client's read timeout) that
clear after a number of attempts per URL path, and permanent ones (a truncated
body, HTML served as image/jpeg, a decompression-bomb PNG, a redirect to a host
that must never be contacted).  Every request is logged with the TMDb API key
redacted; the server keeps only a digest of the key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import unquote
from urllib.parse import urlsplit

from synthetic.catalog import Film
from synthetic.catalog import SyntheticCatalog
from synthetic.catalog import film_metadata
from synthetic.catalog import film_overview
from synthetic.catalog import tmdb_genres
from synthetic.catalog import tmdb_style_path
from synthetic.posters import decompression_bomb_png

FAULT_KINDS: tuple[str, ...] = (
    "http_500",
    "http_429",
    "slow",
    "truncated",
    "not_image",
    "bomb",
    "bad_redirect",
)
TRANSIENT_FAULTS: frozenset[str] = frozenset({"http_500", "http_429", "slow"})
FORBIDDEN_REDIRECT = "http://forbidden.invalid/poster.jpg"
TMDB_IMAGE_SIZES: tuple[str, ...] = ("w92", "w154", "w185", "w342", "w500", "w780", "original")
REDACTED = "REDACTED"

TMDB_INVALID_KEY: dict[str, Any] = {
    "status_code": 7,
    "status_message": "Invalid API key: You must be granted a valid key.",
    "success": False,
}
TMDB_NOT_FOUND: dict[str, Any] = {
    "status_code": 34,
    "status_message": "The resource you requested could not be found.",
    "success": False,
}

_JSON_TYPE = "application/json;charset=utf-8"
_HTML_TYPE = "text/html;charset=UTF-8"
_TITLE_RE = re.compile(r"^/title/tt(\d{1,10})(/keywords)?/?$")
_TMDB_IMAGE_RE = re.compile(r"^/t/p/([^/]+)/([^/]+)$")
_POSTER_RE = re.compile(r"^/posters/(\d+)\.jpg$")
_NOT_IMAGE_BODY = (
    b"<!DOCTYPE html><html><head><title>Robot Check</title></head><body>"
    b"<p>Sorry, we just need to make sure you're not a robot.</p></body></html>"
)


def _unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class FaultPlan:
    """Fractions of films whose image requests fail, per fault kind (disjoint subsets)."""

    http_500: float = 0.0
    http_429: float = 0.0
    slow: float = 0.0
    truncated: float = 0.0
    not_image: float = 0.0
    bomb: float = 0.0
    bad_redirect: float = 0.0
    seed: int = 0
    transient_failures: int = 1
    retry_after_s: int = 1
    slow_s: float = 3.0

    def __post_init__(self) -> None:
        """Check that the fractions are valid and sum to at most 1."""
        fractions = [getattr(self, kind) for kind in FAULT_KINDS]
        if any(f < 0 or f > 1 for f in fractions) or sum(fractions) > 1 + 1e-9:
            raise ValueError(f"fault fractions must be in [0, 1] and sum to <= 1: {fractions}")
        if self.transient_failures < 0:
            raise ValueError("transient_failures must be >= 0")

    def fault_for(self, movie_id: int) -> str | None:
        """The fault kind of a film's image requests, or None (deterministic from the seed)."""
        u = _unit_hash("fault", self.seed, movie_id)
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, kind)
            if u < edge:
                return kind
        return None

    @staticmethod
    def is_transient(kind: str | None) -> bool:
        """Whether a fault kind clears after transient_failures attempts."""
        return kind in TRANSIENT_FAULTS


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (the api_key query value is redacted)."""

    time: float
    method: str
    path: str
    query: dict[str, str]
    status: int
    user_agent: str


@dataclass
class _Response:
    """What a route answers: status, headers, body, and how to deliver it."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] | None = None
    truncate: bool = False
    delay_s: float = 0.0


def _sniff_image_type(data: bytes) -> str:
    """The image MIME type of encoded bytes, from their magic number."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def _json_response(status: int, payload: object) -> _Response:
    """A JSON response with TMDb's content type."""
    return _Response(status, json.dumps(payload).encode("utf-8"), _JSON_TYPE)


def _imdb_404() -> _Response:
    """IMDb's 404 page."""
    body = (
        '<!DOCTYPE html><html lang="en-US"><head><meta charset="utf-8"/>'
        '<title>404 Error - IMDb</title></head><body><div id="error"><h1>404 Error</h1>'
        "<p>The requested URL was not found on our server.</p></div></body></html>"
    )
    return _Response(404, body.encode("utf-8"), _HTML_TYPE)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with daemon threads, a back-reference and quiet error handling."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, web: PosterWeb) -> None:
        """Bind 127.0.0.1 on a free port."""
        self.web = web
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up; report anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the owning PosterWeb; HTTP/1.1 with keep-alive."""

    protocol_version = "HTTP/1.1"
    server_version = "SyntheticPosterWeb/1.0"
    sys_version = ""
    timeout = 60
    server: _Server

    def setup(self) -> None:
        """Track the connection so stop() can close it."""
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        """Untrack the connection."""
        try:
            super().finish()
        finally:
            with self.server.sockets_lock:
                self.server.open_sockets.discard(self.connection)

    def log_message(self, fmt: str, *args: Any) -> None:
        """Stay quiet."""

    def version_string(self) -> str:
        """The Server header."""
        return self.server_version

    def do_GET(self) -> None:
        """Serve a GET request."""
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        """Serve a HEAD request (headers only)."""
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        """Route, log and send one response; hang-ups by the client are ignored."""
        web = self.server.web
        arrived = time.monotonic()
        try:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            raw_query = dict(parse_qsl(parts.query, keep_blank_values=True))
            response = web._route(self.command, path, raw_query, self.headers)
            query = {k: (REDACTED if k == "api_key" else v) for k, v in raw_query.items()}
            web._record(
                RequestRecord(
                    time=arrived,
                    method=self.command,
                    path=path,
                    query=query,
                    status=response.status,
                    user_agent=self.headers.get("User-Agent", ""),
                )
            )
            delay = web.latency_s + response.delay_s
            if delay > 0:
                time.sleep(delay)
            self._send(response, send_body)
        except OSError:
            self.close_connection = True

    def _send(self, response: _Response, send_body: bool) -> None:
        """Write the status line, headers and (maybe truncated) body."""
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers or ():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if response.truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if send_body:
            body = response.body[: len(response.body) // 2] if response.truncate else response.body
            self.wfile.write(body)
        self.wfile.flush()


class PosterWeb:
    """A fake TMDb + IMDb + poster host on 127.0.0.1 with fault injection and a request log."""

    def __init__(
        self,
        films: Sequence[Film],
        image_bytes: Callable[[int], bytes],
        poster_path: Callable[[int], str] | None = None,
        api_key: str = "test-api-key",
        faults: FaultPlan | None = None,
        latency_s: float = 0.0,
        robots_disallow: Sequence[str] = (),
        noai_movie_ids: Collection[int] = (),
        crawl_delay_s: float | None = None,
    ) -> None:
        """Index the films; the server starts with start() or on entering the context."""
        self.films: list[Film] = list(films)
        self.image_bytes = image_bytes
        self.faults = faults
        self.latency_s = latency_s
        self.robots_disallow = tuple(robots_disallow)
        self.crawl_delay_s = crawl_delay_s
        self.noai_movie_ids = frozenset(noai_movie_ids)
        self._key_digest = hashlib.sha256(api_key.encode("utf-8")).digest()
        path_of = poster_path or (lambda movie_id: tmdb_style_path(f"web-poster:{movie_id}"))
        self._by_movie = {f.movie_id: f for f in self.films}
        self._by_tmdb = {f.tmdb_id: f for f in self.films}
        self._by_imdb = {f.imdb_number: f for f in self.films}
        self._poster_paths = {f.movie_id: "/" + path_of(f.movie_id).lstrip("/") for f in self.films}
        self._by_poster_file = {
            p.lstrip("/"): self._by_movie[m] for m, p in self._poster_paths.items()
        }
        self._imdb_names = {f.movie_id: self._imdb_image_name(f) for f in self.films}
        self._by_imdb_name = {name: self._by_movie[m] for m, name in self._imdb_names.items()}
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._fault_counts: dict[str, int] = {}
        self._fault_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_catalog(cls, catalog: SyntheticCatalog, **kw: Any) -> PosterWeb:
        """A PosterWeb serving a synthetic catalog's films, posters and poster paths."""
        return cls(catalog.films, catalog.poster_bytes, catalog.poster_path, **kw)

    # lifecycle
    def start(self) -> PosterWeb:
        """Start serving in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"PosterWeb-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open connections."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.sockets_lock:
            open_sockets = list(server.open_sockets)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> PosterWeb:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()

    # addresses
    @property
    def port(self) -> int:
        """The bound port (the server must be running)."""
        if self._server is None:
            raise RuntimeError("PosterWeb is not running; call start() or use it as a context")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """'127.0.0.1:PORT'."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """'http://127.0.0.1:PORT'."""
        return f"http://{self.host}"

    @property
    def tmdb_api_base(self) -> str:
        """Base of the fake TMDb API v3 ('{base_url}/3')."""
        return f"{self.base_url}/3"

    @property
    def tmdb_image_base(self) -> str:
        """Base of the fake TMDb image host at size w500 ('{base_url}/t/p/w500')."""
        return f"{self.base_url}/t/p/w500"

    @property
    def imdb_base(self) -> str:
        """Base of the fake IMDb site (the base URL)."""
        return self.base_url

    def poster_url(self, film: Film) -> str:
        """The direct poster URL used by URL-column catalogs."""
        return f"{self.base_url}/posters/{film.movie_id}.jpg"

    def tmdb_poster_path(self, film: Film) -> str:
        """The film's TMDb poster_path ('/xxxx.jpg')."""
        return self._poster_paths[film.movie_id]

    def tmdb_poster_url(self, film: Film, size: str = "w500") -> str:
        """The film's poster URL on the fake TMDb image host."""
        return f"{self.base_url}/t/p/{size}{self._poster_paths[film.movie_id]}"

    def imdb_title_url(self, film: Film) -> str:
        """The film's fake IMDb title page URL."""
        return f"{self.imdb_base}/title/{film.imdb_id}/"

    def imdb_image_url(self, film: Film, modifiers: str = "") -> str:
        """The film's poster URL on the fake IMDb media host (og:image of its title page)."""
        return f"{self.base_url}/images/M/{self._imdb_names[film.movie_id]}._V1_{modifiers}.jpg"

    @staticmethod
    def _imdb_image_name(film: Film) -> str:
        """An IMDb-media-style image id for a film ('MV5B...@')."""
        digest = hashlib.blake2b(
            f"imdb-image:{film.imdb_id}:{film.movie_id}".encode(), digest_size=30
        )
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        number = int.from_bytes(digest.digest(), "big")
        chars = []
        for _ in range(40):
            number, rem = divmod(number, len(alphabet))
            chars.append(alphabet[rem])
        return "MV5B" + "".join(chars) + "@"

    # faults
    def faulted_ids(self, kind: str) -> list[int]:
        """Movie ids whose image requests get this fault kind, in catalog order."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if self.faults is None:
            return []
        return [f.movie_id for f in self.films if self.faults.fault_for(f.movie_id) == kind]

    def fault_for(self, movie_id: int) -> str | None:
        """The fault kind of a film's image requests, or None."""
        return None if self.faults is None else self.faults.fault_for(movie_id)

    def reset_fault_counters(self) -> None:
        """Forget how often each URL path has been faulted (transient faults fire again)."""
        with self._fault_lock:
            self._fault_counts.clear()

    # request log
    @property
    def request_log(self) -> list[RequestRecord]:
        """A snapshot of all requests so far, in arrival order of their responses."""
        with self._log_lock:
            return list(self._log)

    def requests_for(self, path_prefix: str) -> list[RequestRecord]:
        """Logged requests whose path starts with path_prefix."""
        return [r for r in self.request_log if r.path.startswith(path_prefix)]

    def reset_log(self) -> None:
        """Clear the request log."""
        with self._log_lock:
            self._log.clear()

    def _record(self, record: RequestRecord) -> None:
        """Append one record to the log."""
        with self._log_lock:
            self._log.append(record)

    # routing
    def _route(self, method: str, path: str, query: dict[str, str], headers: Any) -> _Response:
        """The response for one request."""
        if path == "/robots.txt":
            return self._robots()
        if path.startswith("/3/"):
            return self._tmdb_api(path, query, headers)
        match = _TMDB_IMAGE_RE.match(path)
        if match:
            film = self._by_poster_file.get(match.group(2))
            if match.group(1) not in TMDB_IMAGE_SIZES or film is None:
                return _Response(404, b"Not Found", "text/plain")
            return self._image(path, film)
        if path.startswith("/images/M/"):
            name = path[len("/images/M/") :]
            film = self._by_imdb_name.get(name.split(".", 1)[0]) if name.endswith(".jpg") else None
            if film is None:
                return _Response(404, b"Not Found", "text/plain")
            return self._image(path, film)
        match = _POSTER_RE.match(path)
        if match:
            film = self._by_movie.get(int(match.group(1)))
            if film is None:
                return _Response(404, b"Not Found", "text/plain")
            return self._image(path, film)
        match = _TITLE_RE.match(path)
        if match:
            film = self._by_imdb.get(int(match.group(1)))
            if film is None:
                return _imdb_404()
            page = self._imdb_keywords_page(film) if match.group(2) else self._imdb_title_page(film)
            return _Response(200, page.encode("utf-8"), _HTML_TYPE)
        if path.startswith("/title/"):
            return _imdb_404()
        return _Response(404, b"Not Found", "text/plain")

    def _robots(self) -> _Response:
        """robots.txt: the configured Disallow lines, an optional Crawl-delay, then Allow: /."""
        lines = ["User-agent: *"]
        lines += [f"Disallow: {rule}" for rule in self.robots_disallow]
        if self.crawl_delay_s is not None:
            lines.append(f"Crawl-delay: {self.crawl_delay_s:g}")
        lines.append("Allow: /")
        return _Response(200, ("\n".join(lines) + "\n").encode("utf-8"), "text/plain")

    def _image(self, path: str, film: Film) -> _Response:
        """An image response for a film, with its fault (if any) applied."""
        kind = self.fault_for(film.movie_id)
        if kind is not None and FaultPlan.is_transient(kind):
            with self._fault_lock:
                seen = self._fault_counts.get(path, 0)
                self._fault_counts[path] = seen + 1
            assert self.faults is not None
            if seen < self.faults.transient_failures:
                if kind == "http_500":
                    return _Response(500, b"Internal Server Error", "text/plain")
                if kind == "http_429":
                    retry = [("Retry-After", str(self.faults.retry_after_s))]
                    return _Response(429, b"Too Many Requests", "text/plain", retry)
                response = self._image_ok(film)
                response.delay_s = self.faults.slow_s
                return response
            return self._image_ok(film)
        if kind == "truncated":
            response = self._image_ok(film)
            response.truncate = True
            return response
        if kind == "not_image":
            return _Response(200, _NOT_IMAGE_BODY, "image/jpeg")
        if kind == "bomb":
            return _Response(200, _bomb_bytes(), "image/png")
        if kind == "bad_redirect":
            return _Response(302, b"", "text/html", [("Location", FORBIDDEN_REDIRECT)])
        return self._image_ok(film)

    def _image_ok(self, film: Film) -> _Response:
        """The film's real image bytes."""
        data = self.image_bytes(film.movie_id)
        headers = [("Cache-Control", "max-age=31536000")]
        if film.movie_id in self.noai_movie_ids:
            headers.append(("X-Robots-Tag", "noai, noimageai"))
        return _Response(200, data, _sniff_image_type(data), headers)

    def _key_ok(self, query: dict[str, str], headers: Any) -> bool:
        """Whether the request carries the right api_key (query) or Bearer token."""
        candidate = query.get("api_key")
        if candidate is None:
            auth = headers.get("Authorization", "") if headers is not None else ""
            if auth.startswith("Bearer "):
                candidate = auth[len("Bearer ") :]
        if candidate is None:
            return False
        digest = hashlib.sha256(candidate.encode("utf-8")).digest()
        return hmac.compare_digest(digest, self._key_digest)

    def _tmdb_api(self, path: str, query: dict[str, str], headers: Any) -> _Response:
        """TMDb API v3: /3/movie/{id}, /3/find/{external_id}, /3/configuration."""
        if not self._key_ok(query, headers):
            return _json_response(401, TMDB_INVALID_KEY)
        parts = path.rstrip("/").split("/")
        if len(parts) == 4 and parts[2] == "movie" and parts[3].isdigit():
            film = self._by_tmdb.get(int(parts[3]))
            if film is None:
                return _json_response(404, TMDB_NOT_FOUND)
            appended = {a.strip() for a in query.get("append_to_response", "").split(",")}
            return _json_response(200, self.tmdb_movie_json(film, images="images" in appended))
        if len(parts) == 4 and parts[2] == "find":
            match = re.fullmatch(r"tt(\d+)", parts[3])
            film = self._by_imdb.get(int(match.group(1))) if match else None
            results = [] if film is None else [self._tmdb_find_result(film)]
            payload = {
                "movie_results": results,
                "person_results": [],
                "tv_results": [],
                "tv_episode_results": [],
                "tv_season_results": [],
            }
            return _json_response(200, payload)
        if path.rstrip("/") == "/3/configuration":
            return _json_response(200, self._tmdb_configuration())
        return _json_response(404, TMDB_NOT_FOUND)

    def tmdb_movie_json(self, film: Film, images: bool = False) -> dict[str, Any]:
        """The TMDb API v3 /movie/{id} body for a film (shaped like the real one)."""
        meta = film_metadata(film)
        body: dict[str, Any] = {
            "adult": False,
            "backdrop_path": tmdb_style_path(f"web-backdrop:{film.movie_id}"),
            "belongs_to_collection": None,
            "budget": meta.budget,
            "genres": tmdb_genres(film),
            "homepage": "",
            "id": film.tmdb_id,
            "imdb_id": film.imdb_id,
            "original_language": "en",
            "original_title": film.title,
            "overview": film_overview(film),
            "popularity": meta.popularity,
            "poster_path": self._poster_paths[film.movie_id],
            "production_companies": [
                {"id": 420, "logo_path": None, "name": meta.company, "origin_country": "US"}
            ],
            "production_countries": [{"iso_3166_1": "US", "name": "United States of America"}],
            "release_date": meta.release_date,
            "revenue": meta.revenue,
            "runtime": meta.runtime,
            "spoken_languages": [{"english_name": "English", "iso_639_1": "en", "name": "English"}],
            "status": "Released",
            "tagline": meta.tagline,
            "title": film.title,
            "video": False,
            "vote_average": meta.vote_average,
            "vote_count": meta.vote_count,
        }
        if images:
            poster = {
                "aspect_ratio": 0.667,
                "height": 3000,
                "iso_639_1": "en",
                "file_path": self._poster_paths[film.movie_id],
                "vote_average": 5.312,
                "vote_count": 4,
                "width": 2000,
            }
            body["images"] = {"backdrops": [], "logos": [], "posters": [poster]}
        return body

    def _tmdb_find_result(self, film: Film) -> dict[str, Any]:
        """One entry of /3/find movie_results."""
        full = self.tmdb_movie_json(film)
        keys = ("adult", "backdrop_path", "id", "original_title", "release_date", "poster_path")
        short = {k: full[k] for k in keys}
        short.update(
            title=film.title,
            popularity=full["popularity"],
            vote_average=full["vote_average"],
            vote_count=full["vote_count"],
            genre_ids=[g["id"] for g in full["genres"]],
        )
        return short

    def _tmdb_configuration(self) -> dict[str, Any]:
        """/3/configuration: where images live and in which sizes."""
        return {
            "images": {
                "base_url": f"{self.base_url}/t/p/",
                "secure_base_url": f"{self.base_url}/t/p/",
                "backdrop_sizes": ["w300", "w780", "w1280", "original"],
                "logo_sizes": ["w45", "w92", "w154", "w185", "w300", "w500", "original"],
                "poster_sizes": list(TMDB_IMAGE_SIZES),
                "profile_sizes": ["w45", "w185", "h632", "original"],
                "still_sizes": ["w92", "w185", "w300", "original"],
            },
            "change_keys": [],
        }

    def _imdb_title_page(self, film: Film) -> str:
        """An IMDb title page: og:image and a schema.org Movie ld+json pointing at the poster."""
        meta = film_metadata(film)
        image = self.imdb_image_url(film)
        thumb = self.imdb_image_url(film, "QL75_UX190_CR0,2,190,281_")
        thumb2 = self.imdb_image_url(film, "QL75_UX285_CR0,3,285,422_")
        full_title = f"{film.title} ({film.year})"
        description = film_overview(film).replace("\n", " ")
        ld = {
            "@context": "https://schema.org",
            "@type": "Movie",
            "url": f"/title/{film.imdb_id}/",
            "name": film.title,
            "image": image,
            "description": description,
            "aggregateRating": {
                "@type": "AggregateRating",
                "ratingCount": meta.vote_count,
                "bestRating": 10,
                "worstRating": 1,
                "ratingValue": meta.imdb_score,
            },
            "genre": list(film.genres),
            "datePublished": meta.release_date,
            "duration": f"PT{meta.runtime // 60}H{meta.runtime % 60}M",
        }
        ld_text = json.dumps(ld, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
        e = html.escape
        return (
            '<!DOCTYPE html><html lang="en-US" xmlns:og="http://opengraphprotocol.org/schema/" '
            'xmlns:fb="http://www.facebook.com/2008/fbml"><head><meta charSet="utf-8"/>'
            '<meta name="viewport" content="width=device-width"/>'
            "<script>if(typeof uet === 'function'){ uet('bb', 'LoadTitle', {wb: 1}); }</script>"
            f"<title>{e(full_title)} - IMDb</title>"
            f'<meta name="title" content="{e(full_title)} - IMDb"/>'
            f'<meta name="description" content="{e(description)}"/>'
            f'<meta property="og:url" content="{self.imdb_base}/title/{film.imdb_id}/"/>'
            '<meta property="og:site_name" content="IMDb"/>'
            f'<meta property="og:title" content="{e(full_title)} - IMDb"/>'
            f'<meta property="og:description" content="{e(description)}"/>'
            '<meta property="og:type" content="video.movie"/>'
            f'<meta property="og:image" content="{e(image)}"/>'
            '<meta property="og:image:height" content="1481"/>'
            '<meta property="og:image:width" content="1000"/>'
            '<meta property="og:locale" content="en_US"/>'
            '<meta name="twitter:card" content="summary_large_image"/>'
            f'<meta name="twitter:image" content="{e(image)}"/>'
            f'<script type="application/ld+json">{ld_text}</script>'
            f'<link rel="canonical" href="{self.imdb_base}/title/{film.imdb_id}/"/>'
            '<meta property="imdb:pageType" content="title"/>'
            '<meta property="imdb:subPageType" content="main"/>'
            f'<meta property="imdb:pageConst" content="{film.imdb_id}"/>'
            '</head><body id="styleguide-v2" class="fixed"><div id="__next"><main role="main">'
            '<section class="ipc-page-background" data-testid="hero-parent">'
            f'<h1 textLength="{len(film.title)}" data-testid="hero-title-block__title" '
            f'class="TitleHeader__TitleText-sc-1wu6n3d-0">{e(film.title)}</h1>'
            '<ul class="ipc-inline-list ipc-inline-list--show-dividers">'
            f'<li class="ipc-inline-list__item">{film.year}</li>'
            f'<li class="ipc-inline-list__item">{meta.runtime}min</li></ul>'
            '<div class="ipc-poster ipc-poster--baseAlt ipc-poster--dynamic-width" role="group" '
            'data-testid="hero-media__poster"><div class="ipc-media ipc-media--poster-27x40 '
            'ipc-poster__poster-image ipc-media__img" style="width:100%">'
            f'<img alt="{e(full_title)}" class="ipc-image" loading="lazy" src="{e(thumb)}" '
            f'srcSet="{e(thumb)} 190w, {e(thumb2)} 285w" '
            'sizes="50vw, (min-width: 480px) 34vw" width="190"/></div>'
            f'<a class="ipc-lockup-overlay ipc-focusable" href="/title/{film.imdb_id}/mediaviewer/'
            f'rm{film.imdb_number % 10_000_000:07d}/?ref_=tt_ov_i" '
            f'aria-label="View ’{e(film.title)}’ Poster"></a></div>'
            '<div data-testid="genres"><div class="ipc-chip-list">'
            + "".join(
                f'<a class="ipc-chip ipc-chip--on-baseAlt" href="/search/title?genres={e(g)}">'
                f'<span class="ipc-chip__text">{e(g)}</span></a>'
                for g in film.genres
            )
            + "</div></div>"
            f'<p data-testid="plot"><span data-testid="plot-xl">{e(description)}</span></p>'
            "</section></main></div></body></html>"
        )

    def _imdb_keywords_page(self, film: Film) -> str:
        """An IMDb 'Plot keywords' subpage: no og:image poster, no Movie ld+json."""
        meta = film_metadata(film)
        full_title = f"{film.title} ({film.year})"
        e = html.escape
        rows = "".join(
            f'<tr><td class="soda sodavote" data-item-keyword="{e(k)}">'
            f'<div class="sodatext"><a href="/search/keyword?keywords={e(k.replace(" ", "-"))}">'
            f"{e(k)}</a></div></td></tr>"
            for k in meta.keywords
        )
        return (
            '<!DOCTYPE html>\n<html xmlns:og="http://ogp.me/ns#" xmlns:fb="http://www.facebook.com/2008/fbml">'
            '<head><meta charset="utf-8"><meta http-equiv="X-UA-Compatible" content="IE=edge">'
            f'<meta property="og:url" content="{self.imdb_base}/title/{film.imdb_id}/keywords" />'
            f'<meta property="pageId" content="{film.imdb_id}" />'
            '<meta property="pageType" content="title" />'
            '<meta property="subpageType" content="keywords" />'
            '<meta property="og:type" content="video.movie" />'
            f'<meta property="og:title" content="{e(full_title)} - IMDb" />'
            "<meta property='og:site_name' content='IMDb' />"
            f'<meta name="description" content="{e(full_title)} on IMDb: Movies, TV, Celebs, '
            'and more..." />'
            f"<title>{e(full_title)} - Plot keywords - IMDb</title>"
            f'<link rel="canonical" href="{self.imdb_base}/title/{film.imdb_id}/keywords" />'
            '</head><body id="styleguide-v2" class="fixed"><div id="main">'
            '<div class="subpage_title_block"><h3 itemprop="name">'
            f'<a href="/title/{film.imdb_id}/">'
            f'{e(film.title)}</a> <span class="nobr">({film.year})</span></h3>'
            "<h1>Plot Keywords</h1></div>"
            '<div id="keywords_content"><table class="dataTable evenWidthTable2Col">'
            f"{rows}</table></div>"
            "</div></body></html>"
        )


@functools.lru_cache(maxsize=1)
def _bomb_bytes() -> bytes:
    """The decompression-bomb PNG served by the 'bomb' fault, built once."""
    return decompression_bomb_png()
