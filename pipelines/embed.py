"""Embed stage: poster TFRecords in, one L2-normalised vector per poster out, as Parquet.

Reads the scrape stage's TFRecords (local or gs://), embeds every poster with a CNN from the
model registry (or a trained ``.keras`` model) through Beam's RunInference, and writes under
``--output``, in a folder per model version so vectors of different models never mix::

    {model_version}/model/{model_version}.keras          the exact model used (raw pixels in)
    {model_version}/embeddings/run-NNNN/embeddings-SSSSS-of-NNNNN.parquet   schemas.EmbeddingRow
    {model_version}/dead_letter/run-NNNN/dead_letter-00000-of-00001.parquet
    {model_version}/manifests/run-NNNN.json (+ .parquet)

Posters whose (content hash, model version) is already in the table are not embedded again.

    python -m pipelines.embed --posters=out/demo --output=out/vectors --model=squeezenet_v1_1 \\
        --weights=../shared/data/weights/squeezenet_v1.1_imagenet_notop_keras1.h5
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from monitoring import progress
from pipelines import checks
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import log_counters
from pipelines.common import main
from pipelines.common import make_pipeline
from pipelines.common import recorded_options
from schemas import DeadLetter
from schemas import DuplicateRecord
from schemas import EmbeddingRow
from schemas import PosterRecord
from storage.files import parquet_encoder
from storage.files import read_parquet_records
from storage.files import write_bytes
from storage.posters import duplicates_glob
from storage.posters import posters_glob
from transforms import manifest
from transforms.manifest import OutputLayout
from transforms.manifest import WriteRunManifest
from transforms.manifest import read_manifest
from transforms.sinks import ReadTFRecordFiles
from transforms.sinks import WriteShards

if TYPE_CHECKING:  # transforms.embed imports TensorFlow: only when the stage runs
    from transforms.embed import EmbedConfig

_LOG = logging.getLogger(__name__)
_MODEL_LOAD_ERRORS = (ValueError, OSError, RuntimeError, KeyError, zipfile.BadZipFile)


class EmbedOptions(PipelineOptions):
    """Options of the embed stage."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("embed stage")
        group.add_argument(
            "--posters",
            help="Poster TFRecords: a glob, or the --output root of the scrape stage.",
        )
        group.add_argument(
            "--duplicates",
            default=None,
            help="The scrape stage's duplicates tables (a glob): films whose poster duplicates "
            "another film's get that film's vector. Default: found beside --posters when it is "
            "a scrape output root; none when --posters is a glob.",
        )
        group.add_argument(
            "--model",
            default="inception_v3",
            help="A backbone (inception_v3, vgg16, nasnet_large, resnet50, efficientnet_b0, "
            "mobilenet_v2, squeezenet_v1_1, small_cnn, pixels) or a trained .keras file.",
        )
        group.add_argument(
            "--weights",
            default=None,
            help="'imagenet' (Keras download, needs internet), a local or gs:// .h5, "
            ".weights.h5 or .keras file, or omit for random weights.",
        )
        group.add_argument(
            "--min_batch_size",
            type=int,
            default=8,
            help="Smallest inference batch (batches are padded to powers of two).",
        )
        group.add_argument(
            "--max_batch_size", type=int, default=64, help="Largest inference batch."
        )
        group.add_argument(
            "--share_model_across_processes",
            action="store_true",
            help="Load one copy of the model per worker VM, shared by its SDK processes "
            "(for large models and GPUs).",
        )


COMMAND = Command(
    "pipelines.embed",
    EmbedOptions,
    __doc__,
    required=("--posters", "--output"),
    overrides={"--output": {"help": "The vectors root: one folder per model version under it."}},
)


def expected_posters(posters: str) -> int | None:
    """How many posters the published runs of a scrape output root hold, as their manifests
    say (None for a glob, or when a manifest does not say)."""
    if posters_glob(posters) == posters:
        return None
    runs = OutputLayout.completed_runs(posters)
    written = [read_manifest(OutputLayout(posters, r).manifest_path).get("written") for r in runs]
    return None if None in written else sum(written)


