"""The whole nightly job for one run date: scrape, (train,) embed, index, neighbours, candidates.

Each stage is the stage's own ``run()`` with one set of options: every flag given here reaches
every stage (Beam runner flags included), and this job sets each stage's inputs and outputs
under ``--output``::

    {output}/scrape/    poster TFRecords, dead letters, duplicates, manifests
    {output}/train/     the trained .keras model and its report (with --train)
    {output}/vectors/   Parquet vectors and the ScaNN index, per model version
    {output}/nightly/   warehouse.duckdb (+ Parquet), reports/, dead letters

With ``--synthetic_films=N`` the catalog, the posters and the watch history come from the built-in
synthetic poster web on 127.0.0.1, so the whole job runs with no internet and no cloud account::

    python -m pipelines.nightly --synthetic_films=300 --train --output=out/nightly
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shlex
import sys
import time
from collections.abc import Mapping
from collections.abc import Sequence

import duckdb
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from pipelines import checks
from pipelines import console
from pipelines import cowatch
from pipelines import embed
from pipelines import evaluate
from pipelines import index
from pipelines import neighbors
from pipelines import scrape
from pipelines import train
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import UsageError
from pipelines.common import flag_names
from pipelines.common import main
from pipelines.demo import write_synthetic_history
from reporting import reports
from schemas import CandidateRow
from schemas import NeighborRow

_LOG = logging.getLogger(__name__)


class NightlyOptions(PipelineOptions):
    """Options of the whole nightly job (each stage's own flags are accepted too)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("nightly job")
        group.add_argument(
            "--train",
            action="store_true",
            help="Train a poster model on the scraped posters and embed with it.",
        )
        group.add_argument(
            "--baseline_model",
            default="pixels",
            help="Also embed and index with this model as the evaluation and contact-sheet "
            "baseline ('' for none).",
        )
        group.add_argument(
            "--synthetic_users",
            type=int,
            default=200,
            help="With --synthetic_films: users in the synthetic watch history.",
        )


def _all_but(options_class: type[PipelineOptions], *set_here: str) -> tuple[str, ...]:
    """The flags of a stage's options class, less those this job sets for each stage."""
    return tuple(name for name in flag_names(options_class) if name not in set_here)


COMMAND = Command(
    "pipelines.nightly",
    NightlyOptions,
    __doc__,
    reads=(
        (scrape.ScrapeOptions, None),
        (cowatch.CowatchOptions, None),
        (train.TrainOptions, _all_but(train.TrainOptions, "cowatch_vectors")),
        (embed.EmbedOptions, _all_but(embed.EmbedOptions, "posters", "duplicates")),
        (index.IndexOptions, _all_but(index.IndexOptions, "vectors", "model_version")),
        (neighbors.NeighborsOptions,
         _all_but(neighbors.NeighborsOptions, "index", "cowatch_version", "blend")),
        (evaluate.EvaluateOptions, ("eval_seed",)),
    ),
    required=("--catalog|--synthetic_films", "--output"),
    overrides={
        "--output": {"help": "The root every stage writes under (scrape/, train/, vectors/, "
                     "nightly/)."},
        "--run_date": {"help": "Run date, YYYY-MM-DD (the warehouse partition; default: today)."},
        "--model": {"help": "The model to embed with (default inception_v3), or with --train "
                    "the backbone to train from (default squeezenet_v1_1).", "default": None},
        "--dry_run": {"help": "Refused: each stage reads what the one before wrote; dry-run the "
                      "stages one by one."},
    },
)  # fmt: skip


class StageClock:
    """Times each stage, shows its progress while it runs and one line when it is done."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time one stage; the block may add short notes (counts, a version) to the yielded
        list for its line."""
        notes: list[str] = []
        began = time.perf_counter()
        with console.progress(f"[nightly] {name}"):
            yield notes
        self.timings[name] = round(time.perf_counter() - began, 2)
        done = f"[nightly] {name}: done in {self.timings[name]:.1f}s"
        console.say(done + (f" ({'; '.join(notes)})" if notes else ""))


def run(argv: Sequence[str] | None = None) -> dict:
    """Run every stage for one run date; returns where everything went and the timings."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = COMMAND.parse(argv)
    nightly = options.view_as(NightlyOptions)
    root = options.view_as(CommonOptions).output
    if options.view_as(TestOptions).dry_run:
        raise UsageError(
            "the nightly job cannot --dry_run: each stage reads what the one before wrote; "
            "dry-run the stages one by one (python -m pipelines.scrape ... --dry_run=True)"
        )
    run_options = options.view_as(neighbors.NeighborsOptions)
    given_date = run_options.run_date
    run_date = (checks.run_date(given_date) if given_date else datetime.date.today()).isoformat()
    check_options(options, argv)
    synthetic = options.view_as(scrape.ScrapeOptions).synthetic_films
    paths = {
        "scrape": os.path.join(root, "scrape"),
        "train": os.path.join(root, "train"),
        "vectors": os.path.join(root, "vectors"),
        "nightly": os.path.join(root, "nightly"),
    }
    clock = StageClock()
    summary: dict = {"run_date": run_date, "paths": paths}
    with clock.stage("scrape") as notes:
        summary["scrape"] = scrape.run(argv + [f"--output={paths['scrape']}"])
        notes.append(scrape_note(summary["scrape"]))
    watch_history = run_options.watch_history
    if synthetic and not watch_history:
        watch_history = write_synthetic_history(
            synthetic,
            options.view_as(scrape.ScrapeOptions).synthetic_seed,
            nightly.synthetic_users,
            paths["scrape"],
        )
    stage_argv = argv + [f"--posters={paths['scrape']}"]
    train_argv = list(stage_argv)
    cowatch_version = None
    if watch_history:
        with clock.stage("co-watch") as notes:
            found = cowatch.run(_history_argv(argv, paths, watch_history, 0.0))
            notes.append(f"{found['films_with_vector']:,} films with vectors")
        cowatch_version = found["model_version"]
        summary["cowatch"] = {k: found[k] for k in ("model_version", "films_with_vector")}
    if nightly.train:
        with clock.stage("train") as notes:
            report = _train(stage_argv, paths, cowatch_version, 0.0)
            notes.append(f"objective {report['objective']}")
        summary["train"] = {k: report[k] for k in ("model_path", "run_id", "objective")}
        stage_argv = trained_model_argv(stage_argv, report["model_path"])
    with clock.stage("embed") as notes:
        embedded = embed.run(stage_argv + [f"--output={paths['vectors']}"])
        notes.append(f"{embedded['written']:,} vectors of {embedded['model_version']}")
    version = embedded["model_version"]
    summary["embed"] = {"model_version": version, "identity": embedded["identity"]}
    version_argv = stage_argv + [f"--vectors={paths['vectors']}", f"--model_version={version}"]
    with clock.stage("index") as notes:
        summary["index"] = index.run(version_argv + [f"--output={_index_dir(paths, version)}"])
        notes.append(f"recall@10 {summary['index']['recall_at_10']}")
    baseline = None
    if nightly.baseline_model:
        with clock.stage(f"baseline {nightly.baseline_model}"):
            base_argv = argv + [f"--posters={paths['scrape']}", f"--model={nightly.baseline_model}"]
            baseline = embed.run(base_argv + [f"--output={paths['vectors']}"])["model_version"]
            index.run(base_argv + [f"--vectors={paths['vectors']}", f"--model_version={baseline}",
                                   f"--output={_index_dir(paths, baseline)}"])  # fmt: skip
    nightly_argv = version_argv + [f"--output={paths['nightly']}", f"--run_date={run_date}"]
    if watch_history:
        nightly_argv += [f"--watch_history={watch_history}", f"--cowatch_version={cowatch_version}"]
        extra = [f"--baseline_model_version={baseline}"] if baseline else []
        holdout = options.view_as(cowatch.CowatchOptions).holdout_fraction
        if holdout and nightly.train:
            with clock.stage("cold-start model"):
                extra += _cold_start_model(argv, train_argv, paths, watch_history, holdout)
        with clock.stage("evaluation") as notes:
            summary["evaluation"] = evaluate.run(nightly_argv + extra)
            notes.append(f"{summary['evaluation']['users_evaluated']} users")
        nightly_argv.append(f"--blend={summary['evaluation']['report_path']}")
    with clock.stage("neighbors and candidates"):
        summary["neighbors"] = neighbors.run(nightly_argv)
    with clock.stage("report"):
        summary["report"] = write_run_report(
            paths, version, baseline, watch_history, run_date, clock.timings
        )
    summary["timings"] = clock.timings
    return summary


def check_options(options: PipelineOptions, argv: list[str]) -> None:
    """Every stage's flags that can be checked before the scrape starts (pipelines.checks)."""
    common = options.view_as(CommonOptions)
    checks.required({"--output": common.output}, "the root every stage writes under")
    embed_opts = options.view_as(embed.EmbedOptions)
    model_given = any(a == "--model" or a.startswith("--model=") for a in argv)
    trains = options.view_as(NightlyOptions).train
    if trains and model_given and embed_opts.model.endswith(".keras"):
        raise UsageError(
            f"--model={embed_opts.model}: with --train, --model names the backbone to train "
            "from (such as squeezenet_v1_1), not a .keras file"
        )
    checks.model_flags(embed_opts.model, embed_opts.weights)
    checks.watch_history(options.view_as(neighbors.NeighborsOptions).watch_history)
    scrape.check_options(options.view_as(scrape.ScrapeOptions), common)
    warehouse = options.view_as(neighbors.NeighborsOptions).warehouse
    checks.warehouse(warehouse, os.path.join(common.output, "nightly"))


def _history_argv(argv: list[str], paths: dict, history: str, holdout: float) -> list[str]:
    """The co-watch stage's flags: the history, the vectors root, the hold-out (last wins)."""
    return argv + [f"--watch_history={history}", f"--output={paths['vectors']}",
                   f"--holdout_fraction={holdout}"]  # fmt: skip


def _train(stage_argv: list[str], paths: dict, cowatch_version: str | None, holdout: float,
           folder: str | None = None) -> dict:  # fmt: skip
    """Run the train stage with the co-watch vectors (when there is a history)."""
    output = os.path.join(paths["train"], folder) if folder else paths["train"]
    extra = [f"--output={output}", f"--holdout_fraction={holdout}"]
    if cowatch_version:
        extra.append(f"--cowatch_vectors={os.path.join(paths['vectors'], cowatch_version)}")
    elif not any(a.startswith("--objective") for a in stage_argv):
        _LOG.info("no watch history: the poster model learns genres (--objective=genres)")
        extra.append("--objective=genres")
    return train.run(stage_argv + extra)


def _cold_start_model(
    argv: list[str], stage_argv: list[str], paths: dict, history: str, holdout: float
) -> list[str]:
    """Co-watch and a poster model that never saw the hidden films' watches, embedded; the
    evaluation's cold-start flags."""
    hidden = cowatch.run(_history_argv(argv, paths, history, holdout))["model_version"]
    report = _train(stage_argv, paths, hidden, holdout, folder="cold_start")
    model_argv = trained_model_argv(stage_argv, report["model_path"])
    model_argv.append(f"--output={paths['vectors']}")
    version = embed.run(model_argv)["model_version"]
    return [f"--cold_model_version={version}", f"--cold_cowatch_version={hidden}",
            f"--holdout_fraction={holdout}"]  # fmt: skip


def trained_model_argv(argv: list[str], model_path: str) -> list[str]:
    """The flags that embed with a model the job trained: ``--model`` names it, and the
    backbone's ``--weights`` (what training started from) are not passed on, since a trained
    .keras file carries its own."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--weights":
            skip = True
            continue
        if not arg.startswith("--weights="):
            kept.append(arg)
    return [*kept, f"--model={model_path}"]


def _index_dir(paths: dict, version: str) -> str:
    return os.path.join(paths["vectors"], version, "index")


def write_run_report(
    paths: dict,
    version: str,
    baseline: str | None,
    watch_history: str | None,
    run_date: str,
    timings: dict[str, float],
) -> str:
    """Contact sheets (PNG) for a sample of films and the HTML run report; returns its path."""
    sheets = reports.contact_sheets_for(
        paths["vectors"], version, paths["scrape"], sample=4, baseline_model_version=baseline
    )
    folder = os.path.join(paths["nightly"], "reports")
    reports.write_contact_sheets(sheets, os.path.join(folder, f"contact-sheets-{run_date}"))
    run = reports.collect_run(
        paths["scrape"], paths["vectors"], version, paths["nightly"], watch_history,
        baseline_model_version=baseline, run_date=run_date, contact_sheets=sheets,
        stage_seconds=dict(timings),
    )  # fmt: skip
    return reports.write_report(run, os.path.join(folder, f"run-{run_date}.html"))


def scrape_note(manifest: dict) -> str:
    """What a scrape run did, in a few words."""
    return (
        f"{manifest['written']:,} posters, {manifest['duplicates']:,} duplicates, "
        f"{manifest['dead_lettered']:,} dead-lettered of {manifest['input_rows']:,} films"
    )


def sample_query(summary: dict, limit: int = 5) -> str:
    """One consumer query against the local warehouse, printed as a table."""
    warehouse = summary["neighbors"]["warehouse"].removeprefix("duckdb://")
    c = NeighborRow.c
    with duckdb.connect(warehouse, read_only=True) as con:
        film = con.execute(f"SELECT min({c.movie_id}) FROM {NeighborRow.TABLE}").fetchall()[0][0]
        sql = (
            f"SELECT {c.rank}, {c.neighbor_id}, round({c.score}, 4) AS score"
            f" FROM {NeighborRow.TABLE} WHERE {c.movie_id} = {film}"
            f" AND {c.run_date} = DATE '{summary['run_date']}'"
            f" ORDER BY {c.rank} LIMIT {limit}"
        )
        table = con.execute(sql).fetchall()
        users = con.execute(
            f"SELECT count(DISTINCT {CandidateRow.c.user_id}) FROM {CandidateRow.TABLE}"
        ).fetchall()[0]
    command = (
        ".venv/bin/python -c 'import duckdb, sys; "
        "print(duckdb.connect(sys.argv[1], read_only=True).sql(sys.argv[2]))' "
        f'{shlex.quote(warehouse)} "{sql}"'
    )
    lines = [
        "query the warehouse (in the project's .venv; SQL as in docs/nightly.md):",
        f"  {command}",
    ]
    lines += [f"  {rank:>2}  {nid:>8}  {score:.4f}" for rank, nid, score in table]
    lines.append(f"  ({users[0]} users have candidates in {CandidateRow.TABLE})")
    return "\n".join(lines)


def results_text(summary: Mapping) -> str:
    """What the job prints when it is done: the evaluation tables (the bootstrap intervals are
    in the run report), where the outputs are, and one SQL query against the warehouse."""
    lines = [""]
    if "evaluation" in summary:
        lines += [summary["evaluation"]["short_table"], ""]
    root = os.path.dirname(summary["paths"]["scrape"])
    folders = " ".join(f"{os.path.basename(p)}/" for p in summary["paths"].values())
    lines += [f"outputs under {root}: {folders}", f"run report: {summary['report']}"]
    if summary["neighbors"]["warehouse"].startswith("duckdb://"):
        lines += ["", sample_query(summary)]
    lines.append(f"done in {sum(summary['timings'].values()):.0f}s")
    return "\n".join(lines)


if __name__ == "__main__":
    main(run, show=results_text, quiet=True)
