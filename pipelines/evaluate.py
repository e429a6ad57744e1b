"""Evaluate candidate generation: leave-last-out HR@10, HR@100 and NDCG@10 with baselines.

Holds out each user's latest watched film that has a vector, builds candidates from the rest of
the history exactly as the nightly job does, and reports in one run the chosen model's figures
beside random films, the most popular films and, with ``--baseline_model_version``, neighbours
from another model's vectors (e.g. ``pixels``). Writes ``{output}/reports/evaluation-*.json``.

    python -m pipelines.evaluate --vectors=out/vectors --watch_history=ratings.csv \\
        --output=out/nightly [--model_version=...] [--baseline_model_version=pixels-...]
"""

from __future__ import annotations

import datetime

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import CommonOptions
from pipelines.common import configure_logging
from pipelines.common import parse_options
from pipelines.index import IndexOptions
from pipelines.index import resolve_version
from pipelines.neighbors import NeighborsOptions
from schemas import WatchEvent
from transforms.manifest import write_json_report


class EvaluateOptions(PipelineOptions):
    """Options of the evaluation."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("evaluation")
        group.add_argument(
            "--baseline_model_version",
            default=None,
            help="Another model version under --vectors whose neighbours are the baseline "
            "(e.g. the pixels model).",
        )
        group.add_argument("--eval_seed", type=int, default=0, help="Seed of the random baseline.")


def read_events(uri: str) -> list[WatchEvent]:
    """Watch events of a local or gs:// CSV or Parquet file (bad rows are skipped and counted)."""
    from transforms.candidates import read_history_file

    return [e for e in read_history_file(uri, "evaluate") if isinstance(e, WatchEvent)]


def run(argv=None) -> dict:
    """Run the evaluation; returns the report."""
    from models import candidate_eval as ev
    from models.vectors import read_vector_table
    from models.vectors import vectors_glob
    from transforms.candidates import CandidateConfig

    options = parse_options(argv, EvaluateOptions, __doc__.splitlines()[0])
    index_opts = options.view_as(IndexOptions)
    nightly = options.view_as(NeighborsOptions)
    output = options.view_as(CommonOptions).output
    if not index_opts.vectors or not nightly.watch_history or not output:
        raise ValueError("--vectors, --watch_history and --output are required")
    version = resolve_version(index_opts.vectors, index_opts.model_version)
    table = read_vector_table(vectors_glob(index_opts.vectors, version))
    catalogue = set(table.ids.tolist())
    events = read_events(nightly.watch_history)
    split = ev.leave_last_out(events, catalogue)
    config = CandidateConfig(
        top_k=max(100, nightly.candidates_k),
        half_life_days=nightly.half_life_days,
        min_rating=nightly.min_rating,
    )
    k = nightly.neighbors_k
    results = {
        f"neighbours: {version}": ev.hit_metrics(
            split, ev.neighbour_recommender(ev.neighbour_lists(table.ids, table.vectors, k), config)
        )
    }
    baseline = options.view_as(EvaluateOptions).baseline_model_version
    if baseline:
        other = read_vector_table(vectors_glob(index_opts.vectors, baseline))
        results[f"neighbours: {baseline}"] = ev.hit_metrics(
            split, ev.neighbour_recommender(ev.neighbour_lists(other.ids, other.vectors, k), config)
        )
    results["popularity"] = ev.hit_metrics(split, ev.popularity_recommender(split, catalogue, 100))
    seed = options.view_as(EvaluateOptions).eval_seed
    results["random"] = ev.hit_metrics(split, ev.random_recommender(catalogue, 100, seed))
    report = {
        "model_version": version,
        "watch_history": nightly.watch_history,
        "users_evaluated": len(split.held_out),
        "users_skipped": split.skipped_users,
        "events": len(events),
        "events_without_vector": sum(e.movie_id not in catalogue for e in events),
        "catalogue_films": len(catalogue),
        "results": results,
        "table": ev.format_table(results, len(split.held_out)),
    }
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    report["report_path"] = write_json_report(output, f"evaluation-{version}-{stamp}", report)
    return report


if __name__ == "__main__":
    configure_logging()
    summary = run()
    print(summary["table"])
    print(f"report: {summary['report_path']}")
