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

import dataclasses
import datetime
import json
import logging
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from models.blend import Blend
from models.scoring import CandidateConfig
from models.vectors import read_vector_table
from models.vectors import shared_poster_groups
from models.vectors import vector_dim
from models.vectors import vectors_glob
from pipelines import checks
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import InputError
from pipelines.common import UsageError
from pipelines.common import json_text
from pipelines.common import log_counters
from pipelines.common import main
from pipelines.common import make_pipeline
from pipelines.common import one_line
from pipelines.embed import EmbedOptions
from pipelines.index import IndexOptions
from pipelines.index import resolve_version
from schemas import CandidateRow
from schemas import DeadLetter
from schemas import NeighborRow
from schemas import PosterRecord
from storage.files import parquet_encoder
from storage.files import read_tfrecord_records
from storage.history import HISTORY_STAGE
from storage.posters import posters_glob
from storage.shrink import DEFAULT_MAX_SHRINK
from storage.shrink import ShrinkGuard
from storage.shrink import ShrinkRefused
from transforms.candidates import BuildCandidates
from transforms.history import USER_BUCKETS
from transforms.history import GroupUsers
from transforms.history import ReadWatchHistory
from transforms.manifest import write_json_report
from transforms.neighbors import SIMILARITIES
from transforms.neighbors import FindNeighbors
from transforms.neighbors import MergeNeighbors
from transforms.neighbors import NeighborConfig
from transforms.neighbors import drop_shared_posters
from transforms.neighbors import neighbor_rows
from transforms.neighbors import read_lists
from transforms.sinks import WriteShards
from transforms.warehouse import WAREHOUSE_STAGE
from transforms.warehouse import Warehouse
from transforms.warehouse import WriteWarehouseShards
from transforms.warehouse import WriteWarehouseTable
from transforms.warehouse import clear_staging
from transforms.warehouse import clear_unpublished
from transforms.warehouse import publish_bigquery
from transforms.warehouse import publish_partitions

_LOG = logging.getLogger(__name__)
WATCH_HISTORY_HELP = (
    "The users' watch history: userId,movieId,rating,timestamp as CSV or Parquet (local or "
    "gs://), or bq://PROJECT.DATASET.TABLE."
)


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
            default=200,
            help="Neighbours kept per film for candidates (the table keeps 10); 200 was chosen "
            "with --ease_lambda on the validation split of the real history.",
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
            help=WATCH_HISTORY_HELP + " Without it only neighbours are built.",
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
        group.add_argument(
            "--max_shrink", type=float, default=DEFAULT_MAX_SHRINK,
            help="Refuse to publish a date whose candidate users or rows fall by more than "
            "this fraction below the latest published date's (or that has no candidates); "
            "nothing is replaced.",
        )  # fmt: skip
        group.add_argument(
            "--allow_shrink", action="store_true", default=False,
            help="Publish the date even when --max_shrink would refuse it.",
        )  # fmt: skip


COMMAND = Command(
    "pipelines.neighbors",
    NeighborsOptions,
    __doc__,
    reads=((IndexOptions, ("vectors", "model_version")), (EmbedOptions, ("posters",))),
    required=("--run_date", "--vectors", "--output"),
    hides=("--num_shards",),
    overrides={"--output": {"help": "Where the run report and dead letters go."}},
)


def read_vector_rows(path_glob: str):
    """(movie id, vector) rows of the vector files matching a glob."""
    table = read_vector_table(path_glob)
    for movie_id, vector in zip(table.ids.tolist(), table.vectors, strict=True):
        yield movie_id, np.asarray(vector, dtype=np.float32)


def film_genres(path_glob: str):
    """(movie id, genres) of the posters matching a glob."""
    for record in read_tfrecord_records(path_glob, PosterRecord):
        yield record.movie_id, frozenset(record.genres)


def load_blend(value: str):
    """The Blend of --blend: inline JSON, or a local / gs:// JSON file (a report holding one)."""
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
    poster = vector_dim(vectors_glob(root, version))
    cowatch = vector_dim(vectors_glob(root, cowatch_version))
    if poster != cowatch:
        _LOG.info("poster vectors (%d) are not in the co-watch space (%d): films search the "
                  "posters with their own poster", poster, cowatch)  # fmt: skip
    return poster == cowatch


