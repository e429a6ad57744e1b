"""Fetch failures are named for what happened: outages are never recorded as robots rules."""

from __future__ import annotations

import socket

import pytest

from fetching.http import FetchError
from fetching.http import FetchPolicy
from fetching.http import PoliteFetcher
from tests.faulty_host import FaultyHost
from tests.faulty_host import closed_port
from tests.fetching.test_http import test_policy

UNRESOLVABLE = "posters.invalid"


def policy(*hosts: str, **overrides) -> FetchPolicy:
    return test_policy(*hosts, **{"read_timeout_s": 0.3, **overrides})


def fetch_error(fetcher: PoliteFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetcher.get(url)
    return info.value


@pytest.fixture()
def no_dns(monkeypatch):
    """Name lookups of UNRESOLVABLE fail in-process, as a resolver's NXDOMAIN would."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == UNRESOLVABLE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_closed_port_is_connection_refused_after_every_attempt():
    host = f"127.0.0.1:{closed_port()}"
    fetcher = PoliteFetcher(policy(host, respect_robots_txt=False))
    error = fetch_error(fetcher, f"http://{host}/poster.jpg")
    assert error.reason == "connection_refused"
    assert error.attempts == 3, "connection refused is retried"
    assert "refused the connection" in error.detail and host in error.detail


def test_a_host_that_goes_down_after_its_robots_txt_is_connection_refused():
    with FaultyHost(robots="allow", page="ok") as server:
        fetcher = PoliteFetcher(policy(server.host))
        assert fetcher.get(server.url("/1.jpg")).body == b"poster"
        server.stop()
        error = fetch_error(fetcher, server.url("/2.jpg"))
    assert error.reason == "connection_refused"
    assert error.attempts == 3


def test_a_failed_name_lookup_is_dns_failure_after_every_attempt(no_dns):
    fetcher = PoliteFetcher(policy(UNRESOLVABLE, respect_robots_txt=False))
    error = fetch_error(fetcher, f"http://{UNRESOLVABLE}/poster.jpg")
    assert error.reason == "dns_failure"
    assert error.attempts == 3, "a failed lookup is retried"
    assert "cannot resolve the host name of posters.invalid" in error.detail


def test_a_page_that_never_answers_is_a_timeout_after_every_attempt():
    with FaultyHost(robots="allow", page="hang") as server:
        error = fetch_error(PoliteFetcher(policy(server.host)), server.url("/poster.jpg"))
        paths = list(server.paths)
    assert error.reason == "timeout"
    assert error.attempts == 3
    assert paths == ["/robots.txt"] + ["/poster.jpg"] * 3, "each attempt was sent"
    assert "within the read timeout" in error.detail


def test_a_body_that_stalls_is_a_timeout():
    with FaultyHost(robots="allow", page="stall", body=b"x" * 1000) as server:
        error = fetch_error(PoliteFetcher(policy(server.host)), server.url("/poster.jpg"))
    assert error.reason == "timeout"
    assert error.attempts == 3


@pytest.mark.parametrize(
    ("robots", "cause"),
    [("503", "http_503"), ("drop", "connection_error"), ("hang", "timeout")],
)
def test_a_robots_txt_that_cannot_be_read_is_robots_unreachable(robots, cause):
    with FaultyHost(robots=robots, page="ok") as server:
        fetcher = PoliteFetcher(policy(server.host))
        errors = [fetch_error(fetcher, server.url(f"/{n}.jpg")) for n in range(2)]
        paths = list(server.paths)
    assert {e.reason for e in errors} == {"robots_unreachable"}
    assert cause in errors[0].detail and "after 3 attempts" in errors[0].detail
    assert paths == ["/robots.txt"] * 3, "robots.txt is retried, cached, and no page is fetched"


def test_robots_txt_on_a_closed_port_is_robots_unreachable_with_the_cause():
    host = f"127.0.0.1:{closed_port()}"
    error = fetch_error(PoliteFetcher(policy(host)), f"http://{host}/poster.jpg")
    assert error.reason == "robots_unreachable"
    assert "connection_refused" in error.detail


def test_robots_txt_of_an_unresolvable_host_is_robots_unreachable_with_the_cause(no_dns):
    error = fetch_error(PoliteFetcher(policy(UNRESOLVABLE)), f"http://{UNRESOLVABLE}/p.jpg")
    assert error.reason == "robots_unreachable"
    assert "dns_failure" in error.detail


def test_a_real_disallow_stays_robots_disallowed():
    with FaultyHost(robots="disallow", page="ok") as server:
        error = fetch_error(PoliteFetcher(policy(server.host)), server.url("/poster.jpg"))
        paths = list(server.paths)
    assert error.reason == "robots_disallowed"
    assert paths == ["/robots.txt"]


def test_a_missing_robots_txt_allows_everything():
    with FaultyHost(robots="404", page="ok") as server:
        response = PoliteFetcher(policy(server.host)).get(server.url("/poster.jpg"))
    assert response.body == b"poster"
