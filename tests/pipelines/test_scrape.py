"""The scrape pipeline end to end against the synthetic poster web on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import logging
import os
import pathlib
import pickle
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from PIL import Image

from fetching.http import FetchPolicy
from fetching.resolve import TMDB_GENRE_IDS
from pipelines import scrape
from schemas import CatalogEntry
from schemas import DeadLetter
from schemas import DuplicateRecord
from schemas import PosterRecord
from storage.tfrecord import read_tfrecords
from synthetic.catalog import make_catalog
from synthetic.catalog import tmdb_genres
from synthetic.catalog import write_links_csv
from synthetic.catalog import write_plain_csv
from synthetic.web import FaultPlan
from synthetic.web import PosterWeb
from tests.faulty_host import FaultyHost
from tests.faulty_host import closed_port
from transforms.fetch_worker import FetchSettings
from transforms.fetch_worker import FetchWorkerDied
from transforms.fetch_worker import FetchWorkers
from transforms.fetch_worker import ImageConfig
from transforms.fetch_worker import ResolveConfig
from transforms.fetch_worker import fetch_worker_command

KEY = "pipeline-test-key-4711"
CATALOG = make_catalog(80, seed=11)


def scrape_args(web: PosterWeb, catalog: str, output: pathlib.Path, *extra: str) -> list[str]:
    return [
        f"--catalog={catalog}",
        f"--output={output}",
        f"--tmdb_api_base={web.tmdb_api_base}",
        f"--tmdb_image_base={web.tmdb_image_base}",
        f"--imdb_base={web.imdb_base}",
        f"--allowed_hosts={web.host}",
        "--requests_per_second_per_host=1000",
        "--backoff_base_s=0.01",
        "--read_timeout_s=1.5",
        "--connect_timeout_s=2",
        "--max_attempts=3",
        "--num_shards=3",
        *extra,
    ]


def posters(output: pathlib.Path, run: str = "*") -> list[PosterRecord]:
    files = sorted(glob.glob(str(output / "posters" / run / "*.tfrecord")))
    return [PosterRecord.from_example(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def table(output: pathlib.Path, kind: type, run: str = "run-0001") -> list:
    return [r for f in sorted((output / kind.TABLE / run).glob("*.parquet"))
            for r in kind.from_arrow(pq.read_table(f))]  # fmt: skip


def links_catalog(tmp_path: pathlib.Path, films=CATALOG.films) -> str:
    path = tmp_path / "links.csv"
    write_links_csv(path, films)
    return str(path)


@pytest.fixture(scope="module")
def clean_web():
    with PosterWeb.from_catalog(CATALOG, api_key=KEY) as web:
        yield web


@pytest.fixture(scope="module")
def happy_run(clean_web, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("happy")
    clean_web.reset_log()
    manifest = scrape.run(
        scrape_args(clean_web, links_catalog(tmp), tmp / "out", f"--tmdb_api_key={KEY}")
    )
    return manifest, tmp / "out", list(clean_web.request_log)


def test_happy_path_accounts_for_every_row(happy_run):
    manifest, out, _ = happy_run
    planted = len(CATALOG.duplicates)
    assert manifest["accounting_ok"] is True
    assert manifest["input_rows"] == 80
    assert manifest["dead_lettered"] == 0
    assert manifest["duplicates"] == planted
    assert manifest["written"] == 80 - planted
    assert manifest["counts"]["files_written"] == 3 + 1 + 1 + 1  # shards, letters, dups, index
    written = posters(out)
    assert len(written) == manifest["written"]
    assert len({p.movie_id for p in written}) == len(written)
    names = sorted(os.listdir(out / "posters" / "run-0001"))
    assert names == ["films.json", *(f"posters-0000{i}-of-00003.tfrecord" for i in range(3))]
    index = json.loads((out / "posters" / "run-0001" / "films.json").read_text())
    assert sorted(m for ids in index.values() for m in ids) == sorted(p.movie_id for p in written)


def test_records_carry_normalised_images_and_tmdb_metadata(happy_run):
    _, out, _ = happy_run
    for record in posters(out):
        film = CATALOG.film(record.movie_id)
        genres = tuple(dict.fromkeys(TMDB_GENRE_IDS[g["id"]] for g in tmdb_genres(film)))
        assert (record.title, record.year, record.genres) == (film.title, film.year, genres)
        assert record.imdb_id == film.imdb_id and record.tmdb_id == film.tmdb_id
        image = Image.open(io.BytesIO(record.image_jpeg))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (record.width, record.height)
        source = Image.open(io.BytesIO(CATALOG.poster_bytes(record.movie_id)))
        assert (record.original_width, record.original_height) == source.size
        assert len(record.phash) == 16 and len(record.content_sha256) == 64
        assert KEY not in record.source_url


def test_planted_duplicates_found_and_no_distinct_posters_merged(happy_run):
    _, out, _ = happy_run
    found = {frozenset((d.movie_id, d.canonical_movie_id)): d for d in table(out, DuplicateRecord)}
    planted = {frozenset((p.movie_id, p.source_movie_id)): p for p in CATALOG.duplicates}
    assert set(found) == set(planted)
    for pair, record in found.items():
        assert record.kind == planted[pair].kind
        if record.kind == "exact":
            assert record.distance == 0
            assert record.content_sha256 == record.canonical_content_sha256
        else:
            assert 0 <= record.distance <= scrape.DEFAULT_NEAR_DUPLICATE_THRESHOLD


def test_requests_are_polite_and_the_key_is_never_kept(happy_run, clean_web):
    _, out, log = happy_run
    assert log[0].path == "/robots.txt"
    assert sum(r.path == "/robots.txt" for r in log) <= 4  # once per worker fetcher at most
    assert {r.user_agent for r in log} == {scrape.DEFAULT_USER_AGENT}
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_rerun_gives_the_same_rows(clean_web, happy_run, tmp_path):
    """The rerun fetches on the DoFn's own threads (Dataflow's default), the first run in worker
    processes (the local default): the same rows either way."""
    _, out, _ = happy_run
    scrape.run(scrape_args(clean_web, links_catalog(tmp_path), tmp_path / "again",
                           f"--tmdb_api_key={KEY}", "--fetch_processes=0"))  # fmt: skip

    def stable(records):
        return [dataclasses.replace(r, fetched_at=None) for r in records]

    assert stable(posters(tmp_path / "again")) == stable(posters(out))
    assert table(tmp_path / "again", DuplicateRecord) == table(out, DuplicateRecord)


def test_incremental_run_fetches_only_new_films(clean_web, tmp_path):
    out = tmp_path / "out"
    first = scrape.run(scrape_args(clean_web, links_catalog(tmp_path, CATALOG.films[:50]), out,
                                   f"--tmdb_api_key={KEY}"))  # fmt: skip
    clean_web.reset_log()
    second = scrape.run(scrape_args(clean_web, links_catalog(tmp_path, CATALOG.films), out,
                                    f"--tmdb_api_key={KEY}"))  # fmt: skip
    assert second["run_id"] == "run-0002" and second["accounting_ok"]
    assert second["already_present"] == first["written"]
    old_ids = {p.movie_id for p in posters(out, "run-0001")}
    asked = {r.path for r in clean_web.request_log if r.path.startswith("/3/movie/")}
    asked_tmdb = {int(p.rsplit("/", 1)[1]) for p in asked}
    assert not asked_tmdb & {CATALOG.film(m).tmdb_id for m in old_ids}
    all_ids = [p.movie_id for p in posters(out)]
    assert len(all_ids) == len(set(all_ids)), "a film was written twice"
    assert len(all_ids) == 80 - len(CATALOG.duplicates)


FAULTS = FaultPlan(
    http_500=0.08, http_429=0.08, slow=0.08, truncated=0.08, not_image=0.08, bomb=0.08,
    bad_redirect=0.08, seed=5, transient_failures=1, retry_after_s=1, slow_s=3.0,
)  # fmt: skip
PERMANENT_REASONS = {
    "truncated": "fetch/truncated_body",
    "not_image": "validate/not_an_image",
    "bomb": "validate/too_many_pixels",
    "bad_redirect": "fetch/redirect_host_not_allowed",
}


def dead_by_movie(out: pathlib.Path) -> dict[int, DeadLetter]:
    return {d.movie_id: d for d in table(out, DeadLetter)}


def test_each_fault_kind_is_retried_to_success_or_dead_lettered(tmp_path):
    with PosterWeb.from_catalog(CATALOG, api_key=KEY, faults=FAULTS) as web:
        manifest = scrape.run(
            scrape_args(web, links_catalog(tmp_path), tmp_path / "out", f"--tmdb_api_key={KEY}")
        )
        dead = dead_by_movie(tmp_path / "out")
        written = {p.movie_id for p in posters(tmp_path / "out")}
        dup_ids = {d.movie_id for d in table(tmp_path / "out", DuplicateRecord)}
        for kind in ("http_500", "http_429", "slow"):
            for movie_id in web.faulted_ids(kind):
                assert movie_id in written | dup_ids, f"{kind} film {movie_id} was not retried"
        for kind, reason in PERMANENT_REASONS.items():
            ids = web.faulted_ids(kind)
            assert ids, f"no film got fault {kind}"
            for movie_id in ids:
                if movie_id in dup_ids:
                    continue
                record = dead[movie_id]
                assert f"{record.stage}/{record.reason}" == reason
                assert record.line_number == CATALOG.films.index(CATALOG.film(movie_id)) + 2
    assert manifest["accounting_ok"]
    assert manifest["dead_lettered"] == len(dead)


PERSISTENT = {"http_500": "http_500", "slow": "timeout", "http_429": "http_429"}


def test_persistent_faults_are_dead_lettered_with_their_attempts(tmp_path):
    """One scrape whose faulty films fail every attempt, each kind checked in it."""
    faults = dataclasses.replace(FAULTS, transient_failures=100, retry_after_s=0)
    films = CATALOG.films
    with PosterWeb.from_catalog(CATALOG, api_key=KEY, faults=faults) as web:
        catalogued = {f.movie_id for f in films}
        ids = {kind: [m for m in web.faulted_ids(kind) if m in catalogued] for kind in PERSISTENT}
        scrape.run(scrape_args(web, links_catalog(tmp_path, films), tmp_path / "out",
                               f"--tmdb_api_key={KEY}"))  # fmt: skip
        every = [m for found in ids.values() for m in found]
        api_calls = {
            movie_id: len(web.requests_for(f"/3/movie/{CATALOG.film(movie_id).tmdb_id}"))
            for movie_id in every
        }
        image_calls = {
            movie_id: len(web.requests_for(f"/t/p/w500{CATALOG.poster_path(movie_id)}"))
            for movie_id in every
        }
    dead = dead_by_movie(tmp_path / "out")
    for kind, reason in PERSISTENT.items():
        assert ids[kind], f"no film got fault {kind}"
        for movie_id in ids[kind]:
            assert (dead[movie_id].stage, dead[movie_id].reason) == ("fetch", reason)
            assert image_calls[movie_id] == 3, "three attempts at the image, then given up"
            # attempts = the TMDb API call's (1, more if it timed out under load) + the image's 3
            assert dead[movie_id].attempts == api_calls[movie_id] + 3
            assert dead[movie_id].http_status == {"http_500": 500, "http_429": 429}.get(kind)


def test_robots_disallow_is_respected(tmp_path):
    films = CATALOG.films[:12]
    with PosterWeb.from_catalog(CATALOG, api_key=KEY, robots_disallow=["/posters/"]) as web:
        path = tmp_path / "plain.csv"
        write_plain_csv(path, films, web.poster_url)
        manifest = scrape.run(scrape_args(web, str(path), tmp_path / "out"))
        assert not [r for r in web.request_log if r.path.startswith("/posters/")]
    assert manifest["dead_lettered"] == 12 and manifest["accounting_ok"]
    assert {d.reason for d in table(tmp_path / "out", DeadLetter)} == {"robots_disallowed"}


def test_outages_are_dead_lettered_by_cause_never_as_robots_disallowed(tmp_path):
    films = CATALOG.films[:6]
    down = f"127.0.0.1:{closed_port()}"
    with FaultyHost(robots="503") as broken, FaultyHost(robots="allow", page="hang") as slow:
        host_of = {f.movie_id: (down, broken.host, slow.host)[i % 3] for i, f in enumerate(films)}
        path = tmp_path / "plain.csv"
        write_plain_csv(path, films, lambda f: f"http://{host_of[f.movie_id]}/{f.movie_id}.jpg")
        manifest = scrape.run([
            f"--catalog={path}", f"--output={tmp_path / 'out'}",
            f"--allowed_hosts={down},{broken.host},{slow.host}",
            "--requests_per_second_per_host=1000", "--backoff_base_s=0.01",
            "--read_timeout_s=0.3", "--max_attempts=2", "--num_shards=1",
        ])  # fmt: skip
        expected = {down: ("robots_unreachable", "connection_refused"),
                    broken.host: ("robots_unreachable", "http_503"),
                    slow.host: ("timeout", "within the read timeout")}  # fmt: skip
    assert manifest["dead_lettered"] == 6 and manifest["accounting_ok"]
    dead = dead_by_movie(tmp_path / "out")
    for movie_id, host in host_of.items():
        reason, cause = expected[host]
        assert (dead[movie_id].stage, dead[movie_id].reason) == ("fetch", reason)
        assert cause in dead[movie_id].detail


def test_imdb_title_pages_resolve_without_a_tmdb_key(clean_web, tmp_path):
    films = [f for f in CATALOG.films if CATALOG.duplicate_of(f.movie_id) is None][:10]
    manifest = scrape.run(scrape_args(clean_web, links_catalog(tmp_path, films), tmp_path / "o"))
    assert manifest["written"] == 10
    for record in posters(tmp_path / "o"):
        film = CATALOG.film(record.movie_id)
        assert record.title == film.title and record.genres == film.genres
        assert "/images/M/" in record.source_url


def test_malformed_rows_are_dead_lettered_with_line_numbers(clean_web, tmp_path):
    path = tmp_path / "links.csv"
    good = CATALOG.films[:5]
    rows = ["movieId,imdbId,tmdbId"] + [
        f"{f.movie_id},{f.imdb_number:07d},{f.tmdb_id}" for f in good
    ]
    rows[3:3] = ["abc,0114709,862", "12,0114709", "", "13,notanid,5"]
    path.write_text("\n".join(rows) + "\n")
    manifest = scrape.run(
        scrape_args(clean_web, str(path), tmp_path / "o", f"--tmdb_api_key={KEY}")
    )
    dead = table(tmp_path / "o", DeadLetter)
    assert [(d.line_number, d.stage, d.reason) for d in dead] == [
        (4, "parse", "bad_movie_id"),
        (5, "parse", "wrong_column_count"),
        (7, "parse", "bad_imdb_id"),
    ]
    assert dead[0].input_row == "abc,0114709,862"
    assert manifest["input_rows"] == 8 and manifest["written"] == 5 and manifest["accounting_ok"]


def test_catalog_duplicates_are_dropped_before_fetching(clean_web, tmp_path):
    films = CATALOG.films[:4]
    path = tmp_path / "links.csv"
    write_links_csv(path, films + films[:2])
    clean_web.reset_log()
    manifest = scrape.run(
        scrape_args(clean_web, str(path), tmp_path / "o", f"--tmdb_api_key={KEY}")
    )
    dups = table(tmp_path / "o", DuplicateRecord)
    assert [(d.movie_id, d.canonical_movie_id, d.kind, d.line_number) for d in dups] == [
        (films[0].movie_id, films[0].movie_id, "film_id", 6),
        (films[1].movie_id, films[1].movie_id, "film_id", 7),
    ]
    assert len([r for r in clean_web.request_log if r.path.startswith("/3/movie/")]) == 4
    assert manifest["written"] == 4 and manifest["accounting_ok"]


def test_multi_processing_direct_runner(clean_web, tmp_path):
    films = CATALOG.films[:30]
    manifest = scrape.run(
        scrape_args(clean_web, links_catalog(tmp_path, films), tmp_path / "o",
                    f"--tmdb_api_key={KEY}", "--direct_running_mode=multi_processing",
                    "--direct_num_workers=2")
    )  # fmt: skip
    planted = [d for d in CATALOG.duplicates
               if {d.movie_id, d.source_movie_id} <= {f.movie_id for f in films}]  # fmt: skip
    assert manifest["accounting_ok"] and manifest["dead_lettered"] == 0
    assert manifest["written"] == 30 - len(planted) == len(posters(tmp_path / "o"))


def test_builds_for_dataflow_offline(tmp_path):
    path = links_catalog(tmp_path, CATALOG.films[:3])
    result = scrape.run([
        f"--catalog={path}", f"--output={tmp_path / 'o'}", "--runner=DataflowRunner",
        "--dry_run=True", "--project=poster-recs-test", "--region=us-central1",
        "--temp_location=gs://poster-recs-test/tmp",
    ])  # fmt: skip
    assert result == {}
    assert not (tmp_path / "o" / "manifests").exists()


def test_help_lists_the_stage_options(capsys):
    with pytest.raises(SystemExit) as info:
        scrape.run(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--catalog",
        "--catalog_format",
        "--requests_per_second_per_host",
        "--allowed_hosts",
        "--near_duplicate_threshold",
        "--synthetic_films",
    ):
        assert flag in text  # fmt: skip


def test_missing_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--catalog is required"):
        scrape.run([f"--output={tmp_path}"])


def test_api_key_never_logged(clean_web, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    scrape.run(scrape_args(clean_web, links_catalog(tmp_path, CATALOG.films[:5]), tmp_path / "o",
                           f"--tmdb_api_key={KEY}"))  # fmt: skip
    assert KEY not in caplog.text
    manifest = json.loads((tmp_path / "o" / "manifests" / "run-0001.json").read_text())
    assert manifest["options"]["tmdb_api_key"] == "REDACTED"


def test_metrics_count_every_stage(happy_run):
    manifest, _, _ = happy_run
    counters = manifest["counters"]
    planted = CATALOG.duplicates
    assert counters["catalog_rows"] == 80
    assert counters["fetched"] == 80 and counters.get("fetch_failed", 0) == 0
    assert counters["posters_kept"] == manifest["written"]
    exact = sum(d.kind == "exact" for d in planted)
    assert counters.get("duplicates_exact", 0) == exact
    assert counters.get("duplicates_near", 0) == len(planted) - exact


def test_fetch_processes_default_to_every_core_locally_and_none_on_dataflow():
    options = scrape.PipelineOptions([]).view_as(scrape.ScrapeOptions)
    assert scrape.fetch_processes(options, local=True) == (os.cpu_count() or 1)
    assert scrape.fetch_processes(options, local=False) == 0
    options.fetch_processes = 3
    assert scrape.fetch_processes(options, local=False) == 3


def test_fetch_workers_split_the_host_rate_and_report_results(clean_web):
    policy = FetchPolicy(requests_per_second_per_host=1000.0, allowed_hosts=(clean_web.host,),
                         backoff_base_s=0.01, max_attempts=2)  # fmt: skip
    resolve_config = ResolveConfig(resolver="imdb", imdb_base=clean_web.imdb_base)
    films = CATALOG.films[:6]
    settings = FetchSettings(policy, resolve_config, ImageConfig(), "run-0001", concurrency=2)
    workers = FetchWorkers(2, settings)
    try:
        for film in films:
            workers.put(CatalogEntry(line_number=2, movie_id=film.movie_id, imdb_id=film.imdb_id,
                                     tmdb_id=None, title=None, year=None, poster_url=None,
                                     genres=()))  # fmt: skip
        results = [workers.get(block=True) for _ in films]
        assert workers.get(block=False) is None and workers.in_flight == 0
    finally:
        workers.close()
    assert sorted(r.movie_id for r in results) == sorted(f.movie_id for f in films)
    assert all(len(r.signature) == 48 * 48 for r in results)
    records = [PosterRecord.from_example(next(read_tfrecords(r.record))) for r in results]
    assert [r.movie_id for r in records] == [r.movie_id for r in results]
    assert workers.settings.policy.requests_per_second_per_host == 500.0
    assert settings.policy.requests_per_second_per_host == 1000.0


def test_a_dead_fetch_worker_fails_the_bundle_instead_of_hanging(clean_web):
    policy = FetchPolicy(allowed_hosts=(clean_web.host,))
    workers = FetchWorkers(1, FetchSettings(policy, ResolveConfig(), ImageConfig(), "run-0001", 1))
    try:
        (pid,) = workers.pids
        os.kill(pid, signal.SIGKILL)
        entry = CatalogEntry(line_number=2, movie_id=1, imdb_id=None, tmdb_id=None, title=None,
                             year=None, poster_url=clean_web.base_url, genres=())  # fmt: skip
        with pytest.raises(FetchWorkerDied, match="exited"):
            workers.put(entry)  # the pipe may already be broken, or the result never comes
            workers.get(block=True)
    finally:
        workers.close()


def test_a_fetch_worker_whose_parent_dies_ends_quietly(clean_web):
    """A killed scrape closes its workers' pipes mid-stream: each worker exits at once, status
    0, with nothing on stderr (Ctrl-C never reaches them: they run in their own process
    group, and the parent's pipes closing ends them the same way)."""
    policy = FetchPolicy(allowed_hosts=(clean_web.host,))
    settings = FetchSettings(policy, ResolveConfig(), ImageConfig(), "run-0001", 1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    worker = subprocess.Popen(
        [sys.executable, "-c", fetch_worker_command()], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    pickle.dump(settings, worker.stdin)
    worker.stdin.flush()
    worker.stdin.close()  # the parent is gone: no end marker ever comes
    assert worker.wait(timeout=60) == 0
    err = worker.stderr.read()
    worker.stdout.close()
    worker.stderr.close()
    assert err == b"", err.decode()[-2000:]
