"""make test's split of the suite between two xdist workers names files that exist."""

from __future__ import annotations

import re

from tests import scheduling
from tests.conftest import REPO_ROOT


def test_every_named_file_exists():
    named = {*scheduling.SAME_WORKER, *scheduling.SAME_WORKER.values(), *scheduling.LONGEST_FIRST}
    assert [path for path in sorted(named) if not (REPO_ROOT / path).is_file()] == []
    assert not set(scheduling.SAME_WORKER) & set(scheduling.LONGEST_FIRST)  # named by its unit


def test_files_that_share_a_fixture_are_one_unit():
    split = scheduling.SharedSetupScheduling._split_scope
    assert split(None, "tests/reporting/test_reports.py::test_x") == split(
        None, "tests/pipelines/test_similar.py::test_y[pixels]"
    )
    cloud = ("test_bigquery_warehouse.py", "test_cloud_errors.py", "test_nightly_on_gcp.py")
    assert len({split(None, f"tests/cloud/{name}::t") for name in cloud}) == 1
    assert split(None, "tests/pipelines/test_embed.py::t") == "tests/pipelines/test_embed.py"


def test_make_test_runs_the_scheduler():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^\t\$\(PY\) -m pytest -q -n 2 --dist loadfile$", makefile, re.M)
