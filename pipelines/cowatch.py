"""Co-watch stage: watch history in, co-watch film vectors and co-watch neighbours out.

A Beam pipeline reads the history (``--watch_history``: CSV, Parquet, local or gs://, or
``bq://PROJECT.DATASET.TABLE``) in splittable pieces, sends unreadable rows to the dead-letter
table, groups the events by user bucket and accumulates every film's watchers and the Gram
(co-watch counts) of the ``--cowatch_max_films`` most watched films (:mod:`transforms.history`);
nothing that grows with events or users leaves Beam. Where this command runs (as the index stage
does), the Gram becomes each film's top ``--neighbors_k`` co-watch neighbours (EASE by default,
:mod:`models.collab`) and film vectors (a factorisation of the same model's item-item matrix,
:mod:`models.cowatch`): one solve over films, whose memory ARCHITECTURE.md gives.
The version is ``cowatch-`` + a digest of the history and the settings, so a new history gives a
new version and the same history the same one. Under ``--output`` (an embed-style vectors root,
so the index stage can index the vectors too)::

    {version}/embeddings/run-0001/embeddings-00000-of-00001.parquet   schemas.EmbeddingRow
    {version}/cowatch_neighbors/cowatch_neighbors-00000-of-00001.parquet   schemas.NeighborRow
    {version}/cowatch.json                                           settings and counts
    {version}/manifests/run-0001.json          the same, written last: publishes the version
    _cowatch_runs/{stats,dead_letter}/run-NNNN/, manifests/   history statistics, bad rows, runs

With ``--holdout_fraction`` the cold-start protocol's hidden films (:mod:`models.cold_start`)
lose every watch before anything is computed, for a model that is evaluated on them.

    python -m pipelines.cowatch --watch_history=ratings.csv --output=out/vectors
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import io
import json
import logging
from collections.abc import Mapping
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from models import collab
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
from storage.files import parquet_encoder
from storage.files import read_parquet_records
from storage.files import shard_path
from storage.files import write_bytes
from storage.history import HISTORY_STAGE
from transforms.history import ComputeHistoryStats
from transforms.history import GroupUsers
from transforms.history import HistoryStats
from transforms.history import ReadWatchHistory
from transforms.history import StatsConfig
from transforms.history import drop_hidden_films
from transforms.history import read_npz
from transforms.history import write_npz
from transforms.manifest import OutputLayout
from transforms.sinks import WriteShards

NEIGHBORS_TABLE = "cowatch_neighbors"
REPORT_FILE = "cowatch.json"
RUNS_FOLDER = "_cowatch_runs"
DEAD_LETTER_SHARDS = 4
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
            "--cowatch_model",
            choices=collab.COLLAB_MODELS,
            default=cowatch.CowatchConfig.model,
            help="The co-watch neighbours: ease (EASE, Steck 2019, on the Gram of co-watch "
            "counts) or cosine (item-item cosine of co-watch counts: the co-watch kNN baseline).",
        )
        group.add_argument(
            "--ease_lambda",
            type=float,
            default=cowatch.CowatchConfig.ease_lambda,
            help="EASE's L2 penalty lambda (chosen on the validation split of the real history).",
        )
        group.add_argument(
            "--sequence_weight",
            type=float,
            default=cowatch.CowatchConfig.sequence_weight,
            help="With ease: weight of what users watched next (the films up to 10 places after "
            "a film in users' time-ordered histories) in each film's neighbour list; 0 for EASE "
            "alone (chosen on the validation split of the real history).",
        )
        group.add_argument(
            "--popularity_exponent",
            type=float,
            default=cowatch.CowatchConfig.popularity_exponent,
            help="With ease: EASE neighbour scores are divided by the neighbour's watchers to "
            "this power (chosen on the validation split of the real history).",
        )
        group.add_argument(
            "--cowatch_max_films",
            type=int,
            default=cowatch.CowatchConfig.max_films,
            help="Films the co-watch model holds: the most watched (its Gram and sequence counts "
            "are 8 x N^2 bytes and its solve about 16 x N^2; other films get poster neighbours "
            "only).",
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


STATS_TABLE = "stats"
STATS_FOLDER = "history_stats"
"""Under a version: its history's statistics (watchers, Gram, digest), which the evaluation
reuses rather than accumulating the Gram again."""


def collab_settings_of(root: str, version: str) -> dict:
    """The settings (``model``, ``ease_lambda``, ``max_films``...) a co-watch version was
    computed with, from its report."""
    path = FileSystems.join(root, version, REPORT_FILE)
    if not FileSystems.exists(path):
        raise InputError(
            f"--cowatch_version={version}: no {REPORT_FILE} under {root} — give a version the "
            "co-watch stage (python -m pipelines.cowatch) published there"
        )
    with FileSystems.open(path) as handle:
        return json.loads(handle.read()).get("config", {})


def history_pipeline(
    options: PipelineOptions, uri: str, layout: OutputLayout, config: cowatch.CowatchConfig,
    holdout: Holdout, test_pipeline=None,
):  # fmt: skip
    """Read the history with Beam and write its statistics (every film's watchers, the Gram of
    the modelled films, a digest) and dead letters under the run; returns the finished run
    (its ``watch_history`` counters count the rows)."""
    pipeline = make_pipeline(options, test_pipeline)
    history = pipeline | "ReadWatchHistory" >> ReadWatchHistory(uri, layout.run_id)
    users = history.batches | "GroupUsers" >> GroupUsers()
    folder = layout.table_prefix(STATS_TABLE)
    _ = (
        users
        | "FilmsSeen" >> beam.Map(lambda kv: np.unique(kv[1].movie_id))
        | "AllFilms" >> beam.CombineGlobally(_union)
        | "SaveFilms" >> beam.Map(lambda ids: write_npz(f"{folder}-films.npz", ids=ids))
    )
    visible = users
    if holdout.fraction:
        visible = users | "DropHiddenFilms" >> beam.Map(drop_hidden_films, holdout)
    stats = StatsConfig(min_watches=config.min_watches, max_films=config.max_films)
    _ = visible | "HistoryStats" >> ComputeHistoryStats(stats, save_to=folder)
    _ = history.dead_letter | "WriteDeadLetters" >> WriteShards(
        layout.table_prefix(DeadLetter.TABLE), ".parquet", DEAD_LETTER_SHARDS,
        parquet_encoder(DeadLetter), lambda d: (d.line_number or 0, d.input_row),
    )  # fmt: skip
    result = pipeline.run()
    result.wait_until_finish()
    return result


def _union(arrays) -> np.ndarray:
    arrays = [np.asarray(a, np.int64) for a in arrays]
    return np.unique(np.concatenate(arrays)) if arrays else np.zeros(0, np.int64)


def vector_rows(ids, vectors, version: str, digest: str, when: datetime.datetime):
    """The co-watch vectors as EmbeddingRow records."""
    for movie_id, vector in zip(ids.tolist(), vectors, strict=True):
        yield EmbeddingRow(
            movie_id=int(movie_id), dim=int(vectors.shape[1]), model_name=cowatch.MODEL_NAME,
            model_version=version, content_sha256=digest, poster_of=int(movie_id), embedded_at=when,
            embedding=tuple(float(v) for v in vector),
        )  # fmt: skip


def neighbor_table(lists, version: str, as_of: datetime.date):
    """The co-watch neighbour lists as one Arrow table of NeighborRow (run_date: the history's
    last day), films in id order, each film's neighbours by rank."""
    c = NeighborRow.c
    films = sorted(lists)
    sizes = [len(lists[m]) for m in films]
    return NeighborRow.arrow_of_columns({
        c.movie_id: np.repeat(np.array(films, dtype=np.int64), sizes),
        c.rank: np.concatenate([np.arange(1, n + 1) for n in sizes] or [np.zeros(0, int)]),
        c.neighbor_id: [n for m in films for n, _ in lists[m]],
        c.score: [s for m in films for _, s in lists[m]],
        c.source: SOURCE_COWATCH, c.model_version: version, c.run_date: as_of,
    }, sum(sizes))  # fmt: skip


