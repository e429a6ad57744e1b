"""Starts bqemulator (BigQuery's REST and Storage APIs on DuckDB) for the cloud tests.

``python -m tests.cloud.bq_server start --rest-port=N ...`` is ``bqemulator start`` less one
step: the emulator loads DuckDB's ``spatial`` extension at start for GEOGRAPHY columns, which
DuckDB downloads from its own site (not a package registry, and no build of it for DuckDB 2.0
is on PyPI). No table here has a GEOGRAPHY column, so the step is skipped.
"""

from __future__ import annotations

from bqemulator.cli import main
from bqemulator.storage import engine


def _no_spatial(self) -> None:
    """GEOGRAPHY support is not needed by these tests (and would need a download)."""


if __name__ == "__main__":
    engine.DuckDBEngine._load_spatial = _no_spatial
    main()