def _already_embedded(record: PosterRecord, _: int, done: set, task: str) -> int:
    """1 (and counted as done under ``task`` on the console) for a poster whose vector is in
    the table, else 0."""
    present = (record.movie_id, record.content_sha256) in done
    if present:
        progress.advance(task)
    return int(present)


def stage_model(model: str, weights: str | None, output: str) -> tuple[EmbedConfig, OutputLayout]:
    """Build (or load) the embedding model, save it under its version folder, return the config.

    A model or weights file that cannot be loaded is an InputError naming the flag.
    """
    # Keras and TensorFlow take seconds to import: not for --help or a bad flag.
    from models.registry import load_embedding_model
    from models.registry import save_embedding_model
    from transforms.embed import EmbedConfig

    try:
        em = load_embedding_model(model, weights)
    except _MODEL_LOAD_ERRORS as exc:
        raise checks.model_load_error(model, weights, exc) from exc
    root = FileSystems.join(output, em.version)
    layout = OutputLayout.next_run(root)
    model_uri = FileSystems.join(root, "model", f"{em.version}.keras")
    if not FileSystems.exists(model_uri):
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, f"{em.version}.keras")
            save_embedding_model(em, local)
            with open(local, "rb") as handle:
                write_bytes(model_uri, handle.read())
    config = EmbedConfig(
        model_uri=model_uri,
        model_name=em.name,
        model_version=em.version,
        input_size=tuple(em.input_size),
        dim=int(em.dim),
        run_id=layout.run_id,
    )
    return config, layout


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the embed stage; returns the run's manifest (as written).

    Bad flags fail before any work with a UsageError or InputError (pipelines.checks).
    """
    options = COMMAND.parse(argv)
    opts = options.view_as(EmbedOptions)
    common = options.view_as(CommonOptions)
    checks.required(
        {"--posters": opts.posters, "--output": common.output},
        "the scrape stage's --output root (or a TFRecord glob) and the vectors root to write",
    )
    checks.model_flags(opts.model, opts.weights)
    checks.matching_files(
        posters_glob(opts.posters), "--posters", opts.posters,
        "give the scrape stage's --output root or a glob of its .tfrecord files",
    )  # fmt: skip
    checks.writable_output(common.output)
    from transforms.embed import PROGRESS_TASK
    from transforms.embed import EmbedConfig  # TensorFlow: imported once the flags are good
    from transforms.embed import EmbedPosters
    from transforms.embed import ShareCanonicalVectors

    started_at = datetime.datetime.now(datetime.UTC)
    base, layout = stage_model(opts.model, opts.weights, common.output)
    config = EmbedConfig(
        **{
            **base.__dict__,
            "min_batch_size": opts.min_batch_size,
            "max_batch_size": opts.max_batch_size,
            "share_model_across_processes": opts.share_model_across_processes,
        }
    )
    pattern = posters_glob(opts.posters)
    done_runs = OutputLayout.completed_runs(layout.root)
    existing_globs = [layout.table_glob(EmbeddingRow.TABLE, ".parquet", r) for r in done_runs]
    _LOG.info("embed %s with %s -> %s (%s)", pattern, config.model_version, layout.root,
              layout.run_id)  # fmt: skip

    pipeline = make_pipeline(options, test_pipeline)
    read = pipeline | "ReadPosters" >> ReadTFRecordFiles(
        pattern, PosterRecord, layout.run_id, namespace="embed", film_index=True
    )
    posters = read.records
    existing = (
        pipeline
        | "ExistingGlobs" >> beam.Create(existing_globs)
        | "ReadExisting" >> beam.FlatMap(read_parquet_records, EmbeddingRow)
    )
    embedded = (
        existing
        | "ExistingKeys" >> beam.Map(lambda r: (r.movie_id, r.content_sha256))
        | "ExistingKeySet" >> beam.combiners.ToSet()
    )
    split = posters | "SkipEmbedded" >> beam.Partition(
        _already_embedded, 2, done=beam.pvalue.AsSingleton(embedded), task=PROGRESS_TASK
    )
    todo, present = split[0], split[1]
    own_rows, own_dead = todo | "Embed" >> EmbedPosters(config)
    dups_glob = duplicates_glob(opts.posters, opts.duplicates)
    duplicates = (
        pipeline
        | "DuplicateGlobs" >> beam.Create([dups_glob] if dups_glob else [])
        | "ReadDuplicates" >> beam.FlatMap(read_parquet_records, DuplicateRecord)
    )
    shared = (
        (own_rows, existing) | "AllVectors" >> beam.Flatten(),
        duplicates,
    ) | "ShareVectors" >> ShareCanonicalVectors(layout.run_id)
    shared_split = shared.rows | "SkipShared" >> beam.Partition(
        lambda r, n, done: int((r.movie_id, r.content_sha256) in done),
        2,
        done=beam.pvalue.AsSingleton(embedded),
    )
    rows = (own_rows, shared_split[0]) | "AllRows" >> beam.Flatten()
    dead = (read.dead_letter, own_dead, shared.dead_letter) | "AllDead" >> beam.Flatten()
    inputs = (
        (posters, read.dead_letter, shared.rows, shared.dead_letter) | "AllInputs" >> beam.Flatten()
    )
    present = (present, shared_split[1]) | "AllPresent" >> beam.Flatten()
    written = rows | "WriteVectors" >> WriteShards(
        layout.table_prefix(EmbeddingRow.TABLE),
        ".parquet",
        common.num_shards,
        parquet_encoder(EmbeddingRow, list_size=config.dim),
        sort_key=lambda r: (r.movie_id, r.content_sha256),
    )
    written_dead = dead | "WriteDeadLetters" >> WriteShards(
        layout.table_prefix(DeadLetter.TABLE),
        ".parquet",
        1,
        parquet_encoder(DeadLetter),
        sort_key=lambda d: (d.movie_id or 0, d.stage, d.reason, d.input_row),
    )
    files = (written, written_dead) | "AllFiles" >> beam.Flatten()
    counts = {
        "input_rows": manifest.count(inputs, "CountInputs"),
        "vectors_shared": manifest.count(shared.rows, "CountShared"),
        "written": manifest.count(rows, "CountVectors"),
        "duplicates": manifest.count(pipeline | "NoDuplicates" >> beam.Create([]), "CountDups"),
        "dead_lettered": manifest.count(dead, "CountDead"),
        "already_present": manifest.count(present, "CountPresent"),
        "dead_letter_reasons": manifest.dead_letter_reasons(dead, "Reasons"),
        "files_written": manifest.count(files, "CountFiles"),
    }
    public = recorded_options(options)
    public.update(model_version=config.model_version, model_uri=config.model_uri)
    _ = counts | "Manifest" >> WriteRunManifest(layout, "embed", started_at, pattern, public)
    if not options.view_as(TestOptions).dry_run:
        layout.discard_unpublished()  # what a killed run left, before its run number is reused
    progress.set_total(PROGRESS_TASK, expected_posters(opts.posters))
    result = pipeline.run()
    result.wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        return {}
    written_manifest = read_manifest(layout.manifest_path)
    written_manifest["counters"] = log_counters(result, "embed")
    written_manifest["model_version"] = config.model_version
    written_manifest["vectors_glob"] = layout.table_glob(EmbeddingRow.TABLE, ".parquet")
    unreadable = written_manifest["counters"].get("unreadable_records", 0)
    lost = written_manifest["counters"].get("unreadable_films", 0)
    if unreadable:
        _LOG.warning("%d poster(s) or file(s) could not be read (%d films of corrupt or missing "
                     "shards, each dead-lettered by id as unreadable_shard): %s", unreadable,
                     lost, layout.table_glob(DeadLetter.TABLE, ".parquet"))  # fmt: skip
    _LOG.info("manifest %s: %s", layout.manifest_path, written_manifest["identity"])
    return written_manifest


if __name__ == "__main__":
    main(run)
