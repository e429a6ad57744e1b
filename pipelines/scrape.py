"""Scrape stage: a catalog of films in, deduplicated poster TFRecords out.

Reads a catalog (MovieLens links.csv, TMDB-5000 movies CSV, Kaggle MovieGenre.csv or a plain
``movie_id,poster_url`` CSV; local or gs://), resolves and fetches each film's poster politely,
validates and normalises it, drops duplicates, and writes under ``--output``::

    posters/run-NNNN/posters-SSSSS-of-NNNNN.tfrecord   tf.train.Example (schemas.PosterRecord)
    posters/run-NNNN/films.json                        which films each shard holds (embed's check)
    dead_letter/run-NNNN/dead_letter-00000-of-00001.parquet
    duplicates/run-NNNN/duplicates-00000-of-00001.parquet
    manifests/run-NNNN.json (+ .parquet)              counts; rows = written + dups + dead + skipped

Run locally on the built-in synthetic poster web (no internet needed)::

    python -m pipelines.scrape --synthetic_films=300 --output=out/scrape
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import urllib.parse
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from fetching.http import DEFAULT_ALLOWED_HOSTS
from fetching.http import DEFAULT_USER_AGENT
from fetching.http import FetchPolicy
from imaging.image_match import DEFAULT_MIN_CONFIRMATION
from imaging.phash_index import DEFAULT_NEAR_DUPLICATE_THRESHOLD
from pipelines import checks
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import UsageError
from pipelines.common import is_local
from pipelines.common import log_counters
from pipelines.common import main
from pipelines.common import make_pipeline
from pipelines.common import recorded_options
from pipelines.demo import start_synthetic_web
from transforms.catalog import CatalogFormat
from transforms.fetch_worker import RESOLVERS
from transforms.fetch_worker import FetchSettings
from transforms.fetch_worker import ImageConfig
from transforms.fetch_worker import ResolveConfig
from transforms.manifest import OutputLayout
from transforms.manifest import WriteRunManifest
from transforms.manifest import read_manifest
from transforms.scrape import ScrapeConfig
from transforms.scrape import ScrapePosters

TMDB_KEY_ENV = "TMDB_API_KEY"
_LOG = logging.getLogger(__name__)


class ScrapeOptions(PipelineOptions):
    """Options of the scrape stage."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("scrape stage")
        group.add_argument("--catalog", help="Catalog file (local or gs://).")
        group.add_argument(
            "--catalog_format",
            choices=[f.value for f in CatalogFormat],
            default=None,
            help="Catalog format; detected from the header when omitted.",
        )
        group.add_argument(
            "--synthetic_films",
            type=int,
            default=0,
            help="Instead of --catalog, scrape N films from the built-in synthetic poster web "
            "(a local server on 127.0.0.1; no internet needed).",
        )
        group.add_argument(
            "--synthetic_seed", type=int, default=0, help="Seed of the synthetic web."
        )
        group.add_argument(
            "--resolver",
            choices=RESOLVERS,
            default="auto",
            help="Where poster URLs come from: the catalog's URL column, the TMDb API, IMDb title "
            "pages, or auto (URL column, else TMDb when a key is set, else IMDb).",
        )
        group.add_argument(
            "--tmdb_api_key",
            default=None,
            help=f"TMDb API v3 key (default: ${TMDB_KEY_ENV}); never logged or written.",
        )
        group.add_argument(
            "--tmdb_api_base", default="https://api.themoviedb.org/3", help="TMDb API v3 root."
        )
        group.add_argument(
            "--tmdb_image_base",
            default="https://image.tmdb.org/t/p/w500",
            help="TMDb image root including the size (w500).",
        )
        group.add_argument(
            "--imdb_base", default="https://www.imdb.com", help="IMDb site root for title pages."
        )
        group.add_argument(
            "--allowed_hosts",
            default=None,
            help="Comma-separated hosts that may be fetched, redirects included ('*.example.com' "
            f"allowed). Default: {','.join(DEFAULT_ALLOWED_HOSTS)} plus the hosts of the three "
            "base URLs above.",
        )
        group.add_argument(
            "--http_user_agent",
            default=DEFAULT_USER_AGENT,
            help="User-Agent sent with every request (say who you are).",
        )
        group.add_argument(
            "--requests_per_second_per_host",
            type=float,
            default=2.0,
            help="Per-host request rate of each worker process (polite default: 2).",
        )
        group.add_argument(
            "--fetch_concurrency",
            type=int,
            default=16,
            help="Concurrent fetches per worker process.",
        )
        group.add_argument(
            "--fetch_processes",
            type=int,
            default=None,
            help="Processes that fetch, validate and hash posters, each with --fetch_concurrency "
            "threads and its share of the per-host rate, while the Beam process dedupes and "
            "writes. Default: one per core when running locally, 0 on Dataflow (each core "
            "already runs its own SDK process; fetches run on the DoFn's threads).",
        )
        group.add_argument(
            "--max_attempts",
            type=int,
            default=4,
            help="HTTP attempts per URL (retries back off exponentially).",
        )
        group.add_argument(
            "--backoff_base_s",
            type=float,
            default=0.5,
            help="First retry delay; doubles per attempt, with jitter.",
        )
        group.add_argument(
            "--max_retry_after_s",
            type=float,
            default=120.0,
            help="Give up on a URL whose Retry-After asks for longer.",
        )
        group.add_argument("--connect_timeout_s", type=float, default=5.0, help="Connect timeout.")
        group.add_argument("--read_timeout_s", type=float, default=15.0, help="Read timeout.")
        group.add_argument(
            "--max_body_bytes",
            type=int,
            default=20 * 1024 * 1024,
            help="Larger responses are abandoned (body_too_large).",
        )
        group.add_argument(
            "--max_pixels",
            type=int,
            default=40_000_000,
            help="Reject images with more pixels (decompression bombs).",
        )
        group.add_argument(
            "--max_side",
            type=int,
            default=768,
            help="Longest side of the stored JPEG (downscaled, never upscaled).",
        )
        group.add_argument(
            "--min_side",
            type=int,
            default=32,
            help="Reject images with a shorter side (image_too_small).",
        )
        group.add_argument(
            "--jpeg_quality", type=int, default=90, help="Quality of re-encoded JPEGs."
        )
        group.add_argument(
            "--near_duplicate_threshold",
            type=int,
            default=DEFAULT_NEAR_DUPLICATE_THRESHOLD,
            help="Max Hamming distance of 64-bit perceptual hashes for a near-duplicate "
            "candidate pair (the first of two checks).",
        )
        group.add_argument(
            "--near_duplicate_min_confirmation",
            type=float,
            default=DEFAULT_MIN_CONFIRMATION,
            help="Second check: a candidate pair is merged only when the posters' aligned "
            "thumbnails correlate at least this much (0..1).",
        )


