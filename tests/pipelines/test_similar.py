"""Query by poster end to end on a scraped, embedded and indexed synthetic world."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from fetching.http import DEFAULT_USER_AGENT
from fetching.http import FetchPolicy
from fetching.http import PoliteFetcher
from models.vectors import read_vector_table
from models.vectors import vectors_glob
from pipelines import embed
from pipelines import evaluate
from pipelines import index as index_stage
from pipelines import neighbors
from pipelines import scrape
from pipelines import similar
from pipelines.common import cli
from pipelines.common import main
from synthetic.catalog import SyntheticCatalog
from synthetic.catalog import make_catalog
from synthetic.catalog import make_watch_history
from synthetic.catalog import write_links_csv
from synthetic.catalog import write_ratings_csv
from synthetic.web import FaultPlan
from synthetic.web import PosterWeb
from tests.conftest import REPO_ROOT
from tests.faulty_host import FaultyHost
from tests.faulty_host import closed_port

N_FILMS = 40
RUN_DATE = "2024-05-17"
API_KEY = "world-key"
FAULTS = FaultPlan(not_image=0.05, truncated=0.05, seed=1)


@dataclasses.dataclass(frozen=True)
class World:
    """Every stage's output for one synthetic catalogue: scrape, two models, index, nightly."""

    root: pathlib.Path
    catalog: SyntheticCatalog
    model_version: str  # small_cnn (random weights): the model under test
    pixels_version: str  # the raw-pixel baseline
    written: tuple[int, ...]  # films with a poster (and so a vector)

    @property
    def scrape_output(self) -> pathlib.Path:
        return self.root / "scrape"

    @property
    def vectors(self) -> pathlib.Path:
        return self.root / "vectors"

    @property
    def nightly(self) -> pathlib.Path:
        return self.root / "nightly"

    @property
    def ratings(self) -> pathlib.Path:
        return self.root / "ratings.csv"


@functools.cache
def build_world(root: pathlib.Path) -> World:
    """Run scrape, embed (small_cnn and pixels), index, neighbours and evaluate once per session."""
    root.mkdir(parents=True, exist_ok=True)
    catalog = make_catalog(N_FILMS, seed=0)
    write_links_csv(root / "links.csv", catalog.films)
    unrated = {f.movie_id for f in catalog.films[2:12:3]}  # so some neighbours have no rating
    history = make_watch_history(catalog, 20, seed=1)
    write_ratings_csv(root / "ratings.csv", [r for r in history if r[1] not in unrated])
    with PosterWeb.from_catalog(catalog, api_key=API_KEY, faults=FAULTS) as web:
        scrape.run([
            f"--catalog={root / 'links.csv'}", f"--output={root / 'scrape'}",
            f"--tmdb_api_base={web.tmdb_api_base}", f"--tmdb_image_base={web.tmdb_image_base}",
            f"--imdb_base={web.imdb_base}", f"--tmdb_api_key={API_KEY}",
            f"--allowed_hosts={web.host}", "--requests_per_second_per_host=500",
            "--backoff_base_s=0.01",
        ])  # fmt: skip
    versions = {}
    for model in ("small_cnn", "pixels"):
        manifest = embed.run([f"--posters={root / 'scrape'}", f"--output={root / 'vectors'}",
                              f"--model={model}"])  # fmt: skip
        versions[model] = manifest["model_version"]
        index_stage.run([f"--vectors={root / 'vectors'}", f"--model_version={versions[model]}"])
    flags = [
        f"--vectors={root / 'vectors'}", f"--model_version={versions['small_cnn']}",
        f"--output={root / 'nightly'}", f"--watch_history={root / 'ratings.csv'}",
    ]  # fmt: skip
    neighbors.run([f"--run_date={RUN_DATE}", *flags])
    evaluate.run([*flags, f"--baseline_model_version={versions['pixels']}"])
    ids = read_vector_table(vectors_glob(str(root / "vectors"), versions["pixels"])).ids
    return World(root, catalog, versions["small_cnn"], versions["pixels"], tuple(ids.tolist()))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.getbasetemp() / "poster_world")


@pytest.fixture(scope="module")
def web(world):
    with PosterWeb.from_catalog(world.catalog, api_key=API_KEY) as server:
        yield server


def query(world: World, *args: str, version: str | None = None) -> list[dict]:
    return similar.run([
        f"--vectors={world.vectors}", f"--model_version={version or world.pixels_version}",
        f"--posters={world.scrape_output}", *args,
    ])["results"]  # fmt: skip