def _parquet_bytes(table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def version_of(stats: HistoryStats, config: cowatch.CowatchConfig, holdout: Holdout) -> str:
    """The co-watch version: a digest of the visible history and the settings."""
    text = f"{stats.digest}|{dataclasses.asdict(config)}|{holdout.describe()}"
    return f"{cowatch.MODEL_NAME}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def compute_and_write(
    stats: HistoryStats, films_seen: np.ndarray, root: str, config: cowatch.CowatchConfig,
    holdout: Holdout,
) -> dict:  # fmt: skip
    """Neighbours, vectors and the report of the history statistics under ``root``/{version}
    (the solve over the modelled films runs here: see ARCHITECTURE.md for its memory)."""
    hidden = holdout.hidden(films_seen.tolist())
    if not stats.events:
        raise InputError(
            "the watch history has no events left to learn co-watch vectors from — check "
            "--watch_history (its dead letters say why rows were refused) and --holdout_fraction"
        )
    version = version_of(stats, config, holdout)
    digest = version.rpartition("-")[2]
    ids, vectors, lists = cowatch.model_outputs(stats.gram, config)
    latest = datetime.datetime.fromtimestamp(stats.latest, tz=datetime.UTC)
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
        _parquet_bytes(neighbor_table(lists, version, latest.date())),
    )
    report = {
        "model_version": version,
        "history_digest": stats.digest,
        "events_used": stats.events,
        "users": stats.users,
        "films_in_history": int(len(stats.film_ids)),
        "films_modelled": int(len(stats.gram.films)),
        "films_with_vector": int(len(ids)),
        "films_with_neighbors": sum(1 for v in lists.values() if v),
        "hidden_films": sorted(hidden),
        "holdout": holdout.describe(),
        "config": dataclasses.asdict(config),
        "as_of": latest.isoformat(),
    }  # fmt: skip
    stats.save(FileSystems.join(folder, STATS_FOLDER))  # the evaluation reuses the Gram
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
    config = config_of(options)
    holdout = holdout_of(options)
    layout = OutputLayout.next_run(FileSystems.join(root, RUNS_FOLDER))
    if not options.view_as(TestOptions).dry_run:
        layout.discard_unpublished()  # what a killed run left, before its run number is reused
    result = history_pipeline(options, uri, layout, config, holdout, test_pipeline)
    if options.view_as(TestOptions).dry_run:
        return {}
    folder = layout.table_prefix(STATS_TABLE)
    stats = HistoryStats.load(folder)
    films_seen = read_npz(f"{folder}-films.npz")["ids"]
    own = {"include_unpublished": True}  # this run's dead letters: published when the run ends
    dead = read_parquet_records(layout.table_glob(DeadLetter.TABLE, ".parquet"), DeadLetter, **own)
    report = compute_and_write(stats, films_seen, root, config, holdout)
    counters = log_counters(result, HISTORY_STAGE)
    rows_read, events = counters.get("rows_read", 0), counters.get("events", 0)
    report.update(
        run_id=layout.run_id, watch_history=uri, input_rows=rows_read, events=events,
        dead_lettered=len(dead),
        dead_letter_reasons=dict(collections.Counter(f"{d.stage}/{d.reason}" for d in dead)),
        accounting_ok=rows_read == events + len(dead),
    )  # fmt: skip
    if dead:
        _LOG.warning("%d watch-history rows could not be read: %s", len(dead),
                     layout.table_glob(DeadLetter.TABLE, ".parquet"))  # fmt: skip
    _LOG.info(
        "co-watch %s (%s): %d films modelled, %d with vectors, from %d events of %d users",
        report["model_version"], config.model, report["films_modelled"],
        report["films_with_vector"], report["events_used"], report["users"],
    )  # fmt: skip
    public = {k: v for k, v in report.items() if k != "hidden_films"}
    write_bytes(layout.manifest_path, json.dumps(public, indent=2, sort_keys=True).encode())
    return report


def config_of(options: PipelineOptions) -> cowatch.CowatchConfig:
    """The co-watch model's settings of parsed options."""
    opts = options.view_as(CowatchOptions)
    return cowatch.CowatchConfig(
        dim=opts.cowatch_dim, min_watches=opts.cowatch_min_watches,
        neighbors_k=options.view_as(NeighborsOptions).neighbors_k, model=opts.cowatch_model,
        ease_lambda=opts.ease_lambda, max_films=opts.cowatch_max_films,
        sequence_weight=opts.sequence_weight, popularity_exponent=opts.popularity_exponent,
    )  # fmt: skip


def report_text(report: Mapping) -> str:
    """The report as JSON, less the hidden films (one id per line would drown it)."""
    return json_text({k: v for k, v in report.items() if k != "hidden_films"})


if __name__ == "__main__":
    main(run, show=report_text, label="co-watch")
