"""Nightly neighbours and candidates: a ScaNN index and watch history in, warehouse tables out.

For one ``--run_date``: every film with a vector gets its nearest neighbours from the index
(loaded once per worker), the top 10 go to the ``neighbors`` table; with ``--watch_history``
the neighbour lists (``--neighbors_k`` deep) are joined to the users' watch history to rank each
user's top ``--candidates_k`` films into the ``candidates`` table. Both tables go to
``--warehouse`` (``duckdb:///path/file.duckdb`` locally, ``bq://project.dataset`` on GCP), and
rerunning a date replaces that date's rows. A JSON report of the run goes under ``--output``.

    python -m pipelines.neighbors --run_date=2024-05-17 --vectors=out/vectors \\
        --watch_history=ratings.csv --warehouse=duckdb:///out/warehouse.duckdb --output=out/nightly
"""

from __future__ import annotations

import json
import logging

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from models.scoring import CandidateConfig
from pipelines import checks
from pipelines.common import CommonOptions
from pipelines.common import InputError
from pipelines.common import UsageError
from pipelines.common import cli
from pipelines.common import configure_logging
from pipelines.common import log_counters
from pipelines.common import make_pipeline
from pipelines.common import one_line
from pipelines.common import parse_options
from pipelines.embed import EmbedOptions
from pipelines.embed import posters_glob
from pipelines.index import IndexOptions
from pipelines.index import resolve_version
from schemas import CandidateRow
from schemas import DeadLetter
from schemas import NeighborRow
from schemas import PosterRecord
from transforms.candidates import HISTORY_STAGE
from transforms.candidates import BuildCandidates
from transforms.candidates import ReadWatchHistory
from transforms.manifest import write_json_report
from transforms.neighbors import SIMILARITIES
from transforms.neighbors import FindNeighbors
from transforms.neighbors import MergeNeighbors
from transforms.neighbors import NeighborConfig
from transforms.neighbors import drop_shared_posters
from transforms.neighbors import neighbor_rows
from transforms.neighbors import read_lists
from transforms.sinks import WriteShards
from transforms.sinks import parquet_encoder
from transforms.sinks import read_tfrecord_records
from transforms.warehouse import WAREHOUSE_STAGE
from transforms.warehouse import Warehouse
from transforms.warehouse import WriteWarehouseTable
from transforms.warehouse import clear_staging
from transforms.warehouse import finish_publishing
from transforms.warehouse import publish_partitions

_LOG = logging.getLogger(__name__)


class NeighborsOptions(PipelineOptions):
    """Options of the nightly neighbours and candidates job."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("neighbours and candidates")
        group.add_argument("--run_date", help="Run date, YYYY-MM-DD (the warehouse partition).")
        group.add_argument(
            "--index", default=None, help="Index folder (default {vectors}/{model_version}/index)."
        )
        group.add_argument(
            "--neighbors_k",
            type=int,
            default=100,
            help="Neighbours kept per film for candidates (the table keeps 10).",
        )
        group.add_argument(
            "--similarity",
            choices=SIMILARITIES,
            default="cosine",
            help="cosine (= dot on unit vectors) or l2 (score = -distance).",
        )
        group.add_argument(
            "--same_genre",
            action="store_true",
            help="Only films sharing a genre are neighbours (needs --posters).",
        )
        group.add_argument(
            "--watch_history",
            default=None,
            help="userId,movieId,rating,timestamp as CSV or Parquet (local or gs://), or "
            "bq://PROJECT.DATASET.TABLE. Without it only neighbours are built.",
        )
        group.add_argument(
            "--candidates_k", type=int, default=100, help="Candidates kept per user."
        )
        group.add_argument(
            "--half_life_days",
            type=float,
            default=365.0,
            help="Recency decay: a watch this old counts half.",
        )
        group.add_argument(
            "--min_rating",
            type=float,
            default=0.0,
            help="Watches rated below this do not attract candidates.",
        )
        group.add_argument(
            "--cowatch_version",
            default=None,
            help="A co-watch version under --vectors (python -m pipelines.cowatch): neighbours "
            "become hybrid (co-watch + poster, each row's source recorded) and candidates blend "
            "in popularity. Needs --blend.",
        )
        group.add_argument(
            "--blend",
            default=None,
            help="The blend chosen offline: a JSON file (python -m pipelines.evaluate writes "
            "it into its report) or inline JSON {poster_weight, popularity_weight, "
            "recency_events, similarity}.",
        )
        group.add_argument("--warehouse", default=None,
                           help="duckdb:///path/file.duckdb (default {output}/warehouse.duckdb) "
                           "or bq://PROJECT.DATASET.")  # fmt: skip


def read_vector_rows(path_glob: str):
    """(movie id, vector) rows of the vector files matching a glob."""
    from models.vectors import read_vector_table

    table = read_vector_table(path_glob)
    for movie_id, vector in zip(table.ids.tolist(), table.vectors, strict=True):
        yield movie_id, np.asarray(vector, dtype=np.float32)


def film_genres(path_glob: str):
    """(movie id, genres) of the posters matching a glob."""
    for record in read_tfrecord_records(path_glob, PosterRecord):
        yield record.movie_id, frozenset(record.genres)


def load_blend(value: str):
    """The Blend of --blend: inline JSON, or a local / gs:// JSON file (a report holding one)."""
    from models.blend import Blend

    text = value
    if not value.lstrip().startswith("{"):
        with FileSystems.open(value) as handle:
            text = handle.read().decode("utf-8")
    return Blend.from_json(text)


