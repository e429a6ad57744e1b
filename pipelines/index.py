"""Index stage: one model version's vector table in, a ScaNN index (with its manifest) out.

Reads ``{vectors}/{model_version}/embeddings/*/*.parquet`` (local or gs://), builds a ScaNN
searcher (dot product on L2-normalised vectors: brute force for small tables, asymmetric
hashing with reordering for medium ones, a partitioning tree with AH and reordering, about
sqrt(N) leaves, for large ones; every parameter overridable), measures recall@10 against exact
search on a sample, fails below ``--recall_floor``, and writes the index with relative paths to
``--output`` (default ``{vectors}/{model_version}/index``), local or gs://.

    python -m pipelines.index --vectors=out/vectors [--model_version=...]
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from models.scann_index import PosterIndex
from models.scann_index import choose_params
from models.vectors import model_versions
from models.vectors import read_vector_table
from models.vectors import vectors_glob
from pipelines import checks
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import InputError
from pipelines.common import UsageError
from pipelines.common import main

_LOG = logging.getLogger(__name__)


class IndexOptions(PipelineOptions):
    """Options of the index stage."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("index stage")
        group.add_argument("--vectors", help="The embed stage's --output root (local or gs://).")
        group.add_argument(
            "--model_version",
            default=None,
            help="Which model version under --vectors (required when it holds several).",
        )
        group.add_argument(
            "--index_mode",
            choices=["brute_force", "ah", "tree_ah"],
            default=None,
            help="Force a searcher type (default: by table size).",
        )
        group.add_argument(
            "--num_leaves", type=int, default=None, help="Tree partitions (default about sqrt(N))."
        )
        group.add_argument(
            "--num_leaves_to_search", type=int, default=None, help="Partitions searched per query."
        )
        group.add_argument(
            "--training_sample_size", type=int, default=None, help="Vectors used to train the tree."
        )
        group.add_argument(
            "--dims_per_block",
            type=int,
            default=None,
            help="Asymmetric-hashing dimensions per block (default 2).",
        )
        group.add_argument(
            "--aq_threshold",
            type=float,
            default=None,
            help="Anisotropic quantization threshold (default 0.2).",
        )
        group.add_argument(
            "--reorder_k",
            type=int,
            default=None,
            help="Candidates re-scored exactly (default 100).",
        )
        group.add_argument(
            "--recall_floor",
            type=float,
            default=0.95,
            help="Fail the build when recall@10 against exact search is below this.",
        )
        group.add_argument(
            "--recall_sample",
            type=int,
            default=1000,
            help="Films used as queries to measure recall@10.",
        )


COMMAND = Command(
    "pipelines.index",
    IndexOptions,
    __doc__,
    required=("--vectors",),
    hides=("--num_shards",),
    beam=False,
    overrides={"--output": {"help": "Index folder (default {vectors}/{model_version}/index)."}},
)


class RecallTooLow(RuntimeError):
    """The built index misses too many exact neighbours."""


def resolve_version(vectors_root: str, requested: str | None) -> str:
    """The model version to index; a UsageError or InputError that says what to do when the
    root is missing, empty or ambiguous, or lacks the requested version."""
    if "://" not in vectors_root and not os.path.isdir(vectors_root):
        raise UsageError(
            f"--vectors={vectors_root}: no such folder — give the embed stage's --output root"
        )
    versions = model_versions(vectors_root)
    if not versions:
        raise InputError(
            f"--vectors={vectors_root} holds no vectors — run python -m pipelines.embed "
            f"--output={vectors_root} first, or give the embed stage's --output root"
        )
    if requested:
        if requested not in versions:
            raise UsageError(
                f"--model_version={requested}: no vectors for it under {vectors_root}; found "
                f"{versions} — choose one of them with --model_version"
            )
        return requested
    if len(versions) != 1:
        raise UsageError(
            f"--vectors={vectors_root} holds {len(versions)} model versions {versions}; "
            "choose one with --model_version"
        )
    return versions[0]


def run(argv: Sequence[str] | None = None) -> dict:
    """Build, check and save the index; returns its manifest."""
    options = COMMAND.parse(argv)
    opts = options.view_as(IndexOptions)
    checks.required({"--vectors": opts.vectors}, "the embed stage's --output root")
    version = resolve_version(opts.vectors, opts.model_version)
    output = options.view_as(CommonOptions).output or FileSystems.join(
        opts.vectors, version, "index"
    )
    checks.writable_output(output)
    table = read_vector_table(vectors_glob(opts.vectors, version))
    params = choose_params(
        len(table.ids),
        mode=opts.index_mode,
        num_leaves=opts.num_leaves,
        num_leaves_to_search=opts.num_leaves_to_search,
        training_sample_size=opts.training_sample_size,
        dims_per_block=opts.dims_per_block,
        anisotropic_quantization_threshold=opts.aq_threshold,
        reorder_k=opts.reorder_k,
    )
    _LOG.info("building %s index over %d vectors of %s", params.mode, len(table.ids), version)
    index = PosterIndex.build(table.ids, table.vectors, version, params)
    recall = index.recall_at_k(table.vectors, k=10, sample=opts.recall_sample)
    index.info.update(
        recall_at_10=round(recall, 4),
        recall_sample=min(opts.recall_sample, len(table.ids)),
        recall_floor=opts.recall_floor,
        built_at=datetime.datetime.now(datetime.UTC).isoformat(),
    )
    if recall < opts.recall_floor:
        raise RecallTooLow(
            f"recall@10 {recall:.3f} is below --recall_floor={opts.recall_floor} for a "
            f"{params.mode} index over {len(table.ids)} vectors; search more leaves "
            "(--num_leaves_to_search), reorder more (--reorder_k) or use --index_mode=brute_force"
        )
    index.info["index_uri"] = output
    index.save(output)
    _LOG.info("index at %s: recall@10 %.4f, built in %.2fs", output, recall,
              index.info["build_seconds"])  # fmt: skip
    return index.info


def index_text(info: Mapping) -> str:
    """Where the index is, its size, mode and recall."""
    return (
        f"index {info['index_uri']}: {info['n']} vectors, {info['params']['mode']}, "
        f"recall@10 {info['recall_at_10']}"
    )


if __name__ == "__main__":
    main(run, show=index_text)
