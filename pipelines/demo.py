"""The built-in local demo: a synthetic catalog served by the synthetic poster web.

``start_synthetic_web`` writes a MovieLens-style ``links.csv`` for N synthetic films, starts the
fake TMDb/IMDb/image server on 127.0.0.1 with a few realistic faults, and points the scrape
options at it, so the whole stage runs with no internet and no cloud account;
``write_synthetic_history`` writes the same films' watch history for the nightly job.

This is the one product module that imports ``synthetic`` (see ARCHITECTURE.md): the stages
reach the synthetic web through it, for ``--synthetic_films``, and never otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

from synthetic.catalog import SyntheticCatalog
from synthetic.catalog import make_catalog
from synthetic.catalog import make_watch_history
from synthetic.catalog import write_links_csv
from synthetic.catalog import write_ratings_csv
from synthetic.web import FaultPlan
from synthetic.web import PosterWeb

DEMO_API_KEY = "synthetic-demo-key"
DEMO_FAULTS = FaultPlan(http_500=0.03, http_429=0.01, not_image=0.01, truncated=0.01, bomb=0.005)


@dataclasses.dataclass
class SyntheticWeb:
    """A running synthetic web and the catalog file that lists its films."""

    catalog: SyntheticCatalog
    web: PosterWeb
    catalog_path: str

    def apply_to(self, options) -> None:
        """Point scrape options (catalog, endpoints, key, allowlist, rate) at this web."""
        options.catalog = self.catalog_path
        options.tmdb_api_base = self.web.tmdb_api_base
        options.tmdb_image_base = self.web.tmdb_image_base
        options.imdb_base = self.web.imdb_base
        options.tmdb_api_key = DEMO_API_KEY
        options.allowed_hosts = self.web.host
        options.requests_per_second_per_host = max(options.requests_per_second_per_host, 500.0)
        options.backoff_base_s = min(options.backoff_base_s, 0.1)


@contextlib.contextmanager
def start_synthetic_web(
    n_films: int, seed: int = 0, workdir: str = "out/demo", faults: FaultPlan | None = DEMO_FAULTS
) -> Iterator[SyntheticWeb]:
    """Write the synthetic catalog under ``workdir`` and serve its posters while in the block."""
    if n_films < 1:
        raise ValueError("the synthetic catalog needs at least one film")
    if "://" in workdir:
        raise ValueError("the synthetic demo writes its catalog locally: give a local --output")
    catalog = make_catalog(n_films, seed=seed)
    folder = os.path.join(workdir, "synthetic_input")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"links-{n_films}-seed{seed}.csv")
    write_links_csv(path, catalog.films)
    with PosterWeb.from_catalog(catalog, api_key=DEMO_API_KEY, faults=faults) as web:
        yield SyntheticWeb(catalog=catalog, web=web, catalog_path=path)


def write_synthetic_history(films: int, seed: int, users: int, folder: str) -> str:
    """The synthetic catalog's watch history (MovieLens ratings CSV) under ``folder``."""
    path = os.path.join(folder, "synthetic_input", f"ratings-{films}-seed{seed}.csv")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_ratings_csv(path, make_watch_history(make_catalog(films, seed=seed), users, seed=seed))
    return path
