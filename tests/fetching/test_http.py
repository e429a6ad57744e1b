"""The polite fetcher against the synthetic web on 127.0.0.1: every fault, limit and rule."""

from __future__ import annotations

import concurrent.futures
import dataclasses

import pytest

from fetching.http import FetchError
from fetching.http import FetchPolicy
from fetching.http import PoliteFetcher
from fetching.http import host_allowed
from fetching.http import parse_retry_after
from synthetic.catalog import make_catalog
from synthetic.web import FaultPlan
from synthetic.web import PosterWeb
from tests.faulty_host import closed_port

CATALOG = make_catalog(120, seed=3)
KEY = "s3cret-key-value"


def test_policy(*hosts: str, **overrides) -> FetchPolicy:
    """A fast policy for tests: these hosts allowed, short back-off, overrides applied."""
    settings = dict(
        requests_per_second_per_host=1000.0,
        backoff_base_s=0.01,
        read_timeout_s=1.5,
        connect_timeout_s=2.0,
        max_attempts=3,
        allowed_hosts=hosts,
        user_agent="poster-recs-tests/1.0 (+test)",
    )
    settings.update(overrides)
    return FetchPolicy(**settings)


test_policy.__test__ = False  # a helper, not a test


def policy_for(web: PosterWeb, **overrides) -> FetchPolicy:
    return test_policy(web.host, **{"secrets": (KEY,), **overrides})


def film_with(web: PosterWeb, kind: str):
    ids = web.faulted_ids(kind)
    assert ids, f"the fault plan assigned no film to {kind}"
    return CATALOG.film(ids[0])


ALL_FAULTS = FaultPlan(
    http_500=0.1, http_429=0.1, slow=0.1, truncated=0.1, not_image=0.1, bomb=0.1,
    bad_redirect=0.1, seed=1, transient_failures=1, retry_after_s=1, slow_s=3.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def web():
    with PosterWeb.from_catalog(
        CATALOG, api_key=KEY, faults=ALL_FAULTS, robots_disallow=["/private/"],
        noai_movie_ids=[CATALOG.films[-1].movie_id],
    ) as server:  # fmt: skip
        yield server


@pytest.fixture()
def fresh(web):
    web.reset_log()
    web.reset_fault_counters()
    return web


def test_happy_path_returns_the_catalog_bytes_and_sends_the_user_agent(fresh):
    film = next(f for f in CATALOG.films if fresh.fault_for(f.movie_id) is None)
    fetcher = PoliteFetcher(policy_for(fresh))
    response = fetcher.get(fresh.poster_url(film))
    assert response.body == CATALOG.poster_bytes(film.movie_id)
    assert response.attempts == 1
    agents = {r.user_agent for r in fresh.request_log}
    assert agents == {"poster-recs-tests/1.0 (+test)"}
    assert [r.path for r in fresh.request_log] == ["/robots.txt", f"/posters/{film.movie_id}.jpg"]


def test_a_proxy_set_in_the_environment_is_still_used(fresh, monkeypatch):
    """Without a proxy the environment is read once; with one, requests go through it."""
    film = next(f for f in CATALOG.films if fresh.fault_for(f.movie_id) is None)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    fetcher = PoliteFetcher(policy_for(fresh, max_attempts=1, respect_robots_txt=False))
    with pytest.raises(FetchError) as caught:
        fetcher.get(fresh.poster_url(film))
    assert caught.value.reason == "connection_refused"
    assert fresh.request_log == []


@pytest.mark.parametrize("kind", ["http_500", "http_429", "slow"])
def test_transient_faults_are_retried_to_success(fresh, kind):
    film = film_with(fresh, kind)
    response = PoliteFetcher(policy_for(fresh)).get(fresh.poster_url(film))
    assert response.body == CATALOG.poster_bytes(film.movie_id)
    assert response.attempts == 2


def test_retry_after_is_honoured(fresh):
    film = film_with(fresh, "http_429")
    PoliteFetcher(policy_for(fresh)).get(fresh.poster_url(film))
    times = [r.time for r in fresh.requests_for(f"/posters/{film.movie_id}.jpg")]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.95, "the retry came before Retry-After: 1 elapsed"


def test_retry_after_beyond_the_limit_gives_up_at_once(fresh):
    film = film_with(fresh, "http_429")
    fetcher = PoliteFetcher(policy_for(fresh, max_retry_after_s=0.5))
    with pytest.raises(FetchError) as info:
        fetcher.get(fresh.poster_url(film))
    assert info.value.reason == "retry_after_too_long"
    assert info.value.attempts == 1


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("http_500", "http_500"), ("http_429", "http_429"), ("slow", "timeout")],
)
def test_persistent_faults_exhaust_the_attempts(kind, reason):
    faults = dataclasses.replace(ALL_FAULTS, transient_failures=100, retry_after_s=0)
    with PosterWeb.from_catalog(CATALOG, api_key=KEY, faults=faults) as server:
        film = film_with(server, kind)
        with pytest.raises(FetchError) as info:
            PoliteFetcher(policy_for(server)).get(server.poster_url(film))
        assert info.value.reason == reason
        assert info.value.attempts == 3
        assert len(server.requests_for(f"/posters/{film.movie_id}.jpg")) == 3


