"""Evaluate candidate sources, warm and cold start, beside their baselines; tune the blend.

Warm (leave-last-out: each user's latest watch of a film with a vector is held out): HR@10,
HR@100 and NDCG@10 of random films, the most popular films, item-item co-watch kNN, the genre
profile (with ``--posters``), poster kNN of ``--model_version`` and of each
``--baseline_model_version``, and, with ``--cowatch_version``, the hybrid whose blend is chosen on
a time-ordered validation split (:mod:`models.blend`); the chosen blend goes into the report,
which ``pipelines.neighbors --blend`` reads. Cold start (with ``--cold_model_version``, a poster
model trained under the same ``--holdout_fraction`` / ``--holdout_seed``): Recall@20 over the
hidden films, also with each hidden film's popularity estimated from its poster neighbours,
weighted as a validation hold-out of the visible films chooses. Paired bootstrap 95% intervals
of the differences. Writes ``{output}/reports/evaluation-*.json``.

    python -m pipelines.evaluate --vectors=out/vectors --watch_history=ratings.csv \
        --output=out/nightly [--model_version=...] [--baseline_model_version=pixels-...] \
        [--cowatch_version=cowatch-...] [--posters=out/scrape]
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Mapping
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from models import candidate_eval as ev
from models import offline_eval
from models.collab import CollabModel
from models.cowatch import CowatchConfig
from models.scoring import CandidateConfig
from models.vectors import read_vector_table
from models.vectors import vectors_glob
from pipelines import checks
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import main
from pipelines.common import make_pipeline
from pipelines.cowatch import STATS_FOLDER as COWATCH_STATS
from pipelines.cowatch import CowatchOptions
from pipelines.cowatch import collab_settings_of
from pipelines.cowatch import holdout_of
from pipelines.embed import EmbedOptions
from pipelines.index import IndexOptions
from pipelines.index import resolve_version
from pipelines.neighbors import WATCH_HISTORY_HELP
from pipelines.neighbors import NeighborsOptions
from pipelines.neighbors import film_genres
from storage.posters import posters_glob
from transforms.history import ComputeHistoryStats
from transforms.history import GroupUsers
from transforms.history import HistoryStats
from transforms.history import ReadWatchHistory
from transforms.history import StatsConfig
from transforms.manifest import write_json_report


class EvaluateOptions(PipelineOptions):
    """Options of the evaluation."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("evaluation")
        group.add_argument(
            "--baseline_model_version",
            default=None,
            help="Other model versions under --vectors (comma-separated) whose poster kNN are "
            "baselines (e.g. the pixels or ImageNet model).",
        )
        group.add_argument(
            "--cold_model_version",
            default=None,
            help="Cold start: vectors of a poster model trained with --holdout_fraction (its "
            "co-watch targets never saw a hidden film).",
        )
        group.add_argument(
            "--cold_cowatch_version",
            default=None,
            help="Cold start: the co-watch version computed with the same hold-out (the "
            "hybrid searches posters with its vectors).",
        )
        group.add_argument(
            "--eval_users",
            type=int,
            default=DEFAULT_EVAL_USERS,
            help="Users the evaluation and the blend tuning run on: a seeded sample (--eval_seed) "
            "whose size bounds their cost (about a minute per 300 users); the co-watch model, "
            "popularity and Gram still come from every user. 0: every user.",
        )
        group.add_argument(
            "--eval_seed", type=int, default=0, help="Seed of the user sample and of the random "
            "baseline.",
        )  # fmt: skip


COMMAND = Command(
    "pipelines.evaluate",
    EvaluateOptions,
    __doc__,
    reads=(
        (IndexOptions, ("vectors", "model_version")),
        (NeighborsOptions, ("watch_history", "cowatch_version", "neighbors_k", "candidates_k",
                            "half_life_days", "min_rating")),
        (EmbedOptions, ("posters",)),
        (CowatchOptions, ("holdout_fraction", "holdout_seed", "cowatch_model", "ease_lambda",
                          "sequence_weight", "popularity_exponent", "cowatch_max_films")),
    ),
    required=("--vectors", "--watch_history", "--output"),
    hides=("--num_shards",),
    overrides={
        "--output": {"help": "Where the JSON report goes ({output}/reports/)."},
        "--watch_history": {"help": WATCH_HISTORY_HELP},
        "--posters": {"help": "The scrape stage's --output root: its genres make the genre "
                      "profile baseline."},
        "--cowatch_version": {"help": "A co-watch version under --vectors: adds co-watch kNN "
                              "and the hybrid, whose blend is tuned here."},
    },
)  # fmt: skip


