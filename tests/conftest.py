"""Shared pytest fixtures: the real shared data, found through one setting."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA_ENV = "POSTERS_SHARED_DATA"


def shared_data_dir() -> pathlib.Path:
    """The real-data folder: $POSTERS_SHARED_DATA, default ../shared/data beside the repo."""
    return pathlib.Path(os.environ.get(SHARED_DATA_ENV, REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the real shared data; skips the test with a reason when it is absent."""
    path = shared_data_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"real data not found at {path} (set {SHARED_DATA_ENV} to its folder)")
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``-n N --dist loadfile`` (make test): tests/scheduling.py's file-to-worker rules."""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.scheduling import SharedSetupScheduling  # pytest-xdist: only when it runs

    return SharedSetupScheduling(config, log)


def local_pipeline():
    """A TestPipeline on the in-process runner (never Prism, which downloads a binary)."""
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipelines.common import LocalRunner

    return TestPipeline(runner=LocalRunner(), blocking=True)
