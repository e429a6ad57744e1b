"""A polite HTTP client for scraping: rate limits, retries, robots.txt, allowlist, size caps.

One :class:`PoliteFetcher` is created per worker (in ``DoFn.setup``) and shared by the worker's
fetch threads. Every failure is raised as :class:`FetchError` with a machine-readable reason, the
last HTTP status and the number of attempts, with secrets removed from its URL and message.
Network failures are named for what happened (``dns_failure``, ``connection_refused``,
``timeout``, ``connection_error``) and a host whose robots.txt cannot be read is
``robots_unreachable``, never ``robots_disallowed``: an outage must not look like a rule.
"""

from __future__ import annotations

import dataclasses
import email.utils
import fnmatch
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
import urllib.robotparser
from collections.abc import Callable
from collections.abc import Mapping

import requests
import requests.adapters
import urllib3.exceptions

from fetching.resolve import redact_secrets

DEFAULT_USER_AGENT = (
    "poster-recs-scraper/0.1 (poster similarity research crawler; "
    "+https://github.com/poster-recs/poster-recs)"
)
DEFAULT_ALLOWED_HOSTS = (
    "api.themoviedb.org",
    "image.tmdb.org",
    "www.imdb.com",
    "m.media-amazon.com",
    "ia.media-imdb.com",
    "images-na.ssl-images-amazon.com",
)
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
NOAI_TOKENS = frozenset({"noai", "noimageai"})
NETWORK_REASONS = ("dns_failure", "connection_refused", "timeout", "connection_error")

_LOG = logging.getLogger(__name__)


class FetchError(Exception):
    """A URL that could not be fetched, with a reason code fit for a dead-letter table."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        url: str = "",
        http_status: int | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.url = url
        self.http_status = http_status
        self.attempts = attempts


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """How politely and how persistently to fetch."""

    user_agent: str = DEFAULT_USER_AGENT
    requests_per_second_per_host: float = 2.0
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    respect_robots_txt: bool = True
    pool_size: int = 16
    secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.requests_per_second_per_host <= 0:
            raise ValueError("requests_per_second_per_host must be > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be > 0")
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: name at least one host to fetch from")


@dataclasses.dataclass(frozen=True)
class RobotsUnreachable:
    """Why an origin's robots.txt could not be read (RFC 9309: then nothing there is fetched)."""

    detail: str


@dataclasses.dataclass(frozen=True)
class FetchResponse:
    """A successful response: final URL (secrets removed), status, headers and body."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    attempts: int


def host_allowed(netloc: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether ``host[:port]`` matches an allowlist entry: host, host:port or *.domain."""
    netloc = netloc.lower()
    hostname = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    for pattern in allowed_hosts:
        pattern = pattern.lower().strip()
        if fnmatch.fnmatchcase(netloc, pattern) or fnmatch.fnmatchcase(hostname, pattern):
            return True
    return False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def crawl_delay(robots_lines: list[str], user_agent: str) -> float | None:
    """The Crawl-delay (fractional seconds allowed) of the group that applies to ``user_agent``."""
    token = user_agent.split("/", 1)[0].strip().lower()
    delays: dict[str, float] = {}
    agents: list[str] = []
    in_rules = False
    for raw in robots_lines:
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        field, value = (part.strip() for part in line.split(":", 1))
        field = field.lower()
        if field == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
            continue
        in_rules = True
        if field == "crawl-delay":
            try:
                seconds = float(value)
            except ValueError:
                continue
            for agent in agents:
                delays[agent] = seconds
    for agent, seconds in delays.items():
        if agent != "*" and agent in token:
            return seconds
    return delays.get("*")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (causes, contexts, urllib3 reasons, exception args)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        inner = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        inner += list(current.args)
        todo += [e for e in inner if isinstance(e, BaseException)]
    return seen


def classify_network_error(exc: BaseException, netloc: str) -> tuple[str, str]:
    """The reason (one of NETWORK_REASONS) and a one-line detail of a failed connection or read."""
    causes = _causes(exc)
    innermost = next((e for e in reversed(causes) if str(e)), exc)
    cause = " ".join(str(innermost).split())
    dns_errors = (socket.gaierror, urllib3.exceptions.NameResolutionError)
    timeouts = (requests.Timeout, TimeoutError, urllib3.exceptions.ReadTimeoutError)
    if any(isinstance(e, dns_errors) for e in causes):
        return "dns_failure", f"cannot resolve the host name of {netloc} ({cause})"
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return "connection_refused", f"{netloc} refused the connection ({cause})"
    if isinstance(exc, requests.ConnectTimeout):
        return "timeout", f"no connection to {netloc} within the connect timeout ({cause})"
    if any(isinstance(e, timeouts) for e in causes):
        return "timeout", f"no answer from {netloc} within the read timeout ({cause})"
    return "connection_error", f"the connection to {netloc} failed ({cause})"


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