def test_truncated_body_is_retried_then_reported(fresh):
    film = film_with(fresh, "truncated")
    with pytest.raises(FetchError) as info:
        PoliteFetcher(policy_for(fresh)).get(fresh.poster_url(film))
    assert info.value.reason == "truncated_body"
    assert info.value.attempts == 3


def test_redirect_to_a_host_not_allowed_is_not_followed(fresh):
    film = film_with(fresh, "bad_redirect")
    with pytest.raises(FetchError) as info:
        PoliteFetcher(policy_for(fresh)).get(fresh.poster_url(film))
    assert info.value.reason == "redirect_host_not_allowed"
    assert "forbidden.invalid" in info.value.detail


def test_robots_txt_disallow_is_respected_and_cached(fresh):
    fetcher = PoliteFetcher(policy_for(fresh))
    for _ in range(3):
        with pytest.raises(FetchError) as info:
            fetcher.get(fresh.base_url + "/private/poster.jpg")
        assert info.value.reason == "robots_disallowed"
    paths = [r.path for r in fresh.request_log]
    assert paths == ["/robots.txt"], "robots.txt is fetched once and the page never"


def test_crawl_delay_slows_the_host_down():
    with PosterWeb.from_catalog(CATALOG, api_key=KEY, crawl_delay_s=0.3) as server:
        fetcher = PoliteFetcher(policy_for(server))
        films = [f for f in CATALOG.films if server.fault_for(f.movie_id) is None][:3]
        for film in films:
            fetcher.get(server.poster_url(film))
        times = [r.time for r in server.request_log if r.path.startswith("/posters/")]
        assert len(times) == 3
        assert (times[-1] - times[0]) / 2 >= 0.28, times  # Crawl-delay 0.3 s between requests


def test_x_robots_tag_noai_is_honoured(fresh):
    with pytest.raises(FetchError) as info:
        PoliteFetcher(policy_for(fresh)).get(fresh.poster_url(CATALOG.films[-1]))
    assert info.value.reason == "x_robots_tag_noai"


def test_hosts_and_schemes_outside_the_rules_are_never_contacted(fresh):
    fetcher = PoliteFetcher(policy_for(fresh))
    with pytest.raises(FetchError) as info:
        fetcher.get("http://elsewhere.invalid/poster.jpg")
    assert info.value.reason == "host_not_allowed"
    with pytest.raises(FetchError) as info:
        fetcher.get("ftp://" + fresh.host + "/poster.jpg")
    assert info.value.reason == "bad_scheme"
    assert fresh.request_log == []


def test_body_size_limit(fresh):
    film = next(f for f in CATALOG.films if fresh.fault_for(f.movie_id) is None)
    with pytest.raises(FetchError) as info:
        PoliteFetcher(policy_for(fresh, max_body_bytes=1000)).get(fresh.poster_url(film))
    assert info.value.reason == "body_too_large"


def test_per_host_rate_limit_measured_from_the_server_log(fresh):
    rate = 20.0
    fetcher = PoliteFetcher(policy_for(fresh, requests_per_second_per_host=rate))
    films = [f for f in CATALOG.films if fresh.fault_for(f.movie_id) is None][:16]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: fetcher.get(fresh.poster_url(f)), films))
    assert [r.path for r in fresh.request_log][0] == "/robots.txt"
    times = sorted(r.time for r in fresh.request_log if r.path.startswith("/posters/"))
    assert len(times) == 16
    # Requests are released 1/rate apart; the server logs them with scheduling jitter, so
    # check every window of 5 consecutive requests (and the whole run), not single gaps.
    windows = [times[i + 4] - times[i] for i in range(len(times) - 4)]
    assert min(windows) >= 4 / rate - 0.06, f"5 requests within {min(windows):.3f}s"
    assert times[-1] - times[0] >= 15 / rate - 0.02
    unlimited = PoliteFetcher(policy_for(fresh, requests_per_second_per_host=1000.0))
    fresh.reset_log()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: unlimited.get(fresh.poster_url(f)), films))
    fast = sorted(r.time for r in fresh.request_log)
    assert fast[-1] - fast[0] < 16 / rate / 2, "the limit, not the server, paced the first run"


def test_api_key_is_sent_but_never_shown(fresh):
    film = CATALOG.films[0]
    fetcher = PoliteFetcher(policy_for(fresh))
    response = fetcher.get(f"{fresh.tmdb_api_base}/movie/{film.tmdb_id}", params={"api_key": KEY})
    assert response.status == 200 and KEY not in response.url
    wrong = PoliteFetcher(policy_for(fresh, secrets=("wrong-key",)))
    with pytest.raises(FetchError) as info:
        wrong.get(f"{fresh.tmdb_api_base}/movie/{film.tmdb_id}", params={"api_key": "wrong-key"})
    assert info.value.reason == "http_401"
    assert "wrong-key" not in str(info.value) and "wrong-key" not in info.value.url


def test_host_allowlist_patterns():
    allowed = ("image.tmdb.org", "*.media-amazon.com", "127.0.0.1:8080")
    assert host_allowed("image.tmdb.org", allowed)
    assert host_allowed("m.media-amazon.com", allowed)
    assert host_allowed("127.0.0.1:8080", allowed)
    assert not host_allowed("127.0.0.1:9090", allowed)
    assert not host_allowed("evil.example", allowed)
    assert not host_allowed("image.tmdb.org.evil.example", allowed)


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