_LOG = logging.getLogger(__name__)
DEFAULT_EVAL_USERS = 1000
WORK_FOLDER = "_evaluation_stats"


def history_stats(
    options: PipelineOptions, uri: str, folder: str, config: StatsConfig, test_pipeline=None
) -> HistoryStats | None:
    """Every film's watchers, the Gram (unless ``config.gram`` is off) and the sampled users'
    events, computed by Beam; None on a dry run."""
    pipeline = make_pipeline(options, test_pipeline)
    history = pipeline | "ReadWatchHistory" >> ReadWatchHistory(uri, "evaluate")
    users = history.batches | "GroupUsers" >> GroupUsers()
    _ = users | "HistoryStats" >> ComputeHistoryStats(config, save_to=folder)
    pipeline.run().wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        return None
    found = HistoryStats.load(folder)
    FileSystems.delete([folder])
    return found


def population_of(
    options: PipelineOptions, uri: str, folder: str, config: StatsConfig, saved: str | None,
    test_pipeline=None,
) -> tuple[HistoryStats | None, ev.Population | None, bool]:  # fmt: skip
    """The history's statistics and population. With ``saved`` (the co-watch version's
    statistics folder) the Gram is taken from there when the history's digest matches, else
    accumulated again."""
    reuse = saved is not None and FileSystems.exists(FileSystems.join(saved, "stats.json"))
    reused = False
    stats = history_stats(
        options, uri, folder, dataclasses.replace(config, gram=not reuse), test_pipeline
    )
    if stats is None:
        return None, None, False
    if reuse:
        kept = HistoryStats.load(saved)
        if kept.digest == stats.digest:
            _LOG.info("the co-watch version's Gram is this history's: reused")
            stats = dataclasses.replace(stats, gram=kept.gram)
            reused = True
        else:
            _LOG.warning("--watch_history differs from the history --cowatch_version was "
                         "computed from: accumulating its Gram again")  # fmt: skip
            stats = history_stats(options, uri, folder, config, test_pipeline)
    watchers = dict(zip(stats.film_ids.tolist(), stats.watchers.tolist(), strict=True))
    return stats, ev.Population(stats.gram, watchers), reused


def label_of(version: str) -> str:
    """A model version's name without its digest (poster_embedding_..., pixels, cowatch)."""
    name, _, digest = version.rpartition("-")
    return name if name and len(digest) >= 6 else version


def _vectors(root: str, version: str):
    table = read_vector_table(vectors_glob(root, version))
    return table.ids, table.vectors