def fetch_flags(web: PosterWeb) -> list[str]:
    return [f"--imdb_base={web.imdb_base}", f"--allowed_hosts={web.host}",
            "--requests_per_second_per_host=500", "--max_attempts=1"]  # fmt: skip


def poster_file(world: World, tmp_path: pathlib.Path, movie_id: int) -> pathlib.Path:
    path = tmp_path / f"poster-{movie_id}.jpg"
    path.write_bytes(world.catalog.poster_bytes(movie_id))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_queries_are_classified():
    base = "https://www.imdb.com"
    assert similar.parse_query("tt0076759", base) == similar.Query(
        "tt0076759", "imdb", "tt0076759", base
    )
    url = similar.parse_query("http://127.0.0.1:8/title/tt0080684/", base)
    assert (url.kind, url.imdb_id, url.imdb_base) == ("imdb", "tt0080684", "http://127.0.0.1:8")
    assert similar.parse_query("https://image.tmdb.org/t/p/w500/a.jpg", base).kind == "url"
    assert similar.parse_query("posters/tt0076759.jpg", base).kind == "file"
    assert similar.split_queries(["a.jpg,tt0076759", " b.png "]) == ["a.jpg", "tt0076759", "b.png"]


def test_a_fetch_failure_is_named_in_the_one_line_error():
    down = f"127.0.0.1:{closed_port()}"
    with FaultyHost(robots="503") as broken, FaultyHost(robots="allow", page="hang") as slow:
        hosts = (down, broken.host, slow.host)
        policy = FetchPolicy(allowed_hosts=hosts, max_attempts=1, read_timeout_s=0.3)
        fetcher = PoliteFetcher(policy)
        messages = {}
        for host in hosts:
            url = f"http://{host}/poster.jpg"
            with pytest.raises(similar.QueryError) as info:
                similar.load_query_poster(similar.parse_query(url, "https://www.imdb.com"),
                                          fetcher, None)  # fmt: skip
            messages[host] = str(info.value)
    for host, reason, cause in [
        (down, "robots_unreachable", "connection_refused"),
        (broken.host, "robots_unreachable", "http_503"),
        (slow.host, "timeout", "within the read timeout"),
    ]:
        message = messages[host]
        assert message.startswith(f"could not fetch http://{host}/poster.jpg: {reason}: "), message
        assert cause in message and "\n" not in message and "robots_disallowed" not in message
    assert messages[slow.host].endswith("raise --connect_timeout_s / --read_timeout_s")


@pytest.mark.parametrize("version", ["pixels", "small_cnn"])
def test_a_catalogue_poster_finds_its_own_film_first(world, tmp_path, version):
    film = world.catalog.film(world.written[3])
    chosen = world.pixels_version if version == "pixels" else world.model_version
    results = query(world, f"--query={poster_file(world, tmp_path, film.movie_id)}",
                    "--top_k=5", version=chosen)  # fmt: skip
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    top = results[0]
    assert (top["movie_id"], top["title"], top["year"]) == (film.movie_id, film.title, film.year)
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[1] < 1.0 - 1e-4
    assert {r["model_version"] for r in results} == {chosen}


def test_url_imdb_id_and_imdb_url_find_the_same_film(world, web):
    film = world.catalog.film(world.written[5])
    web.reset_log()
    results = query(
        world, f"--query={web.poster_url(film)}", f"--query={film.imdb_id}",
        f"--query={web.imdb_title_url(film)}", "--top_k=3", *fetch_flags(web),
    )  # fmt: skip
    by_query: dict[str, list[dict]] = {}
    for result in results:
        by_query.setdefault(result["query"], []).append(result)
    assert list(by_query) == [web.poster_url(film), film.imdb_id, web.imdb_title_url(film)]
    for text, ranked in by_query.items():
        assert ranked[0]["movie_id"] == film.movie_id, text
        assert ranked[0]["score"] == pytest.approx(1.0, abs=1e-4)
    label = f"{film.imdb_id} {film.title} ({film.year})"
    assert [r["label"] for r in by_query[film.imdb_id]] == [label] * 3
    log = web.request_log
    assert web.requests_for("/robots.txt") and web.requests_for(f"/title/{film.imdb_id}/")
    assert {r.user_agent for r in log} == {DEFAULT_USER_AGENT}