@dataclasses.dataclass(frozen=True)
class NeighborsJob:
    """One run of the stage, from its checked flags: what to read, how to rank, where to write."""

    run_date: datetime.date
    warehouse: Warehouse
    warehouse_uri: str
    vectors_root: str
    version: str
    index_uri: str
    output: str
    posters: str | None
    cowatch_version: str | None
    blend: Blend | None
    watch_history: str | None
    neighbors_k: int
    candidates: CandidateConfig | None
    config: NeighborConfig
    guard: ShrinkGuard

    @property
    def run_id(self) -> str:
        """The run id of the warehouse rows and dead letters: one per run date."""
        return f"nightly-{self.run_date.isoformat()}"


def build_job(options: PipelineOptions) -> NeighborsJob:
    """The run's job, once every flag is checked (UsageError or InputError naming the flag)."""
    opts = options.view_as(NeighborsOptions)
    index_opts = options.view_as(IndexOptions)
    output = options.view_as(CommonOptions).output
    checks.required(
        {"--run_date": opts.run_date, "--vectors": index_opts.vectors, "--output": output},
        "the warehouse partition's date, the embed stage's --output root and a report folder",
    )
    run_date = checks.run_date(opts.run_date)
    if not 0.0 <= opts.max_shrink <= 1.0:
        raise UsageError(f"--max_shrink={opts.max_shrink}: give a fraction from 0 to 1")
    warehouse = checks.warehouse(
        opts.warehouse, output, remote=not options.view_as(TestOptions).dry_run
    )
    if opts.cowatch_version and not opts.blend:
        raise UsageError("--cowatch_version needs --blend (python -m pipelines.evaluate tunes it)")
    posters = options.view_as(EmbedOptions).posters
    if opts.same_genre and not posters:
        raise UsageError("--same_genre needs --posters (the scrape output root) for the genres")
    checks.watch_history(opts.watch_history)
    version = resolve_version(index_opts.vectors, index_opts.model_version)
    index_uri = opts.index or FileSystems.join(index_opts.vectors, version, "index")
    blend = _blend(opts.blend) if opts.blend else None
    checks.writable_output(output)
    shared_posters = shared_poster_groups(vectors_glob(index_opts.vectors, version))
    candidates = None
    if opts.watch_history:
        candidates = CandidateConfig(
            top_k=opts.candidates_k, half_life_days=opts.half_life_days,
            min_rating=opts.min_rating, model_version=version,
        )  # fmt: skip
        if blend is not None:
            candidates = blend.candidate_config(candidates)
    return NeighborsJob(
        run_date=run_date, warehouse=warehouse,
        warehouse_uri=opts.warehouse or f"duckdb://{warehouse.target}",
        vectors_root=index_opts.vectors, version=version, index_uri=index_uri, output=output,
        posters=posters, cowatch_version=opts.cowatch_version, blend=blend,
        watch_history=opts.watch_history, neighbors_k=opts.neighbors_k, candidates=candidates,
        guard=ShrinkGuard(opts.max_shrink, opts.allow_shrink),
        config=NeighborConfig(
            index_uri=index_uri, k=opts.neighbors_k,
            similarity="cosine" if opts.cowatch_version else opts.similarity,
            same_genre=opts.same_genre, shared_posters=shared_posters,
        ),
    )  # fmt: skip


def neighbour_lists(pipeline: beam.Pipeline, job: NeighborsJob) -> beam.PCollection:
    """Every film's neighbour list: from the poster index (films with a co-watch vector in the
    same space search with it), merged with the co-watch neighbours by the blend when given."""
    vectors = (
        pipeline
        | "VectorGlob" >> beam.Create([vectors_glob(job.vectors_root, job.version)])
        | "ReadVectors" >> beam.FlatMap(read_vector_rows)
    )
    genres = None
    if job.config.same_genre:
        genres = (
            pipeline
            | "PosterGlob" >> beam.Create([posters_glob(job.posters)])
            | "ReadGenres" >> beam.FlatMap(film_genres)
        )
    queries = vectors
    cowatch_version = job.cowatch_version
    if cowatch_version and _same_space(job.vectors_root, job.version, cowatch_version):
        cowatch_vectors = (
            pipeline
            | "CowatchVectorGlob"
            >> beam.Create([vectors_glob(job.vectors_root, cowatch_version)])
            | "ReadCowatchVectors" >> beam.FlatMap(read_vector_rows)
        )
        queries = (
            {"poster": vectors, "cowatch": cowatch_vectors}
            | "JoinQueries" >> beam.CoGroupByKey()
            | "AudienceQuery" >> beam.FlatMap(audience_query)
        )
    lists = queries | "FindNeighbors" >> FindNeighbors(job.config, genres)
    if not cowatch_version:
        return lists
    pattern = FileSystems.join(job.vectors_root, cowatch_version, "cowatch_neighbors", "*.parquet")
    cowatch = (
        pipeline
        | "CowatchGlob" >> beam.Create([pattern])
        | "ReadCowatch" >> beam.FlatMap(read_lists)
    )
    lists = (cowatch, lists) | "Hybrid" >> MergeNeighbors(
        job.blend.poster_weight, job.blend.similarity, job.neighbors_k
    )
    shared_posters = job.config.shared_posters
    if shared_posters:
        lists = lists | "DropSharedPosters" >> beam.Map(drop_shared_posters, shared_posters)
    return lists


