"""The Beam side of the training stage: posters to tf.Transform instances, analyse, transform.

Steps: each :class:`schemas.PosterRecord` becomes a tf.Transform instance dict (posters whose
image TensorFlow cannot decode go to the dead-letter output, so the decode in the training input
pipeline never fails);
``tft_beam.AnalyzeAndTransformDataset`` runs :func:`models.preprocessing.preprocessing_fn` over
them; the transform graph (``transform_fn/`` and ``transformed_metadata/``) is written with
``tft_beam.WriteTransformFn`` beside the model, and the transformed examples as TFRecords.

The transformed examples hold each poster's JPEG bytes, not pixels (25 kB a poster on the 4,032
real posters, where float32 pixels at 227x227 with the baseline's 64x64 copy took 668 kB); the
training input pipeline decodes them. They stay Arrow record batches encoded to tf.Examples in C++
and are streamed to files, never grouped in memory.
"""

from __future__ import annotations

import dataclasses
import traceback
from typing import Any

import apache_beam as beam

from schemas import DeadLetter
from schemas import PosterRecord

DEAD_LETTER = "dead_letter"
METRICS_NAMESPACE = "train"
TRANSFORMED_TABLE = "transformed"
_DECODE_STAGE = "decode"


@dataclasses.dataclass(frozen=True)
class TransformSettings:
    """Where and how the posters are transformed."""

    custom_config: dict[str, Any]
    transform_dir: str
    examples_prefix: str
    temp_dir: str
    batch_size: int = 64


class _ToInstanceFn(beam.DoFn):
    """PosterRecord -> instance dict, or a DeadLetter when TensorFlow cannot decode the image."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id
        self._read = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "posters_read")
        self._instances = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "instances")
        self._dead = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "dead_lettered")

    def setup(self) -> None:
        import tensorflow as tf  # seconds to import: on the workers only, not at pipeline build

        self._tf = tf

    def process(self, record: PosterRecord):
        from models.preprocessing import to_raw_instance  # TensorFlow: on the workers only

        self._read.inc()
        try:
            self._tf.io.decode_image(record.image_jpeg, channels=3, expand_animations=False)
        except self._tf.errors.OpError as exc:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, self._dead_letter(record, exc))
            return
        self._instances.inc()
        yield to_raw_instance(record)

    def _dead_letter(self, record: PosterRecord, exc: Exception) -> DeadLetter:
        return DeadLetter(
            run_id=self._run_id,
            stage=_DECODE_STAGE,
            reason=type(exc).__name__,
            detail="".join(traceback.format_exception_only(exc)).strip()[:2000],
            input_row=f"movie_id={record.movie_id} content_sha256={record.content_sha256}",
            attempts=0,
            movie_id=record.movie_id,
        )


class PosterInstances(beam.PTransform):
    """PosterRecord -> (tf.Transform instance dicts, DeadLetters of undecodable images)."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self._run_id = run_id

    def expand(self, posters: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        results = posters | "ToInstance" >> beam.ParDo(_ToInstanceFn(self._run_id)).with_outputs(
            DEAD_LETTER, main="instances"
        )
        return results.instances, results[DEAD_LETTER]


class FirstPosters(beam.PTransform):
    """The ``limit`` posters with the smallest movie ids (all of them when ``limit`` is None)."""

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        if limit is not None and limit < 1:
            raise ValueError("--max_posters must be >= 1")
        self._limit = limit

    def expand(self, posters: beam.PCollection) -> beam.PCollection:
        if self._limit is None:
            return posters
        return (
            posters
            | "SmallestIds" >> beam.combiners.Top.Smallest(self._limit, key=lambda r: r.movie_id)
            | "Unpack" >> beam.FlatMap(lambda records: records)
        )


class AnalyzeAndTransformPosters(beam.PTransform):
    """Instances -> transform graph written to ``transform_dir``, transformed TFRecords written.

    Returns the PCollection of written example file names.
    """

    def __init__(self, settings: TransformSettings) -> None:
        super().__init__()
        if settings.batch_size < 1:
            raise ValueError("the transform batch size must be >= 1")
        self._settings = settings

    def expand(self, instances: beam.PCollection) -> beam.PCollection:
        # tf.Transform and TensorFlow take seconds to import: only when the training runs.
        import tensorflow_transform.beam as tft_beam

        from models.preprocessing import bound_preprocessing_fn
        from models.preprocessing import raw_metadata

        settings = self._settings
        with tft_beam.Context(temp_dir=settings.temp_dir, desired_batch_size=settings.batch_size):
            (transformed, metadata), transform_fn = (
                instances,
                raw_metadata(),
            ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                bound_preprocessing_fn(settings.custom_config), output_record_batches=True
            )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
                settings.transform_dir
            )
            encoded = (transformed, metadata) | "Encode" >> tft_beam.EncodeTransformedDataset()
        return encoded | "WriteExamples" >> beam.io.WriteToTFRecord(
            settings.examples_prefix, file_name_suffix=".tfrecord"
        )
