"""Co-watch stage: watch history in, co-watch film vectors and co-watch neighbours out.

A Beam pipeline reads the history (``--watch_history``: CSV, Parquet, local or gs://, or
``bq://PROJECT.DATASET.TABLE``), sends unreadable rows to the dead-letter table and writes the
valid events as a Parquet snapshot; then, where this command runs (as the index stage does), the
snapshot becomes film vectors (PPMI of co-watch counts + truncated SVD) and each film's top
``--neighbors_k`` co-watch neighbours (cosine of co-watch counts, each user weighted by
``--cowatch_user_weighting``), see :mod:`models.cowatch`.
The version is ``cowatch-`` + a digest of the snapshot and the settings, so a new history gives a
new version and the same history the same one. Under ``--output`` (an embed-style vectors root,
so the index stage can index the vectors too)::

    {version}/embeddings/run-0001/embeddings-00000-of-00001.parquet   schemas.EmbeddingRow
    {version}/cowatch_neighbors/cowatch_neighbors-00000-of-00001.parquet   schemas.NeighborRow
    {version}/cowatch.json                                           settings and counts
    {version}/manifests/run-0001.json          the same, written last: publishes the version
    _cowatch_runs/{history,dead_letter}/run-NNNN/, manifests/         snapshot, bad rows, runs

With ``--holdout_fraction`` the cold-start protocol's hidden films (:mod:`models.cold_start`)
lose every watch before anything is computed, for a model that is evaluated on them.

    python -m pipelines.cowatch --watch_history=ratings.csv --output=out/vectors
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import logging
from collections.abc import Mapping
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from models import cowatch
from models.cold_start import Holdout
from models.scoring import SOURCE_COWATCH
from pipelines import checks
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import InputError
from pipelines.common import json_text
from pipelines.common import log_counters
from pipelines.common import main
from pipelines.common import make_pipeline
from pipelines.neighbors import WATCH_HISTORY_HELP
from pipelines.neighbors import NeighborsOptions
from schemas import DeadLetter
from schemas import EmbeddingRow
from schemas import NeighborRow
from schemas import WatchEvent
from storage.files import parquet_encoder
from storage.files import read_parquet_records
from storage.files import shard_path
from storage.files import write_bytes
from storage.history import HISTORY_STAGE
from transforms.candidates import ReadWatchHistory
from transforms.manifest import OutputLayout
from transforms.sinks import WriteShards

NEIGHBORS_TABLE = "cowatch_neighbors"
HISTORY_TABLE = "history"
REPORT_FILE = "cowatch.json"
RUNS_FOLDER = "_cowatch_runs"
_LOG = logging.getLogger(__name__)


class CowatchOptions(PipelineOptions):
    """Options of the co-watch stage (it also reads --watch_history and --neighbors_k)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("co-watch stage")
        group.add_argument("--cowatch_dim", type=int, default=64, help="Length of the vectors.")
        group.add_argument(
            "--cowatch_min_watches",
            type=int,
            default=2,
            help="Films watched by fewer users get no co-watch vector or neighbours.",
        )
        group.add_argument(
            "--cowatch_user_weighting",
            choices=cowatch.USER_WEIGHTINGS,
            default=cowatch.CowatchConfig.user_weighting,
            help="How much each user counts in the co-watch neighbours: inverse (1 / films the "
            "user watched: chosen on the validation split of the real history), log "
            "(1 / log2(1 + films watched)) or none (every watcher counts 1: the co-watch kNN "
            "baseline).",
        )
        group.add_argument(
            "--holdout_fraction",
            type=float,
            default=0.0,
            help="Cold-start protocol: hide every watch of this fraction of films (seeded).",
        )
        group.add_argument(
            "--holdout_seed", type=int, default=0, help="Seed of the cold-start hidden films."
        )


COMMAND = Command(
    "pipelines.cowatch",
    CowatchOptions,
    __doc__,
    reads=((NeighborsOptions, ("watch_history", "neighbors_k")),),
    required=("--watch_history", "--output"),
    hides=("--num_shards",),
    overrides={
        "--output": {"help": "The vectors root (as the embed stage's): a folder per version."},
        "--neighbors_k": {"help": "Co-watch neighbours kept per film."},
        "--watch_history": {"help": WATCH_HISTORY_HELP},
    },
)