COMMAND = Command(
    "pipelines.scrape",
    ScrapeOptions,
    __doc__,
    required=("--catalog|--synthetic_films", "--output"),
    overrides={"--output": {"help": "The root the stage writes its tables under."}},
)


def _hosts_of(*urls: str) -> tuple[str, ...]:
    return tuple(urllib.parse.urlsplit(u).netloc for u in urls if u)


def fetch_policy(
    options: ScrapeOptions, secrets: tuple[str, ...] = (), pool_size: int | None = None
) -> FetchPolicy:
    """The fetch policy (allowlist, rate, retries, timeouts, agent) from the scrape flags."""
    bases = (options.tmdb_api_base, options.tmdb_image_base, options.imdb_base)
    if options.allowed_hosts:
        allowed = tuple(h.strip() for h in options.allowed_hosts.split(",") if h.strip())
    else:
        allowed = DEFAULT_ALLOWED_HOSTS + _hosts_of(*bases)
    return FetchPolicy(
        user_agent=options.http_user_agent,
        requests_per_second_per_host=options.requests_per_second_per_host,
        max_attempts=options.max_attempts,
        backoff_base_s=options.backoff_base_s,
        max_retry_after_s=options.max_retry_after_s,
        connect_timeout_s=options.connect_timeout_s,
        read_timeout_s=options.read_timeout_s,
        max_body_bytes=options.max_body_bytes,
        allowed_hosts=allowed,
        pool_size=pool_size or max(options.fetch_concurrency, 1),
        secrets=secrets,
    )