class _RedactingFilter(logging.Filter):
    """Removes registered secrets from log records of the HTTP libraries (urllib3 logs URLs)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets or "api_key" in str(record.msg):
            message = record.getMessage()
            record.msg = redact_secrets(message, self.secrets)
            record.args = ()
        return True


_REDACTOR = _RedactingFilter()
for _name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
    logging.getLogger(_name).addFilter(_REDACTOR)


class HostRateLimiter:
    """Spaces requests to each host at least ``1 / rate`` seconds apart, across threads."""

    def __init__(
        self,
        requests_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / requests_per_second
        self._clock = clock
        self._sleep = sleep
        self._next: dict[str, float] = {}
        self._min_interval: dict[str, float] = {}
        self._lock = threading.Lock()

    def slow_down(self, host: str, interval_s: float) -> None:
        """Raise the spacing for one host (e.g. to a robots.txt Crawl-delay)."""
        with self._lock:
            self._min_interval[host] = max(self._min_interval.get(host, 0.0), interval_s)

    def wait(self, host: str) -> None:
        """Block until the caller may send its next request to ``host``.

        A request claims its slot at the moment it is released (not when it starts waiting),
        so threads that wake up late cannot bunch their requests together.
        """
        while True:
            with self._lock:
                now = self._clock()
                ready = self._next.get(host, now)
                if now >= ready:
                    interval = max(self._interval, self._min_interval.get(host, 0.0))
                    self._next[host] = now + interval
                    return
            self._sleep(ready - now)


@dataclasses.dataclass
class _Attempts:
    """Where one GET stands: the URL asked for now (and its query), the attempts and redirects
    so far, and the last attempt's status and why it failed."""

    current: str
    params: Mapping[str, str] | None
    attempts: int = 0
    redirects: int = 0
    last_status: int | None = None
    last_reason: str = ""
    last_detail: str = ""

    def failed(self, reason: str, detail: str) -> None:
        """Record why the last attempt failed."""
        self.last_reason, self.last_detail = reason, detail


