"""The console of a stage: only the project's own lines by default, everything with a log level,
and a progress line fed by the DoFns."""

from __future__ import annotations

import io
import logging
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from monitoring import progress
from pipelines import console
from pipelines import scrape
from pipelines.common import requested_log_level

REPO = pathlib.Path(__file__).resolve().parents[2]
FILMS = 12
# A line of the project's own logging: timestamp, level, a logger of one of its packages.
PROJECT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    rf"(__main__|(?:{'|'.join(console.PROJECT_PACKAGES)})(?:\.\w+)*): "
)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """A scrape of the synthetic web run in this process under a progress line; returns its
    output root and the progress counts it left."""
    out = tmp_path_factory.mktemp("scrape")
    with console.progress("scrape", stream=io.StringIO()):
        manifest = scrape.run([
            f"--synthetic_films={FILMS}", f"--output={out}",
            "--requests_per_second_per_host=1000", "--fetch_processes=1",
        ])  # fmt: skip
        fetched = progress.current()
    return out, manifest, fetched


def _stage(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
        env=env,
    )  # fmt: skip


def test_a_stage_prints_only_the_projects_lines_by_default(scraped, tmp_path):
    out, _, _ = scraped
    done = _stage("pipelines.embed", f"--posters={out}", f"--output={tmp_path / 'v'}",
                  "--model=pixels", cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    foreign = [line for line in done.stderr.splitlines() if not PROJECT_LINE.match(line)]
    assert foreign == [], "third-party lines on stderr at the default level"
    assert "counters embed: " in done.stderr  # the stage's own lines are there
    assert "outputs under" in done.stdout


def test_verbose_brings_the_libraries_lines_back(scraped, tmp_path):
    out, _, _ = scraped
    done = _stage("pipelines.embed", f"--posters={out}", f"--output={tmp_path / 'v'}",
                  "--model=pixels", "-v", cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert " INFO apache_beam." in done.stderr


def test_the_fetch_dofn_counts_every_film_it_fetches(scraped):
    _, manifest, fetched = scraped
    assert fetched.name == "films fetched"
    fetched_or_failed = manifest["written"] + manifest["duplicates"] + manifest["dead_lettered"]
    assert fetched.total == fetched.done > 0
    assert fetched.done <= fetched_or_failed <= FILMS


def test_log_level_flags():
    assert requested_log_level([]) is None
    assert requested_log_level(["-v"]) == logging.INFO
    assert requested_log_level(["--log_level=warning"]) == logging.WARNING
    assert requested_log_level(["--log_level", "ERROR", "-v"]) == logging.ERROR
    assert requested_log_level(["--log_level=INFO", "--debug"]) == logging.DEBUG


def test_every_package_of_the_project_counts_as_its_own():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages <= set(console.PROJECT_PACKAGES)


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def test_default_filter_keeps_the_projects_lines_and_the_warnings_that_matter():
    keep = console._DefaultFilter().filter
    assert keep(_record("transforms.embed", logging.INFO, "loaded model"))
    assert keep(_record("__main__", logging.INFO, "manifest"))
    assert not keep(_record("apache_beam.typehints.native_type_compatibility", logging.INFO,
                            "Converting string literal type hint to Any"))  # fmt: skip
    assert keep(_record("apache_beam.options.pipeline_options", logging.WARNING,
                        "Discarding unparseable args: ['--postres=x']"))  # fmt: skip
    assert not keep(_record("root", logging.WARNING, "Resource module is not available for "
                            "current platform, memory usage cannot be fetched."))  # fmt: skip


def test_native_start_up_lines_are_held_back_and_the_rest_written(capfd):
    with console._native_stderr_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")  # fmt: skip
        os.write(2, b"I0000 00:00:1795547762.212752   26397 port.cc:153] oneDNN custom ops\n")
        os.write(2, b"\rscrape: 3s elapsed\x1b[KW0000 00:00:17.2   1 cuda.cc:1] no GPU\n")
        os.write(2, b"a real error from native code\n")
    assert capfd.readouterr().err == "a real error from native code\n"


def test_progress_line_says_done_total_rate_and_time_left():
    task = progress.Task("posters embedded", done=1200, total=5000, started_at=100.0)
    line = console.progress_line("embed", task, elapsed=40.0, now=130.0)
    assert line == "embed: 1,200/5,000 posters embedded (24%), 40.0/s, ~1m35s left, 40s elapsed"
    unknown = progress.Task("films searched", done=30, started_at=0.0)
    assert console.progress_line("neighbors", unknown, 3.0, 3.0) == (
        "neighbors: 30 films searched, 10.0/s, 3s elapsed")  # fmt: skip
    waiting = progress.Task("films fetched", total=300, started_at=1.0)
    assert console.progress_line("scrape", waiting, 2.0, 2.0) == (
        "scrape: 0/300 films fetched (0%), 2s elapsed")  # fmt: skip
    assert console.progress_line("index", None, 75.0, 75.0) == "index: 1m15s elapsed"


def test_progress_counts_the_latest_task():
    progress.reset()
    progress.add_total("films fetched", 3, now=1.0)
    progress.advance("films fetched", now=2.0)
    progress.set_total("posters embedded", 10, now=3.0)
    assert progress.current().name == "posters embedded"
    progress.advance("films fetched", now=4.0)
    task = progress.current()
    assert (task.name, task.done, task.total, task.started_at) == ("films fetched", 2, 3, 1.0)
    progress.reset()
    assert progress.current() is None


def test_progress_is_a_log_line_when_stderr_is_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger=console.PROGRESS_LOGGER)
    with console.progress("scrape", stream=io.StringIO(), interval=0.05):
        progress.advance("films fetched", 5)
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == console.PROGRESS_LOGGER]
    assert lines and all(line.startswith("scrape: 5 films fetched") for line in lines)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_updates_one_line_in_place_on_a_terminal():
    stream = _Terminal()
    with console.progress("embed", stream=stream, interval=0.05):
        progress.set_total("posters embedded", 8)
        progress.advance("posters embedded", 2)
        time.sleep(0.3)
        console.say("[nightly] embed: done", stream=stream)  # clears the line first
        time.sleep(0.3)  # drawn again below it
    text = stream.getvalue()
    assert "\rembed: 2/8 posters embedded (25%)" in text
    assert "\r\x1b[K[nightly] embed: done\n" in text
    assert "\n" not in text.replace("[nightly] embed: done\n", "")  # one line, redrawn
    assert text.endswith("\r\x1b[K")  # cleared when the stage ends