def fetch_processes(options: ScrapeOptions, local: bool) -> int:
    """--fetch_processes, or its default: one per core locally, none on a distributed runner."""
    if options.fetch_processes is None:
        return (os.cpu_count() or 1) if local else 0
    if options.fetch_processes < 0:
        raise ValueError(f"--fetch_processes must be >= 0, not {options.fetch_processes}")
    return options.fetch_processes


def check_options(options: ScrapeOptions, common: CommonOptions) -> None:
    """Fail before any work on a missing, empty or unknown --catalog, or an unwritable --output."""
    if not options.catalog and not options.synthetic_films:
        raise UsageError("--catalog is required (or --synthetic_films=N for the built-in demo)")
    checks.required({"--output": common.output}, "the root folder (local or gs://) to write to")
    if not options.synthetic_films:
        checks.catalog_file(options.catalog, options.catalog_format)
    checks.writable_output(common.output)


def build_config(
    options: ScrapeOptions, common: CommonOptions, local: bool = True
) -> ScrapeConfig:
    """The frozen config of a run, with clear errors for missing or bad options."""
    if not options.catalog:
        raise ValueError("--catalog is required (or --synthetic_films=N for the built-in demo)")
    if not common.output:
        raise ValueError("--output is required: the root folder (local or gs://) to write to")
    api_key = options.tmdb_api_key or os.environ.get(TMDB_KEY_ENV, "")
    policy = fetch_policy(options, secrets=(api_key,) if api_key else ())
    layout = OutputLayout.next_run(common.output)
    return ScrapeConfig(
        catalog=options.catalog,
        layout=layout,
        catalog_format=CatalogFormat(options.catalog_format) if options.catalog_format else None,
        fetch=FetchSettings(
            policy=policy,
            resolve=ResolveConfig(
                resolver=options.resolver,
                tmdb_api_base=options.tmdb_api_base,
                tmdb_image_base=options.tmdb_image_base,
                imdb_base=options.imdb_base,
                tmdb_api_key=api_key,
            ),
            image=ImageConfig(
                max_pixels=options.max_pixels,
                max_side=options.max_side,
                min_side=options.min_side,
                jpeg_quality=options.jpeg_quality,
            ),
            run_id=layout.run_id,
            concurrency=options.fetch_concurrency,
        ),
        near_duplicate_threshold=options.near_duplicate_threshold,
        min_confirmation=options.near_duplicate_min_confirmation,
        num_shards=common.num_shards,
        existing_runs=tuple(OutputLayout.completed_runs(common.output)),
        fetch_processes=fetch_processes(options, local),
    )


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the scrape stage; returns the run's manifest (as written)."""
    options = COMMAND.parse(argv)
    scrape_options = options.view_as(ScrapeOptions)
    common = options.view_as(CommonOptions)
    check_options(scrape_options, common)
    with contextlib.ExitStack() as stack:
        if scrape_options.synthetic_films:
            demo = stack.enter_context(
                start_synthetic_web(
                    scrape_options.synthetic_films,
                    seed=scrape_options.synthetic_seed,
                    workdir=common.output or "out/scrape",
                )
            )
            demo.apply_to(scrape_options)
        started_at = datetime.datetime.now(datetime.UTC)
        config = build_config(scrape_options, common, is_local(options))
        _LOG.info("scrape %s -> %s (%s)", config.catalog, config.layout.root, config.layout.run_id)
        pipeline = make_pipeline(options, test_pipeline)
        outputs = pipeline | "Scrape" >> ScrapePosters(config)
        _ = outputs.counts | "Manifest" >> WriteRunManifest(
            config.layout, "scrape", started_at, config.catalog, recorded_options(options)
        )
        if not options.view_as(TestOptions).dry_run:
            config.layout.discard_unpublished()  # a killed run's leftovers, before reusing its id
        # The key now lives in config (redacted from its repr) and the manifest has recorded the
        # options: a runner that lists the job's options (Dataflow's console) must not show it.
        scrape_options.tmdb_api_key = None
        result = pipeline.run()
        result.wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        return {}
    counters = log_counters(result, "scrape")
    manifest = read_manifest(config.layout.manifest_path)
    manifest["counters"] = counters
    _LOG.info("manifest %s: %s", config.layout.manifest_path, manifest["identity"])
    return manifest


if __name__ == "__main__":
    main(run)