class PoliteFetcher:
    """Fetches URLs politely; safe to share between threads of one worker."""

    def __init__(self, policy: FetchPolicy, session: requests.Session | None = None) -> None:
        self.policy = policy
        self._session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=policy.pool_size, pool_maxsize=policy.pool_size, max_retries=0
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = policy.user_agent
        # No credentials are ever sent; setting an explicit no-op auth also stops requests from
        # re-reading ~/.netrc on every request (measurable at hundreds of requests/s).
        self._session.auth = _no_auth
        # requests also reads proxy and CA-bundle settings from the environment on every request.
        # Without a proxy configured, the bundle it would find is taken once here and the
        # environment left alone after that; with one, requests keeps its per-URL no_proxy rules.
        if session is None and not urllib.request.getproxies():
            self._session.trust_env = False
            self._session.verify = (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            )
        self._limiter = HostRateLimiter(policy.requests_per_second_per_host)
        self._robots: dict[str, urllib.robotparser.RobotFileParser | RobotsUnreachable] = {}
        self._robots_locks: dict[str, threading.Lock] = {}
        self._robots_guard = threading.Lock()
        self._rng = random.Random()
        _REDACTOR.secrets.update(s for s in policy.secrets if s)

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()

    def redact(self, text: str) -> str:
        """Text with every configured secret and api_key value removed."""
        return redact_secrets(text, self.policy.secrets)

    # ------------------------------------------------------------------ public API
    def get(self, url: str, params: Mapping[str, str] | None = None) -> FetchResponse:
        """GET ``url`` (plus query ``params``, which may hold secrets) or raise FetchError."""
        shown = self.redact(url)
        self._check_target(url, shown, redirected=False)
        state = _Attempts(current=url, params=params)
        while state.attempts < self.policy.max_attempts:
            state.attempts += 1
            response = self._attempt(state, shown)
            if response is not None:
                return response
        raise FetchError(
            state.last_reason or "gave_up",
            f"gave up after {state.attempts} attempts: {state.last_detail}",
            url=shown,
            http_status=state.last_status,
            attempts=state.attempts,
        )

    def _attempt(self, state: _Attempts, shown: str) -> FetchResponse | None:
        """One request of a GET: the response, or None to try again (``state`` says why);
        FetchError when trying again cannot help."""
        netloc = urllib.parse.urlsplit(state.current).netloc.lower()
        self._limiter.wait(netloc)
        try:
            response = self._session.get(
                state.current,
                params=state.params,
                stream=True,
                allow_redirects=False,
                timeout=(self.policy.connect_timeout_s, self.policy.read_timeout_s),
            )
        except requests.RequestException as exc:
            reason, detail = classify_network_error(exc, netloc)
            state.failed(reason, self.redact(detail))
            self._backoff(state.attempts, None)
            return None
        with response:
            state.last_status = response.status_code
            if response.is_redirect or response.status_code in (301, 302, 303, 307, 308):
                self._follow_redirect(response, state, shown)
                return None
            if response.status_code in RETRYABLE_STATUS:
                self._wait_to_retry(response, state, shown)
                return None
            return self._accept(response, state, shown)

    def _follow_redirect(self, response: requests.Response, state: _Attempts, shown: str) -> None:
        """Point ``state`` at the redirect's target, once it passes the checks of a first URL."""
        target = urllib.parse.urljoin(state.current, response.headers.get("Location", ""))
        state.redirects += 1
        if state.redirects > self.policy.max_redirects:
            raise FetchError(
                "too_many_redirects",
                f"more than {self.policy.max_redirects} redirects",
                url=shown,
                http_status=state.last_status,
                attempts=state.attempts,
            )
        self._check_target(target, self.redact(target), redirected=True)
        state.current = target
        state.params = None if urllib.parse.urlsplit(target).query else state.params
        state.attempts -= 1  # a redirect is not a failed attempt

    def _wait_to_retry(self, response: requests.Response, state: _Attempts, shown: str) -> None:
        """Back off after a retryable status, as long as the server asks (within the limit)."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        state.failed(f"http_{response.status_code}", f"HTTP {response.status_code} from {shown}")
        if retry_after is not None and retry_after > self.policy.max_retry_after_s:
            raise FetchError(
                "retry_after_too_long",
                f"server asked to wait {retry_after:.0f}s "
                f"(limit {self.policy.max_retry_after_s:.0f}s)",
                url=shown,
                http_status=state.last_status,
                attempts=state.attempts,
            )
        self._backoff(state.attempts, retry_after)

    def _accept(
        self, response: requests.Response, state: _Attempts, shown: str
    ) -> FetchResponse | None:
        """The response of a final status: FetchError for an error status or a robots header
        that forbids it, None (after a back-off) for a truncated body, else the response."""
        if response.status_code >= 400:
            raise FetchError(
                f"http_{response.status_code}",
                f"HTTP {response.status_code} from {shown}",
                url=shown,
                http_status=state.last_status,
                attempts=state.attempts,
            )
        self._check_x_robots(response.headers, shown, state.attempts)
        try:
            body = self._read_body(response, shown, state.attempts)
        except _TruncatedBody as exc:
            state.failed(exc.reason, str(exc))
            self._backoff(state.attempts, None)
            return None
        return FetchResponse(
            url=self.redact(response.url or state.current),
            status=response.status_code,
            headers=dict(response.headers),
            body=body,
            attempts=state.attempts,
        )

    # ------------------------------------------------------------------ checks
    def _check_target(self, url: str, shown: str, *, redirected: bool) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(
                "redirect_bad_scheme" if redirected else "bad_scheme",
                f"only http and https URLs are fetched, not {parts.scheme or 'no'} scheme: {shown}",
                url=shown,
            )
        if not parts.netloc or not host_allowed(parts.netloc, self.policy.allowed_hosts):
            raise FetchError(
                "redirect_host_not_allowed" if redirected else "host_not_allowed",
                f"host {parts.netloc!r} is not in the allowlist; add it with --allowed_hosts "
                f"if it should be fetched: {shown}",
                url=shown,
            )
        if not self.policy.respect_robots_txt:
            return
        robots = self._robots_for(url)
        if isinstance(robots, RobotsUnreachable):
            raise FetchError(
                "robots_unreachable",
                f"robots.txt of {parts.netloc} could not be read, which RFC 9309 treats as "
                f"disallowing the whole host: {robots.detail}",
                url=shown,
            )
        if not robots.can_fetch(self.policy.user_agent, url):
            raise FetchError(
                "robots_disallowed",
                f"robots.txt of {parts.netloc} disallows {parts.path} for our user agent",
                url=shown,
            )

    def _check_x_robots(self, headers: Mapping[str, str], shown: str, attempts: int) -> None:
        tag = headers.get("X-Robots-Tag", "")
        tokens = {t.strip().lower() for part in tag.split(",") for t in part.split(":")}
        if tokens & NOAI_TOKENS:
            raise FetchError(
                "x_robots_tag_noai",
                f"X-Robots-Tag '{tag}' forbids use for AI/image models",
                url=shown,
                http_status=200,
                attempts=attempts,
            )

    def _read_body(self, response: requests.Response, shown: str, attempts: int) -> bytes:
        limit = self.policy.max_body_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise FetchError(
                "body_too_large",
                f"Content-Length {declared} exceeds the {limit}-byte limit",
                url=shown,
                http_status=response.status_code,
                attempts=attempts,
            )
        chunks = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise FetchError(
                        "body_too_large",
                        f"body exceeds the {limit}-byte limit",
                        url=shown,
                        http_status=response.status_code,
                        attempts=attempts,
                    )
                chunks.append(chunk)
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as exc:
            netloc = urllib.parse.urlsplit(shown).netloc
            reason, detail = classify_network_error(exc, netloc)
            if reason == "timeout":
                raise _TruncatedBody(f"{detail} while reading {shown}", reason) from exc
            raise _TruncatedBody(f"connection broke while reading {shown}: {exc}") from exc
        body = b"".join(chunks)
        if declared and declared.isdigit() and int(declared) != len(body):
            raise _TruncatedBody(f"got {len(body)} of {declared} bytes from {shown}")
        return body

    def _backoff(self, attempt: int, retry_after: float | None) -> None:
        if attempt >= self.policy.max_attempts:
            return
        exp = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2 ** (attempt - 1))
        delay = exp / 2 + self._rng.uniform(0, exp / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        time.sleep(delay)

    # ------------------------------------------------------------------ robots.txt
    def _robots_for(self, url: str) -> urllib.robotparser.RobotFileParser | RobotsUnreachable:
        """The parsed robots.txt of the URL's origin (fetched once per origin), or why not."""
        parts = urllib.parse.urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc.lower()}"
        with self._robots_guard:
            lock = self._robots_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._robots:
                self._robots[key] = self._load_robots(key)
            return self._robots[key]

    def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | RobotsUnreachable:
        """Parse an origin's robots.txt; RobotsUnreachable (disallow all) when it cannot be read."""
        parser = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        netloc = urllib.parse.urlsplit(origin).netloc
        reason, detail = "", ""
        for attempt in range(1, self.policy.max_attempts + 1):
            self._limiter.wait(netloc)
            try:
                response = self._session.get(
                    origin + "/robots.txt",
                    timeout=(self.policy.connect_timeout_s, self.policy.read_timeout_s),
                )
            except requests.RequestException as exc:
                reason, detail = classify_network_error(exc, netloc)
                detail = self.redact(detail)
                self._backoff(attempt, None)
                continue
            if response.status_code >= 500 or response.status_code == 429:
                reason = f"http_{response.status_code}"
                detail = f"HTTP {response.status_code} from {origin}/robots.txt"
                self._backoff(attempt, parse_retry_after(response.headers.get("Retry-After")))
                continue
            if response.status_code >= 400:
                parser.parse([])  # RFC 9309: an unavailable (4xx) robots.txt allows everything
                return parser
            lines = response.text.splitlines()
            parser.parse(lines)
            delay = crawl_delay(lines, self.policy.user_agent)
            if delay:
                self._limiter.slow_down(netloc, float(delay))
            return parser
        attempts = self.policy.max_attempts
        plural = "s" if attempts != 1 else ""
        unreachable = RobotsUnreachable(f"{reason} after {attempts} attempt{plural}: {detail}")
        _LOG.warning(
            "robots.txt of %s unreachable (%s); nothing on the host is fetched",
            origin,
            unreachable.detail,
        )
        return unreachable


class _TruncatedBody(Exception):
    """The connection ended or stalled before the declared body was read (retryable)."""

    def __init__(self, message: str, reason: str = "truncated_body") -> None:
        super().__init__(message)
        self.reason = reason
