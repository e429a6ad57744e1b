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

# The longest units, longest first (seconds each on a 2-core machine, run alone); the rest
# follow in xdist's order.
LONGEST_FIRST = (
    "tests/cloud/test_nightly_on_gcp.py",  # 140, with the other tests/cloud files
    "tests/pipelines/test_scrape.py",  # 100
    "tests/pipelines/test_bad_input.py",  # 85
    "tests/pipelines/test_embed.py",  # 80
    "tests/pipelines/test_neighbors_real.py",  # 65 (1,000 real posters; the evaluation's solves)
    "tests/pipelines/test_nightly.py",  # 65
    "tests/pipelines/test_killed_runs.py",  # 50
    "tests/pipelines/test_neighbors.py",  # 45
    "tests/models/test_training.py",  # 40
    "tests/pipelines/test_train.py",  # 40
    "tests/pipelines/test_console.py",  # 30
    "tests/pipelines/test_secrets.py",  # 30
    "tests/models/test_registry.py",  # 25
    "tests/pipelines/test_similar.py",  # 20, with tests/reporting/test_reports.py
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