def holdout_of(options: PipelineOptions) -> Holdout:
    """The cold-start hold-out of parsed options."""
    opts = options.view_as(CowatchOptions)
    return Holdout(fraction=opts.holdout_fraction, seed=opts.holdout_seed)


def user_weighting_of(root: str, version: str) -> str:
    """The ``--cowatch_user_weighting`` a co-watch version's neighbours were computed with, from
    its report (versions written before the setting existed weighted every user 1: ``none``)."""
    path = FileSystems.join(root, version, REPORT_FILE)
    if not FileSystems.exists(path):
        raise InputError(
            f"--cowatch_version={version}: no {REPORT_FILE} under {root} — give a version the "
            "co-watch stage (python -m pipelines.cowatch) published there"
        )
    with FileSystems.open(path) as handle:
        report = json.loads(handle.read())
    return report.get("config", {}).get("user_weighting", "none")


def snapshot_history(options: PipelineOptions, uri: str, layout: OutputLayout, test_pipeline=None):
    """Read the history with Beam; write the valid events (Parquet) and the dead letters;
    returns the finished run (its ``watch_history`` counters count the rows)."""
    pipeline = make_pipeline(options, test_pipeline)
    history = pipeline | "ReadWatchHistory" >> ReadWatchHistory(uri, layout.run_id)
    _ = history.events | "WriteSnapshot" >> WriteShards(
        layout.table_prefix(HISTORY_TABLE), ".parquet", 1, parquet_encoder(WatchEvent),
        lambda e: (e.user_id, e.watched_at, e.movie_id),
    )  # fmt: skip
    _ = history.dead_letter | "WriteDeadLetters" >> WriteShards(
        layout.table_prefix(DeadLetter.TABLE), ".parquet", 1, parquet_encoder(DeadLetter),
        lambda d: (d.line_number or 0, d.input_row),
    )  # fmt: skip
    result = pipeline.run()
    result.wait_until_finish()
    return result


def vector_rows(ids, vectors, version: str, digest: str, when: datetime.datetime):
    """The co-watch vectors as EmbeddingRow records."""
    for movie_id, vector in zip(ids.tolist(), vectors, strict=True):
        yield EmbeddingRow(
            movie_id=int(movie_id), dim=int(vectors.shape[1]), model_name=cowatch.MODEL_NAME,
            model_version=version, content_sha256=digest, poster_of=int(movie_id), embedded_at=when,
            embedding=tuple(float(v) for v in vector),
        )  # fmt: skip


def neighbor_table_rows(lists, version: str, as_of: datetime.date):
    """The co-watch neighbour lists as NeighborRow records (run_date: the snapshot's last day)."""
    for movie_id in sorted(lists):
        for rank, (nid, score) in enumerate(lists[movie_id], start=1):
            yield NeighborRow(
                movie_id=movie_id, rank=rank, neighbor_id=nid, score=score,
                source=SOURCE_COWATCH, model_version=version, run_date=as_of,
            )  # fmt: skip