def _queries(root: str, version: str | None) -> dict | None:
    if not version:
        return None
    ids, vectors = _vectors(root, version)
    return {int(m): v for m, v in zip(ids.tolist(), vectors, strict=True)}


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the evaluation; returns the report."""
    options = COMMAND.parse(argv)
    index_opts = options.view_as(IndexOptions)
    nightly = options.view_as(NeighborsOptions)
    opts = options.view_as(EvaluateOptions)
    output = options.view_as(CommonOptions).output
    checks.required(
        {"--vectors": index_opts.vectors, "--watch_history": nightly.watch_history,
         "--output": output},
        "the embed stage's --output root, the users' watch history and a report folder",
    )  # fmt: skip
    checks.watch_history(nightly.watch_history)
    root = index_opts.vectors
    version = resolve_version(root, index_opts.model_version)
    checks.writable_output(output)
    baselines = [b for b in (opts.baseline_model_version or "").split(",") if b]
    labels = {v: label_of(v) for v in [version, *baselines]}
    posters = {labels[v]: _vectors(root, v) for v in [version, *baselines]}
    catalogue = set(posters[labels[version]][0].tolist())
    posters_flag = options.view_as(EmbedOptions).posters
    genres = dict(film_genres(posters_glob(posters_flag))) if posters_flag else {}
    hybrid = labels[version] if nightly.cowatch_version else None
    # The co-watch model's settings: the co-watch version's, else these flags.
    flags = options.view_as(CowatchOptions)
    settings = {
        "model": flags.cowatch_model, "ease_lambda": flags.ease_lambda,
        "sequence_weight": flags.sequence_weight, "popularity_exponent": flags.popularity_exponent,
        "max_films": flags.cowatch_max_films,
        **(collab_settings_of(root, nightly.cowatch_version) if hybrid else {}),
    }  # fmt: skip
    model = CollabModel(
        settings["model"], settings["ease_lambda"],
        settings.get("sequence_weight", CowatchConfig.sequence_weight),
        settings.get("popularity_exponent", CowatchConfig.popularity_exponent),
    )
    sample = opts.eval_users if opts.eval_users > 0 else 2**62
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    folder = FileSystems.join(output, WORK_FOLDER, stamp)
    saved = (FileSystems.join(root, nightly.cowatch_version, COWATCH_STATS)
             if nightly.cowatch_version else None)  # fmt: skip
    stats, population, reused = population_of(options, nightly.watch_history, folder, StatsConfig(
        min_watches=1, max_films=settings["max_films"],
        sample_users=sample, sample_seed=opts.eval_seed,
    ), saved, test_pipeline)  # fmt: skip
    if stats is None:
        return {}
    events = list(stats.sample.events())
    config = CandidateConfig(
        top_k=max(100, nightly.candidates_k), half_life_days=nightly.half_life_days,
        min_rating=nightly.min_rating,
    )  # fmt: skip
    seed = opts.eval_seed
    warm = offline_eval.warm_evaluation(
        events, catalogue, genres, posters, hybrid, config,
        _queries(root, nightly.cowatch_version), nightly.neighbors_k, seed, model, population,
    )  # fmt: skip
    cold = None
    if opts.cold_model_version:
        cold_label = label_of(opts.cold_model_version) + " (hold-out)"
        history_free = {labels[b]: posters[labels[b]] for b in baselines}
        history_free[cold_label] = _vectors(root, opts.cold_model_version)
        cold = offline_eval.cold_evaluation(
            events, catalogue, holdout_of(options), genres, history_free, cold_label, config,
            _queries(root, opts.cold_cowatch_version), nightly.neighbors_k, seed,
            population=population, model=model,
        )  # fmt: skip
    found = offline_eval.intervals(warm, cold, cold_label if cold else None, seed)
    tables = [ev.format_table(warm.means(), warm.users)]
    if cold is not None:
        tables.append(ev.format_cold_table(cold.means(), len(next(iter(cold.recall.values()))),
                                           cold.hidden_films, cold.k))  # fmt: skip
    chosen = []
    if warm.blend is not None:
        chosen.append(f"blend chosen on the validation split: {warm.blend.to_json()}")
    if cold is not None and cold.popularity_weight is not None:
        chosen.append(
            "cold start: weight of the popularity estimated from posters, chosen on a "
            f"validation hold-out of visible films: {cold.popularity_weight}"
        )
    intervals = [offline_eval.format_intervals(found)] if found else []
    table = "\n\n".join(tables + intervals + chosen)
    report = {
        "model_version": version,
        "baseline_model_versions": baselines,
        "cowatch_version": nightly.cowatch_version,
        "cowatch_model": dataclasses.asdict(model) if hybrid else None,
        "cold_model_version": opts.cold_model_version,
        "watch_history": nightly.watch_history,
        "users_evaluated": warm.users,
        "eval_users": opts.eval_users,
        "eval_seed": opts.eval_seed,
        "users_in_history": stats.users,
        "gram_of_cowatch_version_reused": reused,
        "users_sampled": int(len(np.unique(stats.sample.user_id))),
        "events": stats.events,
        "sample_events": len(events),
        "sample_events_without_vector": sum(e.movie_id not in catalogue for e in events),
        "catalogue_films": len(catalogue),
        "results": warm.means(),
        "cold_start": None if cold is None else {
            "holdout": holdout_of(options).describe(), "hidden_films": cold.hidden_films,
            "k": cold.k, "recall": cold.means(), "popularity_weight": cold.popularity_weight,
            "popularity_trials": cold.trials,
        },
        "intervals": found,
        "blend": None if warm.blend is None else json.loads(warm.blend.to_json()),
        "blend_trials": warm.trials,
        "table": table,
        "short_table": "\n\n".join(tables) + "".join(f"\n{line}" for line in chosen),
    }  # fmt: skip
    report["report_path"] = write_json_report(output, f"evaluation-{version}-{stamp}", report)
    return report


def report_text(report: Mapping) -> str:
    """The evaluation table and where the report is."""
    return f"{report['table']}\nreport: {report['report_path']}"


if __name__ == "__main__":
    main(run, show=report_text)
