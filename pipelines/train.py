"""Train stage: poster TFRecords in, a trained poster-embedding .keras model and its report out.

Reads the scrape stage's TFRecords (``--posters``), runs tf.Transform over them on Beam (genre
vocabulary and multi-hot labels, the split by a hash of the movie id, the JPEG bytes passed
through), then trains on the transformed examples, their posters decoded for the backbone, where
this command runs (a GPU when TensorFlow sees one): a genre warm-up on the frozen backbone
(``--model``, ``--weights``, as for the embed stage; default backbone squeezenet_v1_1), then
semi-hard triplet metric learning with progressive unfreezing. Under ``--output``, for run
``run-NNNN``::

    model/run-NNNN/poster_embedding_{backbone}.keras   raw 0..255 RGB in, unit vector out
    model/run-NNNN/transform_fn/, transformed_metadata/ the tf.Transform output
    model/run-NNNN/genres.txt                          the label classes, one per line
    model/run-NNNN/report.json                         the test-split evaluation report
    transformed/run-NNNN/transformed-SSSSS-of-NNNNN.tfrecord
    dead_letter/run-NNNN/dead_letter-00000-of-00001.parquet
    manifests/run-NNNN.json (+ .parquet)

    python -m pipelines.train --posters=out/demo --output=out/train --model=squeezenet_v1_1 \\
        --weights=../shared/data/weights/squeezenet_v1.1_imagenet_notop_keras1.h5
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import TestOptions

from models import features
from models.vectors import read_vector_table
from pipelines import checks
from pipelines.common import Command
from pipelines.common import CommonOptions
from pipelines.common import UsageError
from pipelines.common import log_counters
from pipelines.common import main
from pipelines.common import make_pipeline
from pipelines.common import one_line
from pipelines.common import recorded_options
from pipelines.cowatch import CowatchOptions
from pipelines.cowatch import holdout_of
from pipelines.embed import EmbedOptions
from schemas import DeadLetter
from schemas import PosterRecord
from storage.files import parquet_encoder
from storage.files import write_bytes
from storage.posters import posters_glob
from transforms import manifest
from transforms.manifest import OutputLayout
from transforms.sinks import ReadTFRecordFiles
from transforms.sinks import WriteShards
from transforms.train import METRICS_NAMESPACE
from transforms.train import TRANSFORMED_TABLE
from transforms.train import AnalyzeAndTransformPosters
from transforms.train import FirstPosters
from transforms.train import PosterInstances
from transforms.train import TransformSettings

DEFAULT_BACKBONE = "squeezenet_v1_1"
MODEL_FOLDER = "model"
REPORT_FILE = "report.json"
CLASSES_FILE = "genres.txt"
_MODEL_FLAG = "--model"
_LOG = logging.getLogger(__name__)


class TrainOptions(PipelineOptions):
    """Train stage options (it also reads the embed stage's --posters, --model, --weights)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("train stage")
        group.add_argument(
            "--genre_set",
            default=features.DEFAULT_GENRE_SET,
            choices=sorted(features.GENRE_SETS),
            help="Label classes: all MovieLens genres, the six genres "
            f"({', '.join(features.SIX_GENRES)}), or groups of related genres.",
        )
        group.add_argument(
            "--embedding_dim", type=int, default=128, help="Length of the exported embedding."
        )
        group.add_argument(
            "--warmup_epochs",
            type=int,
            default=40,
            help="Genre warm-up epochs at most (frozen backbone; stops early, see --patience).",
        )
        group.add_argument(
            "--warmup_runs",
            type=int,
            default=5,
            help="With --objective=audience: warm-up runs from seeds seed, seed+1, ... whose "
            "embedding layers are averaged (steadier and better cold-start figures than one).",
        )
        group.add_argument(
            "--metric_epochs",
            type=int,
            default=8,
            help="Triplet-loss epochs, spread over the unfreezing stages.",
        )
        group.add_argument(
            "--triplet_margin", type=float, default=0.1, help="Margin (angular distance)."
        )
        group.add_argument(
            "--unfreeze_blocks",
            type=int,
            default=2,
            help="Backbone blocks unfrozen one by one during metric learning (BatchNorm stays "
            "frozen).",
        )
        group.add_argument("--learning_rate", type=float, default=1e-3, help="Warm-up Adam rate.")
        group.add_argument(
            "--fine_tune_learning_rate",
            type=float,
            default=1e-4,
            help="Adam learning rate of metric learning.",
        )
        group.add_argument("--batch_size_train", type=int, default=64, help="Training batch size.")
        group.add_argument(
            "--head_dropout", type=float, default=0.5, help="Dropout before the embedding layer."
        )
        group.add_argument(
            "--head_l2",
            type=float,
            default=None,
            help="L2 penalty on the embedding and genre-head kernels (default by objective: "
            "genres 0.001, audience and both 0.1).",
        )
        group.add_argument(
            "--patience",
            type=int,
            default=5,
            help="Epochs without a lower validation loss before a phase (or stage) stops; the "
            "best epoch's weights are kept.",
        )
        group.add_argument(
            "--no_flip_augment",
            action="store_true",
            help="Do not add horizontally flipped training posters.",
        )
        group.add_argument(
            "--classification_weight",
            type=float,
            default=1.0,
            help="Weight of the genre cross-entropy beside the triplet loss in metric learning.",
        )
        group.add_argument(
            "--seed", type=int, default=0, help="Seed of initialisation and shuffling."
        )
        group.add_argument(
            "--max_posters", type=int, default=None, help="Use only the N smallest movie ids."
        )
        group.add_argument(
            "--neighbours", type=int, default=10, help="k of the neighbour genre Jaccard@k."
        )
        group.add_argument(
            "--objective",
            choices=features.OBJECTIVES,
            default=features.DEFAULT_OBJECTIVE,
            help="What the poster embedding learns: the films' genres (triplet + genre loss), "
            "their audience (the cosine to the film's co-watch vector; needs "
            "--cowatch_vectors), or both.",
        )
        group.add_argument(
            "--cowatch_vectors",
            default=None,
            help="The co-watch stage's vectors: a version folder ({output}/cowatch-...) or a "
            "Parquet glob. Films with a vector are the audience objective's training set; "
            "with --holdout_fraction the hidden films are left out.",
        )


COMMAND = Command(
    "pipelines.train",
    TrainOptions,
    __doc__,
    reads=(
        (EmbedOptions, ("posters", "model", "weights")),
        (CowatchOptions, ("holdout_fraction", "holdout_seed")),
    ),
    required=("--posters", "--output"),
    hides=("--num_shards",),
    overrides={
        "--model": {
            "default": DEFAULT_BACKBONE,
            "help": "The backbone to train from (a name, as for the embed stage).",
        },
        "--output": {"help": "The root the model, its report and the tables go under."},
    },
)


def _backbone(argv: list[str], model: str) -> str:
    """The backbone to train: --model when given, else DEFAULT_BACKBONE."""
    given = any(a == _MODEL_FLAG or a.startswith(f"{_MODEL_FLAG}=") for a in argv)
    backbone = model if given else DEFAULT_BACKBONE
    if backbone.endswith(".keras"):
        raise UsageError(
            f"{_MODEL_FLAG} must name a backbone to train from, not {backbone} — give a backbone "
            f"name such as {DEFAULT_BACKBONE} (a .keras file is for the embed stage)"
        )
    return backbone


def train_config(options: PipelineOptions, argv: list[str]):
    """The frozen TrainConfig of parsed options."""
    from models.training import TrainConfig  # TensorFlow: not for --help or a bad flag

    opts = options.view_as(TrainOptions)
    embed_opts = options.view_as(EmbedOptions)
    return TrainConfig(
        backbone=_backbone(argv, embed_opts.model),
        weights=embed_opts.weights,
        genre_set=opts.genre_set,
        embedding_dim=opts.embedding_dim,
        warmup_epochs=opts.warmup_epochs,
        warmup_runs=opts.warmup_runs,
        metric_epochs=opts.metric_epochs,
        triplet_margin=opts.triplet_margin,
        unfreeze_blocks=opts.unfreeze_blocks,
        learning_rate=opts.learning_rate,
        fine_tune_learning_rate=opts.fine_tune_learning_rate,
        batch_size=opts.batch_size_train,
        dropout=opts.head_dropout,
        l2=opts.head_l2,
        patience=opts.patience,
        classification_weight=opts.classification_weight,
        flip_augment=not opts.no_flip_augment,
        seed=opts.seed,
        objective=opts.objective,
    )


def cowatch_targets(options: PipelineOptions) -> dict | None:
    """movie id -> co-watch vector for the audience objectives (hidden films left out)."""
    opts = options.view_as(TrainOptions)
    if opts.objective not in ("audience", "both"):
        return None
    if not opts.cowatch_vectors:
        raise UsageError(
            f"--objective={opts.objective} needs --cowatch_vectors (run python -m "
            "pipelines.cowatch --watch_history=... --output=... first), or use "
            "--objective=genres when there is no watch history"
        )
    pattern = opts.cowatch_vectors
    if not pattern.endswith(".parquet"):
        pattern = FileSystems.join(pattern, "embeddings", "*", "*.parquet")
    table = read_vector_table(pattern)
    holdout = holdout_of(options)
    return {
        int(m): v for m, v in zip(table.ids.tolist(), table.vectors, strict=True)
        if not holdout.is_hidden(int(m))
    }


def _save_model_and_train(
    config, layout: OutputLayout, model_dir: str, neighbours: int, targets: dict | None
) -> dict:
    """Train on this run's transformed examples; write the model beside the transform output."""
    # TensorFlow takes seconds to import: only once the pipeline has run.
    from models.training import EXPORT_PREFIX
    from models.training import train_and_evaluate

    name = f"{EXPORT_PREFIX}_{config.backbone}.keras"
    model_uri = FileSystems.join(model_dir, name)
    examples = layout.table_glob(TRANSFORMED_TABLE, ".tfrecord")
    with tempfile.TemporaryDirectory(prefix="train-model-") as tmp:
        local = model_uri if "://" not in model_uri else os.path.join(tmp, name)
        report = train_and_evaluate(config, examples, model_dir, local, neighbours, targets)
        if local != model_uri:
            with open(local, "rb") as handle:
                write_bytes(model_uri, handle.read())
    report["model_path"] = model_uri
    report["transform_dir"] = model_dir
    write_bytes(FileSystems.join(model_dir, CLASSES_FILE), "\n".join(report["classes"]).encode())
    return report


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run the train stage; returns the evaluation report (as written), with the run's counts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = COMMAND.parse(argv)
    opts = options.view_as(TrainOptions)
    common = options.view_as(CommonOptions)
    posters_flag = options.view_as(EmbedOptions).posters
    checks.required(
        {"--posters": posters_flag, "--output": common.output},
        "the scrape stage's --output root (or a TFRecord glob) and the folder to write to",
    )
    config = train_config(options, argv)
    checks.model_flags(config.backbone, config.weights)
    from models.registry import get_spec  # TensorFlow: imported once the flags are good

    try:
        get_spec(config.backbone)
    except ValueError as exc:
        raise UsageError(f"{_MODEL_FLAG}={config.backbone}: {one_line(exc)}") from None
    checks.matching_files(
        posters_glob(posters_flag), "--posters", posters_flag,
        "give the scrape stage's --output root or a glob of its .tfrecord files",
    )  # fmt: skip
    checks.writable_output(common.output)
    targets = cowatch_targets(options)
    started_at = datetime.datetime.now(datetime.UTC)
    layout = OutputLayout.next_run(common.output)
    if not options.view_as(TestOptions).dry_run:
        # What a killed run left, before its run number is reused, and before building the
        # pipeline: tf.Transform writes temporary assets under tmp/run-NNNN while it does.
        layout.discard_unpublished()
    model_dir = FileSystems.join(common.output, MODEL_FOLDER, layout.run_id)
    pattern = posters_glob(posters_flag)
    from models.preprocessing import transform_config  # tf.Transform: once the flags are good

    settings = TransformSettings(
        custom_config=transform_config(config.genre_set),
        transform_dir=model_dir,
        examples_prefix=layout.table_prefix(TRANSFORMED_TABLE),
        temp_dir=FileSystems.join(common.output, "tmp", layout.run_id),
    )
    _LOG.info("train %s on %s -> %s (%s)", config.backbone, pattern, model_dir, layout.run_id)

    pipeline = make_pipeline(options, test_pipeline)
    read = pipeline | "ReadPosters" >> ReadTFRecordFiles(
        pattern, PosterRecord, layout.run_id, namespace=METRICS_NAMESPACE
    )
    posters = read.records | "Limit" >> FirstPosters(opts.max_posters)
    instances, bad_posters = posters | "Instances" >> PosterInstances(layout.run_id)
    dead = (read.dead_letter, bad_posters) | "AllDeadLetters" >> beam.Flatten()
    _ = instances | "Transform" >> AnalyzeAndTransformPosters(settings)
    _ = dead | "WriteDeadLetters" >> WriteShards(
        layout.table_prefix(DeadLetter.TABLE),
        ".parquet",
        1,
        parquet_encoder(DeadLetter),
        sort_key=lambda d: (d.movie_id or 0, d.stage, d.reason, d.input_row),
    )
    result = pipeline.run()
    result.wait_until_finish()
    if options.view_as(TestOptions).dry_run:
        return {}
    if FileSystems.exists(settings.temp_dir):
        FileSystems.delete([settings.temp_dir])
    counters = log_counters(result, METRICS_NAMESPACE)
    report = _save_model_and_train(config, layout, model_dir, opts.neighbours, targets)
    report["holdout"] = holdout_of(options).describe()
    unreadable = counters.get("unreadable_records", 0)  # corrupt TFRecords, dead-lettered
    counts = {
        "input_rows": counters.get("posters_read", 0) + unreadable,
        "written": counters.get("instances", 0),
        "duplicates": 0,
        "dead_lettered": counters.get("dead_lettered", 0) + unreadable,
        "already_present": 0,
    }
    public = recorded_options(options)
    public.update(backbone=config.backbone, model_path=report["model_path"])
    row = manifest.build_manifest(
        layout, "train", started_at, pattern, public, counts,
        {"examples": report["examples"], "unlabelled": report["unlabelled"]},
    )  # fmt: skip
    report.update(
        run_id=layout.run_id,
        output_path=layout.root,
        counts=counts,
        accounting_ok=row.accounting_ok,
        identity=json.loads(manifest.manifest_json(row))["identity"],
    )
    write_bytes(
        FileSystems.join(model_dir, REPORT_FILE),
        (json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )
    manifest.write_manifest(layout, row)
    return report


def report_text(report: Mapping) -> str:
    """The report table, the audience probe, where the model is and the accounting identity."""
    from models.evaluation import format_report_table  # TensorFlow: not for --help

    lines = [format_report_table(report)]
    if report.get("audience"):
        a = report["audience"]
        lines.append(
            f"audience: test mean cosine to co-watch vectors {a['trained_mean_cosine']:.4f} "
            f"(ridge probe on the untrained backbone {a['ridge_probe_mean_cosine']:.4f}, "
            f"{a['test_films']} test films)"
        )
    lines.append(f"model {report['model_path']} (run {report['run_id']}); report beside it")
    lines.append(report["identity"])
    return "\n".join(lines)


if __name__ == "__main__":
    main(run, show=report_text)
