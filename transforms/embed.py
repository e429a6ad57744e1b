"""Embedding posters with a CNN through Beam's RunInference.

Steps: decode and resize each poster for the model (failures dead-lettered), skip posters whose
(content hash, model version) is already embedded, run the keyed TensorFlow model handler (one
model per worker process, optionally shared across processes, the GPU used when visible), and
turn predictions into :class:`schemas.EmbeddingRow` rows. Inference failures are dead-lettered
through ``with_exception_handling``.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import tempfile
import traceback
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference import utils as inference_utils
from apache_beam.ml.inference.base import KeyedModelHandler
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy

from monitoring import progress
from schemas import DeadLetter
from schemas import DuplicateRecord
from schemas import EmbeddingRow

DEAD_LETTER = "dead_letter"
PROGRESS_TASK = "posters embedded"
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """What the embedding transforms need: the model file, its identity and batching."""

    model_uri: str
    model_name: str
    model_version: str
    input_size: tuple[int, int]
    dim: int
    run_id: str
    min_batch_size: int = 8
    max_batch_size: int = 64
    share_model_across_processes: bool = False


def prepare_image(jpeg: bytes, input_size: tuple[int, int]) -> np.ndarray:
    """Decoded RGB pixels resized to the model's input size, float32 0..255 (HxWx3).

    The same TensorFlow op the training stage's tf.Transform graph uses, so trained models
    embed exactly the pixels they were trained on.
    """
    from models.image_ops import decode_and_resize_numpy  # TensorFlow: loaded on the workers

    return decode_and_resize_numpy(jpeg, input_size)


def _local_copy(uri: str) -> str:
    """A local path holding the file at ``uri`` (gs:// files are copied to a temp dir)."""
    if "://" not in uri:
        return uri
    local = os.path.join(tempfile.mkdtemp(prefix="embed-model-"), os.path.basename(uri))
    with FileSystems.open(uri) as src, open(local, "wb") as dst:
        dst.write(src.read())
    return local


def padded_size(n: int, min_batch_size: int) -> int:
    """The batch size a batch of n is padded to: the next power of two >= n and >= the minimum."""
    size = 1 << max(0, (n - 1).bit_length())
    return max(size, min_batch_size)


class PaddedPredict:
    """Batched ``predict_on_batch`` with batches zero-padded to a few fixed sizes.

    The compiled predict function is traced once per batch shape (about a second each for an
    Inception-sized model), so padding to powers of two bounds the number of traces to a handful
    however BatchElements sizes its batches. Padding rows are dropped from the outputs.
    """

    def __init__(self, min_batch_size: int) -> None:
        self._min = min_batch_size

    def __call__(
        self, model: Any, batch: Sequence[np.ndarray], inference_args: dict | None = None,
        model_id: str | None = None,
    ) -> Iterable[PredictionResult]:  # fmt: skip
        stacked = np.stack(batch, axis=0)
        target = padded_size(len(batch), self._min)
        if target > len(batch):
            padding = np.zeros((target - len(batch), *stacked.shape[1:]), stacked.dtype)
            stacked = np.concatenate([stacked, padding])
        outputs = np.asarray(model.predict_on_batch(stacked), np.float32)[: len(batch)]
        return inference_utils._convert_to_result(batch, outputs, model_id)


class PosterModelHandler(TFModelHandlerNumpy):
    """Loads the poster embedding ``.keras`` model (local or gs://) with the GPU configured."""

    def __init__(self, config: EmbedConfig) -> None:
        super().__init__(
            config.model_uri,
            inference_fn=PaddedPredict(config.min_batch_size),
            min_batch_size=config.min_batch_size,
            max_batch_size=config.max_batch_size,
            large_model=config.share_model_across_processes,
        )
        self._config = config

    def load_model(self):
        """Configure GPUs (memory growth), then load the Keras model once per process."""
        # Keras loads in seconds: on the workers, when RunInference loads the model.
        import keras

        import models.layers  # noqa: F401 - registers the custom layers for deserialisation
        from models.registry import configure_gpu

        gpus = configure_gpu()
        model = keras.saving.load_model(_local_copy(self._config.model_uri), compile=False)
        _LOG.info("loaded %s on %s", self._config.model_version, gpus or "CPU")
        return model

    def get_metrics_namespace(self) -> str:
        """Metrics namespace of RunInference's own counters."""
        return "embed"


def _dead_letter(run_id: str, stage: str, record_key: tuple, exc: Any) -> DeadLetter:
    movie_id, sha = record_key
    if isinstance(exc, tuple) and len(exc) >= 2:  # (type, message, traceback) from Beam
        reason, detail = getattr(exc[0], "__name__", str(exc[0])), str(exc[1])
    else:
        reason, detail = type(exc).__name__, "".join(traceback.format_exception_only(exc)).strip()
    return DeadLetter(
        run_id=run_id,
        stage=stage,
        reason=reason,
        detail=detail[:2000],
        input_row=f"movie_id={movie_id} content_sha256={sha}",
        attempts=1,
        movie_id=movie_id,
    )


class _ToRowFn(beam.DoFn):
    def __init__(self, config: EmbedConfig) -> None:
        self._config = config
        self._rows = beam.metrics.Metrics.counter("embed", "vectors")

    def start_bundle(self) -> None:
        self._now = datetime.datetime.now(datetime.UTC)

    def process(self, keyed: tuple[tuple[int, str], PredictionResult]):
        progress.advance(PROGRESS_TASK)
        (movie_id, sha), result = keyed
        vector = np.asarray(result.inference, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                _dead_letter(self._config.run_id, "inference", (movie_id, sha),
                             ValueError(f"degenerate vector (norm {norm})")),
            )  # fmt: skip
            return
        self._rows.inc()
        yield EmbeddingRow(
            movie_id=movie_id,
            dim=int(vector.size),
            model_name=self._config.model_name,
            model_version=self._config.model_version,
            content_sha256=sha,
            poster_of=movie_id,
            embedded_at=self._now,
            embedding=tuple(float(v) for v in vector / norm),
        )


class EmbedPosters(beam.PTransform):
    """PosterRecord -> EmbeddingRow; bad images and failed inferences go to ``dead_letter``."""

    def __init__(self, config: EmbedConfig) -> None:
        super().__init__()
        if not 1 <= config.min_batch_size <= config.max_batch_size:
            raise ValueError("need 1 <= --min_batch_size <= --max_batch_size")
        self._config = config

    def expand(self, posters: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        config = self._config
        size = config.input_size
        keyed = posters | "KeyPosters" >> beam.Map(
            lambda r: ((r.movie_id, r.content_sha256), r.image_jpeg)
        )
        decoded, bad_images = (
            keyed
            | "DecodeAndResize"
            >> beam.Map(lambda kv: (kv[0], prepare_image(kv[1], size))).with_exception_handling()
        )
        predictions, failed = (
            decoded
            | "RunInference"
            >> RunInference(KeyedModelHandler(PosterModelHandler(config))).with_exception_handling()
        )
        rows = predictions | "ToRows" >> beam.ParDo(_ToRowFn(config)).with_outputs(
            DEAD_LETTER, main="rows"
        )
        run_id = config.run_id
        decode_dead = bad_images | "DecodeDeadLetters" >> beam.Map(
            lambda bad: _dead_letter(run_id, "decode", bad[0][0], bad[1])
        )
        inference_dead = failed.failed_inferences | "InferenceDeadLetters" >> beam.FlatMap(
            lambda bad: [_dead_letter(run_id, "inference", key, bad[1]) for key, _ in bad[0]]
        )
        dead = (decode_dead, inference_dead, rows.dead_letter) | "AllEmbedDeadLetters" >> (
            beam.Flatten()
        )
        return rows.rows, dead


class CanonicalNotEmbedded(ValueError):
    """A film shares a poster whose film has no vector of this model."""


def _latest_duplicate(keyed: tuple[int, Iterable[DuplicateRecord]]) -> tuple[int, DuplicateRecord]:
    """A film's poster duplicate record of the latest scrape run (a film may be re-fetched)."""
    movie_id, records = keyed
    return movie_id, max(records, key=DuplicateRecord.recency)


class _ShareFn(beam.DoFn):
    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._shared = beam.metrics.Metrics.counter("embed", "vectors_shared_with_duplicates")

    def process(self, joined: tuple[int, dict]):
        canonical, groups = joined
        rows = sorted(groups["vector"], key=lambda r: r.embedded_at)
        for duplicate in groups["duplicate"]:
            if not rows:
                problem = CanonicalNotEmbedded(
                    f"film {duplicate.movie_id} shares the poster of film {canonical}, "
                    "which has no vector of this model (see its dead letters)"
                )
                key = (duplicate.movie_id, "")
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER, _dead_letter(self._run_id, "share", key, problem)
                )
                continue
            self._shared.inc()
            yield dataclasses.replace(rows[-1], movie_id=duplicate.movie_id, poster_of=canonical)


class ShareCanonicalVectors(beam.PTransform):
    """EmbeddingRows for films whose poster duplicates another film's: the canonical's vector.

    Input: ``(vectors, duplicates)``: every EmbeddingRow of the model (new and earlier) and the
    scrape stage's DuplicateRecords. Films dropped as ``exact`` or ``near`` duplicates get a row
    with the canonical film's vector and ``poster_of`` naming it, so no film loses its place in
    the index, the neighbour tables or the candidates. A film whose canonical has no vector is
    dead-lettered (stage ``share``).
    """

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self._run_id = run_id

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]):
        vectors, duplicates = inputs
        by_canonical = (
            duplicates
            | "PosterDuplicates" >> beam.Filter(lambda d: d.kind in DuplicateRecord.POSTER_KINDS)
            | "ByFilm" >> beam.Map(lambda d: (d.movie_id, d))
            | "GroupByFilm" >> beam.GroupByKey()
            | "LatestRun" >> beam.Map(_latest_duplicate)
            | "ByCanonical" >> beam.Map(lambda kv: (kv[1].canonical_movie_id, kv[1]))
        )
        own = (
            vectors
            | "OwnPosters" >> beam.Filter(lambda r: r.poster_of == r.movie_id)
            | "ByMovie" >> beam.Map(lambda r: (r.movie_id, r))
        )
        return (
            {"vector": own, "duplicate": by_canonical}
            | "JoinCanonical" >> beam.CoGroupByKey()
            | "Share" >> beam.ParDo(_ShareFn(self._run_id)).with_outputs(DEAD_LETTER, main="rows")
        )
