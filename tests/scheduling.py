"""How ``pytest -n 2 --dist loadfile`` (make test) shares the test files between its workers.

As xdist's ``loadfile``, a test file runs whole on one worker, so its module fixtures are built
once. Two changes: files that share a per-process cache or a session fixture run on one worker
(so it is built once, not once a worker), and the longest files start first, so that the two
workers finish together instead of one waiting for the other's last long file.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

# file -> the file whose worker it runs on: what they share is built once.
SAME_WORKER = {
    # build_world() caches the synthetic world (scrape, embed, index, nightly) per process.
    "tests/reporting/test_reports.py": "tests/pipelines/test_similar.py",
    # The `cloud` session fixture: one set of emulators.
    "tests/cloud/test_bigquery_warehouse.py": "tests/cloud/test_nightly_on_gcp.py",
    "tests/cloud/test_cloud_errors.py": "tests/cloud/test_nightly_on_gcp.py",
}

# The longest units, longest first (seconds each on a 2-core machine, from `--durations=0` of
# make test on a fresh clone, 2026-12-07); the rest follow in xdist's order.
LONGEST_FIRST = (
    "tests/pipelines/test_scrape.py",  # 135
    "tests/cloud/test_nightly_on_gcp.py",  # 125, with the other tests/cloud files
    "tests/pipelines/test_killed_runs.py",  # 100
    "tests/pipelines/test_embed.py",  # 85
    "tests/pipelines/test_train.py",  # 85
    "tests/pipelines/test_bad_input.py",  # 70
    "tests/pipelines/test_secrets.py",  # 50
    "tests/models/test_training.py",  # 47
    "tests/pipelines/test_nightly.py",  # 46
    "tests/models/test_registry.py",  # 45
    "tests/pipelines/test_neighbors.py",  # 42
    "tests/pipelines/test_console.py",  # 38
    "tests/pipelines/test_similar.py",  # 36, with tests/reporting/test_reports.py
    "tests/pipelines/test_neighbors_real.py",  # 25
)


class SharedSetupScheduling(LoadScopeScheduling):
    """xdist's ``loadfile``, with SAME_WORKER's files together and LONGEST_FIRST first."""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        return SAME_WORKER.get(path, path)

    def _assign_work_unit(self, node) -> None:
        longest = next((unit for unit in LONGEST_FIRST if unit in self.workqueue), None)
        if longest is not None:
            self.workqueue.move_to_end(longest, last=False)
        super()._assign_work_unit(node)
