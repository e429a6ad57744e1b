"""The whole nightly job on the synthetic poster web, as the README's run command does it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import duckdb
import pytest

from pipelines import nightly
from schemas import CandidateRow
from schemas import NeighborRow
from tests import docs_commands
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("nightly")
    return nightly.run([
        "--synthetic_films=80", "--synthetic_users=40", f"--output={out}",
        "--run_date=2024-05-17", "--model=small_cnn", "--requests_per_second_per_host=500",
    ]), out  # fmt: skip


def test_every_stage_ran_and_reported_its_time(summary):
    result, _ = summary
    assert list(result["timings"]) == [
        "scrape", "co-watch", "embed", "index", "baseline pixels", "evaluation",
        "neighbors and candidates", "report",
    ]  # fmt: skip
    assert result["scrape"]["accounting_ok"] and result["scrape"]["input_rows"] == 80
    assert result["embed"]["model_version"].startswith("small_cnn-")
    assert result["index"]["recall_at_10"] == 1.0


def test_warehouse_holds_the_run_date(summary):
    result, out = summary
    films = result["scrape"]["written"]
    with duckdb.connect(str(out / "nightly" / "warehouse.duckdb"), read_only=True) as con:
        n = con.execute(f"SELECT count(*) FROM {NeighborRow.TABLE}").fetchall()[0][0]
        users = con.execute(
            f"SELECT count(DISTINCT {CandidateRow.c.user_id}) FROM {CandidateRow.TABLE}"
        ).fetchall()[0][0]
    # Films with a poster, and catalog films whose poster was lost but that have a watch history
    # (co-watch neighbours only), all get 10 neighbours.
    assert n % 10 == 0 and 10 * films <= n <= 10 * 80
    assert 0 < users <= 40
    text = nightly.sample_query(result)
    assert text.count("\n") == 7 and "LIMIT 5" in text and "users have candidates" in text
    command = text.splitlines()[1].strip()  # the hint the job ends with: it runs as printed
    done = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = text.splitlines()[2].split()
    assert first[0] == "1" and first[1] in done.stdout


def test_evaluation_and_report_cover_the_baselines(summary):
    result, _ = summary
    methods = set(result["evaluation"]["results"])
    assert methods == {
        "random", "popularity", "co-watch kNN", "genre profile", "poster kNN: small_cnn",
        "poster kNN: pixels", "co-watch model alone", "hybrid (tuned blend)",
        "hybrid, poster weight 0",
    }  # fmt: skip
    assert result["neighbors"]["blend"] == result["evaluation"]["blend"]
    # the hybrid's co-watch half is the co-watch stage's model (EASE by default)
    evaluation = result["evaluation"]
    assert evaluation["cowatch_model"] == {"model": "ease", "ease_lambda": 500.0,
                                           "sequence_weight": 1.0, "popularity_exponent": 0.2}
    # the test world's users are fewer than --eval_users: every user is evaluated
    assert evaluation["users_sampled"] == evaluation["users_in_history"] > 0
    # the evaluation took the co-watch version's Gram (the same history) instead of a new one
    assert evaluation["gram_of_cowatch_version_reused"]
    shares = [k for k in evaluation["intervals"] if k.endswith("hybrid, poster weight 0")]
    assert shares == ["warm HR@100: hybrid - hybrid, poster weight 0"]
    html = open(result["report"], encoding="utf-8").read()
    assert "<svg" in html and "data:image/png;base64," in html
    assert "co-watch neighbours come from <code>ease</code>" in html


def test_the_console_fits_on_one_screen(summary):
    result, out = summary
    text = nightly.results_text(result)
    lines = text.splitlines()
    assert len(result["timings"]) + len(lines) <= 45  # a line per stage, then the results
    assert "leave-last-out over 40 users" in text and "paired bootstrap" not in text
    assert f"outputs under {out}: scrape/ train/ vectors/ nightly/" in lines
    assert "LIMIT 5" in text and lines[-1].startswith("done in ")


def test_the_trained_model_is_embedded_without_the_backbones_weights():
    argv = ["--model=squeezenet_v1_1", "--weights=/w/squeezenet.h5", "--train", "--weights",
            "/w/other.h5", "--posters=/p"]  # fmt: skip
    assert nightly.trained_model_argv(argv, "/t/model.keras") == [
        "--model=squeezenet_v1_1", "--train", "--posters=/p", "--model=/t/model.keras"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reader(summary, tmp_path_factory):
    """A folder laid out as a reader's checkout after `make demo`: out/demo is the nightly run's
    output and .venv this environment; commands run there as the docs print them."""
    _, out = summary
    home = tmp_path_factory.mktemp("reader")
    (home / "out").mkdir()
    (home / "out" / "demo").symlink_to(out)
    (home / ".venv").symlink_to(sys.prefix)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT),
               PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")  # fmt: skip
    return home, env


def test_every_command_in_the_docs_that_reads_the_demo_runs(reader):
    home, env = reader
    commands = docs_commands.demo_shell_commands()
    snippets = docs_commands.demo_python_snippets()
    assert {"README.md", "docs/scrape.md"} <= {source for source, _ in commands}
    assert [source for source, _ in snippets] == ["docs/scrape.md"]
    for source, command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True,
                              text=True, timeout=180, check=False)  # fmt: skip
        assert done.returncode == 0, f"{source}: {command}\n{done.stderr[-2000:]}"
        assert "│" in done.stdout or done.stdout.strip(), f"{source}: {command} printed nothing"
    for source, code in snippets:
        done = subprocess.run([sys.executable, "-c", code], cwd=home, env=env, capture_output=True,
                              text=True, timeout=180, check=False)  # fmt: skip
        assert done.returncode == 0, f"{source}:\n{code}\n{done.stderr[-2000:]}"


def test_every_duckdb_query_in_the_docs_runs_on_the_warehouse(summary):
    _, out = summary
    queries = docs_commands.duckdb_queries()
    assert len(queries) >= 2
    with duckdb.connect(str(out / "nightly" / "warehouse.duckdb"), read_only=True) as con:
        for _, sql in queries:
            con.execute(sql).fetchall()  # a renamed table or column raises here