def compute_and_write(
    events: list[WatchEvent], root: str, config: cowatch.CowatchConfig, holdout: Holdout
) -> dict:
    """Vectors, neighbours and the report of a history snapshot under ``root``/{version}."""
    hidden = holdout.hidden({e.movie_id for e in events})
    visible = [e for e in events if e.movie_id not in hidden]
    if not visible:
        raise InputError(
            "the watch history has no events left to learn co-watch vectors from — check "
            "--watch_history (its dead letters say why rows were refused) and --holdout_fraction"
        )
    digest = cowatch.history_digest(visible, config, holdout.describe())
    version = f"{cowatch.MODEL_NAME}-{digest}"
    matrix = cowatch.history_matrix(visible)
    ids, vectors = cowatch.cowatch_vectors(matrix, config)
    lists = cowatch.cowatch_neighbors(
        matrix, config.neighbors_k, config.min_watches, config.user_weighting
    )
    latest = max(e.watched_at for e in visible)
    folder = FileSystems.join(root, version)
    published = OutputLayout(folder, "run-0001")  # one run per version, published last
    if FileSystems.exists(published.manifest_path):
        FileSystems.delete([published.manifest_path])
    prefix = published.table_prefix(EmbeddingRow.TABLE)
    rows = vector_rows(ids, vectors, version, digest, latest)
    encode = parquet_encoder(EmbeddingRow, config.dim)
    write_bytes(shard_path(prefix, 0, 1, ".parquet"), encode(rows))
    write_bytes(
        shard_path(FileSystems.join(folder, NEIGHBORS_TABLE, NEIGHBORS_TABLE), 0, 1, ".parquet"),
        parquet_encoder(NeighborRow)(neighbor_table_rows(lists, version, latest.date())),
    )
    report = {
        "model_version": version,
        "history_digest": digest,
        "events": len(events),
        "events_used": len(visible),
        "users": int(len(matrix.users)),
        "films_in_history": int(len(matrix.films)),
        "films_with_vector": int(len(ids)),
        "films_with_neighbors": sum(1 for v in lists.values() if v),
        "hidden_films": sorted(hidden),
        "holdout": holdout.describe(),
        "config": dataclasses.asdict(config),
        "as_of": latest.isoformat(),
    }  # fmt: skip
    write_bytes(FileSystems.join(folder, REPORT_FILE), json.dumps(report, indent=2).encode())
    write_bytes(published.manifest_path, json.dumps(report, indent=2).encode())
    return report


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the co-watch stage; returns its report (with ``model_version``)."""
    options = COMMAND.parse(argv)
    root = options.view_as(CommonOptions).output
    uri = options.view_as(NeighborsOptions).watch_history
    checks.required(
        {"--watch_history": uri, "--output": root},
        "the users' watch history and the vectors root to write co-watch vectors to",
    )
    checks.watch_history(uri)
    checks.writable_output(root)
    opts = options.view_as(CowatchOptions)
    config = cowatch.CowatchConfig(
        dim=opts.cowatch_dim, min_watches=opts.cowatch_min_watches,
        neighbors_k=options.view_as(NeighborsOptions).neighbors_k,
        user_weighting=opts.cowatch_user_weighting,
    )  # fmt: skip
    holdout = holdout_of(options)
    layout = OutputLayout.next_run(FileSystems.join(root, RUNS_FOLDER))
    if not options.view_as(TestOptions).dry_run:
        layout.discard_unpublished()  # what a killed run left, before its run number is reused
    result = snapshot_history(options, uri, layout, test_pipeline)
    if options.view_as(TestOptions).dry_run:
        return {}
    own = {"include_unpublished": True}  # this run's snapshot: published when the run ends
    events = read_parquet_records(layout.table_glob(HISTORY_TABLE, ".parquet"), WatchEvent, **own)
    dead = read_parquet_records(layout.table_glob(DeadLetter.TABLE, ".parquet"), DeadLetter, **own)
    report = compute_and_write(events, root, config, holdout)
    rows_read = log_counters(result, HISTORY_STAGE).get("rows_read", 0)
    report.update(
        run_id=layout.run_id, watch_history=uri, input_rows=rows_read, dead_lettered=len(dead),
        dead_letter_reasons=dict(collections.Counter(f"{d.stage}/{d.reason}" for d in dead)),
        accounting_ok=rows_read == len(events) + len(dead),
    )  # fmt: skip
    if dead:
        _LOG.warning("%d watch-history rows could not be read: %s", len(dead),
                     layout.table_glob(DeadLetter.TABLE, ".parquet"))  # fmt: skip
    _LOG.info(
        "co-watch %s: %d films with vectors from %d events of %d users",
        report["model_version"], report["films_with_vector"], report["events_used"],
        report["users"],
    )  # fmt: skip
    public = {k: v for k, v in report.items() if k != "hidden_films"}
    write_bytes(layout.manifest_path, json.dumps(public, indent=2, sort_keys=True).encode())
    return report


def report_text(report: Mapping) -> str:
    """The report as JSON, less the hidden films (one id per line would drown it)."""
    return json_text({k: v for k, v in report.items() if k != "hidden_films"})


if __name__ == "__main__":
    main(run, show=report_text, label="co-watch")
