"""Shared fixtures: one synthetic catalog, its posters and their perceptual hashes."""

from __future__ import annotations

import numpy as np
import pytest

from synthetic import posters
from synthetic.catalog import SyntheticCatalog
from synthetic.catalog import make_catalog

N_FILMS = 400


@pytest.fixture(scope="session")
def catalog() -> SyntheticCatalog:
    """A 400-film catalog (seed 0) with the default planted duplicates."""
    return make_catalog(N_FILMS, seed=0)


@pytest.fixture(scope="session")
def hashes(catalog: SyntheticCatalog) -> np.ndarray:
    """phash64 of every poster in catalog order, as uint64."""
    return np.array(
        [posters.phash64_bytes(catalog.poster_bytes(f.movie_id)) for f in catalog.films],
        dtype=np.uint64,
    )


@pytest.fixture(scope="session")
def small_catalog() -> SyntheticCatalog:
    """A 60-film catalog (seed 1) for the web server tests."""
    return make_catalog(60, seed=1)
