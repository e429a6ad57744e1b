"""The cloud emulators, started once for the tests of this folder (skipped without the extra)."""

from __future__ import annotations

import pytest

from tests.cloud.emulators import missing_packages
from tests.cloud.emulators import start_emulators


@pytest.fixture(scope="session")
def cloud(tmp_path_factory):
    """Running Cloud Storage and BigQuery emulators and a metadata server, on 127.0.0.1."""
    missing = missing_packages()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: the emulators extra "
                    "(pip install -c constraints.txt -e '.[test,emulators]'; make test does)")
    with start_emulators(tmp_path_factory.mktemp("cloud")) as emulators:
        yield emulators
