"""No secret is ever written or printed: the whole nightly job run with a TMDb key, then every
output file and the console searched for it."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import sys
import zipfile

import duckdb
import pyarrow.parquet as pq
import pytest

from pipelines import nightly
from pipelines.common import parse_options
from pipelines.common import recorded_options
from pipelines.demo import DEMO_API_KEY
from pipelines.embed import EmbedOptions
from pipelines.index import IndexOptions
from pipelines.scrape import ScrapeOptions
from transforms.manifest import is_secret_option
from transforms.manifest import redact_options

KEY = "tmdbKEY0123456789abcdefSECRET"


def readable_forms(path: pathlib.Path) -> list[bytes]:
    """The file's bytes, plus what compression hides: Parquet rows, DuckDB rows, zip members."""
    data = path.read_bytes()
    forms = [data]
    if path.suffix == ".parquet":
        forms.append(repr(pq.read_table(path).to_pylist()).encode())
    elif path.suffix == ".duckdb":
        with duckdb.connect(str(path), read_only=True) as con:
            tables = [t for (t,) in con.execute("SHOW TABLES").fetchall()]
            for table in tables:
                forms.append(repr(con.execute(f'SELECT * FROM "{table}"').fetchall()).encode())
    elif zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            forms += [archive.read(name) for name in archive.namelist()]
    return forms


@pytest.fixture(scope="module")
def nightly_with_key(tmp_path_factory):
    """The nightly job (train and baseline included) with --tmdb_api_key; returns the output
    root, the console (stdout, stderr and every log record at DEBUG) and the summary."""
    out = tmp_path_factory.mktemp("nightly_secret")
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = console
    try:
        summary = nightly.run([
            "--synthetic_films=40", "--synthetic_users=30", f"--output={out}",
            "--run_date=2024-05-17", "--model=small_cnn", "--requests_per_second_per_host=500",
            "--train", "--warmup_epochs=1", "--warmup_runs=1", "--metric_epochs=1",
            f"--tmdb_api_key={KEY}",
        ])  # fmt: skip
    finally:
        sys.stdout, sys.stderr = saved
        root.removeHandler(handler)
        root.setLevel(level)
    return out, console.getvalue(), summary


def test_the_key_is_in_no_output_file(nightly_with_key):
    out, _, summary = nightly_with_key
    files = [p for p in out.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".parquet", ".json", ".html", ".tfrecord", ".duckdb", ".keras"} <= kinds
    assert "train" in summary and summary["scrape"]["accounting_ok"]
    leaks = [
        str(p.relative_to(out))
        for p in files
        for form in readable_forms(p)
        if KEY.encode() in form or DEMO_API_KEY.encode() in form
    ]
    assert leaks == []


def test_every_manifest_records_its_options_with_secrets_redacted(nightly_with_key):
    out, _, _ = nightly_with_key
    manifests = [json.loads(p.read_text()) for p in out.rglob("manifests/run-*.json")]
    stages = {m.get("stage") for m in manifests}
    assert {"scrape", "train", "embed"} <= stages
    scrape = next(m for m in manifests if m.get("stage") == "scrape")
    assert scrape["options"]["tmdb_api_key"] == "REDACTED"
    for manifest in manifests:
        if manifest.get("stage") in ("train", "embed"):
            assert "tmdb_api_key" not in manifest["options"]  # not their flag: never passed on
            assert manifest["options"]["model"] == "small_cnn" or "model_uri" in manifest["options"]


def test_the_key_is_never_printed_or_logged(nightly_with_key):
    _, console, _ = nightly_with_key
    assert "[nightly] scrape: done in" in console  # the console was captured
    assert "pipelines.common" in console or "apache_beam" in console  # and so was logging
    assert KEY not in console and DEMO_API_KEY not in console


def test_a_stage_that_does_not_declare_a_secret_never_sees_it(caplog):
    argv = ["--vectors=v", f"--tmdb_api_key={KEY}", "--db_password", "hunter2",
            "--unknown_flag=shown"]  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        options = parse_options(argv, IndexOptions, "index")
        everything = options.get_all_options(retain_unknown_options=True)
        options.get_all_options()  # Beam warns of the flags it cannot parse here
    assert "Discarding unparseable args" in caplog.text and "--unknown_flag=shown" in caplog.text
    assert KEY not in caplog.text and "hunter2" not in caplog.text
    assert KEY not in repr(everything) and "hunter2" not in repr(everything)
    assert everything["vectors"] == "v"


def test_the_stage_that_declares_a_secret_gets_it_and_records_it_redacted():
    options = parse_options(["--catalog=c.csv", f"--tmdb_api_key={KEY}"], ScrapeOptions, "x")
    assert options.view_as(ScrapeOptions).tmdb_api_key == KEY
    recorded = recorded_options(options)
    assert recorded["tmdb_api_key"] == "REDACTED" and recorded["catalog"] == "c.csv"
    embed = parse_options(["--posters=p", f"--tmdb_api_key={KEY}"], EmbedOptions, "x")
    assert "tmdb_api_key" not in recorded_options(embed)


def test_secret_names_and_url_keys_are_redacted():
    assert all(map(is_secret_option, ["tmdb_api_key", "--hf-token", "db_password", "SECRET"]))
    assert not any(map(is_secret_option, ["output", "model", "num_shards", "max_attempts"]))
    shown = redact_options({
        "tmdb_api_key": KEY, "auth_token": "t0k", "catalog": f"https://x/list?api_key={KEY}&a=1",
        "num_shards": 4, "s3_secret_access_key": None,
    })  # fmt: skip
    assert shown == {
        "tmdb_api_key": "REDACTED", "auth_token": "REDACTED",
        "catalog": "https://x/list?api_key=REDACTED&a=1", "num_shards": 4,
        "s3_secret_access_key": None,
    }  # fmt: skip