def audience_query(joined: tuple[int, dict]):
    """The vector a film searches the poster index with: its co-watch vector when it has one
    (the posters predicted to have its audience), else its own poster vector."""
    movie_id, groups = joined
    posters, cowatch = list(groups["poster"]), list(groups["cowatch"])
    if posters:
        yield movie_id, cowatch[0] if cowatch else posters[0]


def _same_space(root: str, version: str, cowatch_version: str) -> bool:
    """Whether the poster model embeds into the co-watch space (same length: an audience model)."""
    from models.vectors import vector_dim
    from models.vectors import vectors_glob

    poster = vector_dim(vectors_glob(root, version))
    cowatch = vector_dim(vectors_glob(root, cowatch_version))
    if poster != cowatch:
        _LOG.info("poster vectors (%d) are not in the co-watch space (%d): films search the "
                  "posters with their own poster", poster, cowatch)  # fmt: skip
    return poster == cowatch


def run(argv=None, test_pipeline=None) -> dict:
    """Build the neighbour (and candidate) tables for one run date; returns the run report."""
    from models.vectors import shared_poster_groups
    from models.vectors import vectors_glob

    options = parse_options(argv, NeighborsOptions, __doc__.splitlines()[0])
    opts = options.view_as(NeighborsOptions)
    index_opts = options.view_as(IndexOptions)
    output = options.view_as(CommonOptions).output
    checks.required(
        {"--run_date": opts.run_date, "--vectors": index_opts.vectors, "--output": output},
        "the warehouse partition's date, the embed stage's --output root and a report folder",
    )
    run_date = checks.run_date(opts.run_date)
    try:
        warehouse = Warehouse.parse(
            opts.warehouse or "duckdb://" + FileSystems.join(output, "warehouse.duckdb")
        )
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    if opts.cowatch_version and not opts.blend:
        raise UsageError("--cowatch_version needs --blend (python -m pipelines.evaluate tunes it)")
    if opts.same_genre and not options.view_as(EmbedOptions).posters:
        raise UsageError("--same_genre needs --posters (the scrape output root) for the genres")
    checks.watch_history(opts.watch_history)
    version = resolve_version(index_opts.vectors, index_opts.model_version)
    index_uri = opts.index or FileSystems.join(index_opts.vectors, version, "index")
    blend = _blend(opts.blend) if opts.blend else None
    checks.writable_output(output)
    shared_posters = shared_poster_groups(vectors_glob(index_opts.vectors, version))
    config = NeighborConfig(
        index_uri=index_uri, k=opts.neighbors_k,
        similarity="cosine" if opts.cowatch_version else opts.similarity,
        same_genre=opts.same_genre, shared_posters=shared_posters,
    )  # fmt: skip
    posters = options.view_as(EmbedOptions).posters
    if warehouse.kind == "duckdb":
        finish_publishing(warehouse)  # a publish a killed job committed but did not swap in
        for table in (NeighborRow, CandidateRow):
            clear_staging(warehouse, table, run_date)

    pipeline = make_pipeline(options, test_pipeline)
    vectors = (
        pipeline
        | "VectorGlob" >> beam.Create([vectors_glob(index_opts.vectors, version)])
        | "ReadVectors" >> beam.FlatMap(read_vector_rows)
    )
    genres = None
    if opts.same_genre:
        genres = (
            pipeline
            | "PosterGlob" >> beam.Create([posters_glob(posters)])
            | "ReadGenres" >> beam.FlatMap(film_genres)
        )
    queries = vectors
    if opts.cowatch_version and _same_space(index_opts.vectors, version, opts.cowatch_version):
        cowatch_vectors = (
            pipeline
            | "CowatchVectorGlob"
            >> beam.Create([vectors_glob(index_opts.vectors, opts.cowatch_version)])
            | "ReadCowatchVectors" >> beam.FlatMap(read_vector_rows)
        )
        queries = (
            {"poster": vectors, "cowatch": cowatch_vectors}
            | "JoinQueries" >> beam.CoGroupByKey()
            | "AudienceQuery" >> beam.FlatMap(audience_query)
        )
    lists = queries | "FindNeighbors" >> FindNeighbors(config, genres)
    if opts.cowatch_version:
        pattern = FileSystems.join(index_opts.vectors, opts.cowatch_version, "cowatch_neighbors",
                                   "*.parquet")  # fmt: skip
        cowatch = (
            pipeline
            | "CowatchGlob" >> beam.Create([pattern])
            | "ReadCowatch" >> beam.FlatMap(read_lists)
        )
        lists = (cowatch, lists) | "Hybrid" >> MergeNeighbors(
            blend.poster_weight, blend.similarity, opts.neighbors_k
        )
        if shared_posters:
            lists = lists | "DropSharedPosters" >> beam.Map(drop_shared_posters, shared_posters)
    run_id = f"nightly-{run_date.isoformat()}"
    dead = [
        lists
        | "NeighborRows" >> beam.FlatMap(neighbor_rows, version, run_date)
        | "WriteNeighbors"
        >> WriteWarehouseTable(
            warehouse, NeighborRow, run_date, lambda r: (r.movie_id, r.rank), run_id=run_id
        )
    ]
    if opts.watch_history:
        history = pipeline | "ReadWatchHistory" >> ReadWatchHistory(opts.watch_history, run_id)
        candidate_config = CandidateConfig(
            top_k=opts.candidates_k, half_life_days=opts.half_life_days,
            min_rating=opts.min_rating, model_version=version,
        )  # fmt: skip
        if blend is not None:
            candidate_config = blend.candidate_config(candidate_config)
        rows, _ = (history.events, lists) | "BuildCandidates" >> BuildCandidates(
            candidate_config, run_date, use_popularity=blend is not None
        )
        dead.append(rows | "WriteCandidates" >> WriteWarehouseTable(
            warehouse, CandidateRow, run_date, lambda r: (r.user_id, r.rank), run_id=run_id
        ))  # fmt: skip
        dead.append(history.dead_letter)
    _ = dead | "AllDeadLetters" >> beam.Flatten() | "WriteDeadLetters" >> WriteShards(
        FileSystems.join(output, DeadLetter.TABLE, run_id, DeadLetter.TABLE), ".parquet", 1,
        parquet_encoder(DeadLetter), lambda d: (d.line_number or 0, d.input_row),
    )  # fmt: skip

    result = pipeline.run()
    result.wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        return {}
    report = {
        "run_date": run_date.isoformat(),
        "model_version": version,
        "cowatch_version": opts.cowatch_version,
        "blend": None if blend is None else json.loads(blend.to_json()),
        "index": index_uri,
        "warehouse": opts.warehouse or f"duckdb://{warehouse.target}",
        "neighbors": log_counters(result, "neighbors"),
        "candidates": log_counters(result, "candidates"),
        "watch_history": log_counters(result, HISTORY_STAGE),
        "warehouse_refused": log_counters(result, WAREHOUSE_STAGE),
    }
    if warehouse.kind == "duckdb":
        tables = (NeighborRow, CandidateRow) if opts.watch_history else (NeighborRow,)
        report["rows_loaded"] = publish_partitions(warehouse, tables, run_date)
    report["report_path"] = write_json_report(output, f"nightly-{run_date.isoformat()}", report)
    return report


def _blend(value: str):
    """The --blend, or a UsageError / InputError that names it."""
    if not value.lstrip().startswith("{"):
        checks.existing_file(value, "--blend", "give the report python -m pipelines.evaluate "
                             "wrote, or inline JSON")  # fmt: skip
    try:
        return load_blend(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--blend={value} holds no blend ({one_line(exc)[:200]}) — give the "
                         "report python -m pipelines.evaluate wrote, or inline JSON") from None


def main() -> None:
    """Command-line entry: INFO logging, build the tables, print the run report."""
    configure_logging()
    summary = run()
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    cli(main)