def test_a_mix_of_two_posters_returns_both(world, tmp_path):
    first, second = world.written[1], world.written[9]
    table = read_vector_table(vectors_glob(str(world.vectors), world.pixels_version))
    vectors = dict(zip(table.ids.tolist(), table.vectors, strict=True))
    results = query(world, f"--query={poster_file(world, tmp_path, first)},"
                    f"{poster_file(world, tmp_path, second)}", "--mix", "--top_k=3")  # fmt: skip
    assert {r["label"] for r in results} == {f"mix of poster-{first}.jpg + poster-{second}.jpg"}
    assert {first, second} <= {r["movie_id"] for r in results}
    mix = vectors[first] + vectors[second]
    mix /= np.linalg.norm(mix)
    for result in results:
        assert result["score"] == pytest.approx(float(mix @ vectors[result["movie_id"]]), abs=1e-4)


def test_the_command_prints_ranked_titles(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pipelines.common.configure_logging", lambda *args, **kwargs: None)
    film = world.catalog.film(world.written[0])
    with pytest.raises(SystemExit) as exit_info:
        main(similar.run, [f"--vectors={world.vectors}", f"--model_version={world.pixels_version}",
                           f"--posters={world.scrape_output}", "--top_k=2",
                           f"--query={poster_file(world, tmp_path, film.movie_id)}"],
             show=similar.results_text, quiet=True)  # fmt: skip
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"query: poster-{film.movie_id}.jpg")
    assert len(lines) == 4
    rank, movie_id, score, *title = lines[2].split()
    assert (rank, int(movie_id), " ".join(title)) == ("1", film.movie_id,
                                                      f"{film.title} ({film.year})")  # fmt: skip
    assert float(score) == pytest.approx(1.0, abs=1e-4)


def bad_inputs(world: World, tmp_path: pathlib.Path, web: PosterWeb) -> dict[str, tuple]:
    text = tmp_path / "notes.txt"
    text.write_text("not a poster\n")
    film = world.catalog.film(world.written[0])
    port = free_port()
    other_index = world.vectors / world.pixels_version / "index"
    return {
        "text file": ([f"--query={text}"], "error: not an image: "),
        "unreachable": (
            [f"--query=http://127.0.0.1:{port}/poster.jpg", f"--allowed_hosts=127.0.0.1:{port}",
             "--max_attempts=1"],
            f"error: could not fetch http://127.0.0.1:{port}/poster.jpg: ",
        ),
        "host not allowed": (
            [f"--query=http://localhost:{web.port}/posters/{film.movie_id}.jpg",
             *fetch_flags(web)],
            "is not in the allowlist",
        ),
        "missing file": ([f"--query={tmp_path / 'nope.jpg'}"], "error: no such file: "),
        "other model's index": (
            [f"--query={poster_file(world, tmp_path, film.movie_id)}",
             f"--index={other_index}", f"--model_version={world.model_version}"],
            f"was built for {world.pixels_version} but the model is {world.model_version} — "
            "rebuild with python -m pipelines.index",
        ),
        "registry model for another index": (
            [f"--query={poster_file(world, tmp_path, film.movie_id)}", "--model=small_cnn"],
            f"was built for {world.pixels_version} but the model is {world.model_version}",
        ),
        "no model version": (
            ["--query=tt0076759", "--model_version="],
            "choose one with --model_version",
        ),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["text file", "unreachable", "host not allowed", "missing file", "other model's index",
     "registry model for another index", "no model version"],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(world, tmp_path, web, capsys, case):
    args, expected = bad_inputs(world, tmp_path, web)[case]
    with pytest.raises(SystemExit) as exit_info:
        cli(lambda: query(world, *args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]


def test_the_command_exits_2_without_a_traceback(world, tmp_path):
    text = tmp_path / "page.html"
    text.write_text("<html>not an image</html>")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.similar", f"--vectors={world.vectors}",
         f"--model_version={world.pixels_version}", f"--query={text}"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: not an image: {text} (not_an_image: Pillow cannot identify 25 bytes starting "
        "b'<html>not an ima') — give a JPEG or PNG poster"
    ]


def test_results_are_json_serialisable(world, tmp_path):
    results = query(world, f"--query={poster_file(world, tmp_path, world.written[2])}")
    assert len(results) == 10
    assert json.loads(json.dumps(results)) == results


def test_a_registry_model_name_embeds_like_the_embed_stage(world, tmp_path):
    film_id = world.written[4]
    results = query(world, f"--query={poster_file(world, tmp_path, film_id)}", "--model=pixels",
                    "--top_k=1")  # fmt: skip
    assert [(r["movie_id"], r["model_version"]) for r in results] == [
        (film_id, world.pixels_version)
    ]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