def write_tables(pipeline: beam.Pipeline, lists: beam.PCollection, job: NeighborsJob) -> None:
    """The neighbours table, the candidates table (with a watch history) and every dead
    letter (refused rows, unreadable history rows) as one Parquet file under ``--output``."""
    run_date, run_id, warehouse = job.run_date, job.run_id, job.warehouse
    dead = [
        lists
        | "NeighborRows" >> beam.FlatMap(neighbor_rows, job.version, run_date)
        | "WriteNeighbors"
        >> WriteWarehouseTable(
            warehouse, NeighborRow, run_date, lambda r: (r.movie_id, r.rank), run_id=run_id
        )
    ]
    if job.watch_history:
        history = pipeline | "ReadWatchHistory" >> ReadWatchHistory(job.watch_history, run_id)
        users = history.batches | "GroupUsers" >> GroupUsers(USER_BUCKETS)
        tables = (users, lists) | "BuildCandidates" >> BuildCandidates(
            job.candidates, run_date, use_popularity=job.blend is not None
        )
        dead.append(tables | "WriteCandidates" >> WriteWarehouseShards(
            warehouse, CandidateRow, run_date, USER_BUCKETS, run_id=run_id
        ))  # fmt: skip
        dead.append(history.dead_letter)
    _ = dead | "AllDeadLetters" >> beam.Flatten() | "WriteDeadLetters" >> WriteShards(
        FileSystems.join(job.output, DeadLetter.TABLE, run_id, DeadLetter.TABLE), ".parquet", 1,
        parquet_encoder(DeadLetter), lambda d: (d.line_number or 0, d.input_row),
    )  # fmt: skip


def publish_and_report(result, job: NeighborsJob) -> dict:
    """After the pipeline: the run's counters, the DuckDB date published, the report written."""
    blend = job.blend
    report = {
        "run_date": job.run_date.isoformat(),
        "model_version": job.version,
        "cowatch_version": job.cowatch_version,
        "blend": None if blend is None else json.loads(blend.to_json()),
        "index": job.index_uri,
        "warehouse": job.warehouse_uri,
        "neighbors": log_counters(result, "neighbors"),
        "candidates": log_counters(result, "candidates"),
        "watch_history": log_counters(result, HISTORY_STAGE),
        "warehouse_refused": log_counters(result, WAREHOUSE_STAGE),
    }
    tables = (NeighborRow, CandidateRow) if job.watch_history else (NeighborRow,)
    publish = publish_partitions if job.warehouse.kind == "duckdb" else publish_bigquery
    try:
        report["rows_loaded"] = publish(job.warehouse, tables, job.run_date, job.guard)
    except ShrinkRefused as exc:
        raise InputError(str(exc)) from None
    name = f"nightly-{job.run_date.isoformat()}"
    report["report_path"] = write_json_report(job.output, name, report)
    return report


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Build the neighbour (and candidate) tables for one run date; returns the run report."""
    options = COMMAND.parse(argv)
    job = build_job(options)
    if job.warehouse.kind == "duckdb":
        clear_unpublished(job.warehouse)  # what a publish killed before or after its swap left
    for table in (NeighborRow, CandidateRow):
        clear_staging(job.warehouse, table, job.run_date)
    pipeline = make_pipeline(options, test_pipeline)
    write_tables(pipeline, neighbour_lists(pipeline, job), job)
    result = pipeline.run()
    result.wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        return {}
    return publish_and_report(result, job)


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


if __name__ == "__main__":
    main(run, show=json_text)
