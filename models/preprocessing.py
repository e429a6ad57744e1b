"""The tf.Transform preprocessing of posters for training: labels, split and the JPEG bytes.

:func:`preprocessing_fn` is run by ``tft_beam.AnalyzeAndTransformDataset`` over the scrape
stage's poster TFRecords. Per poster it computes

* the multi-hot genre label, over a vocabulary of the genre set's classes that tf.Transform
  computes from the data (``tft.compute_and_apply_vocabulary``, most frequent first);
* the split (train / validation / test), from a farmhash of the movie id, so a film always falls
  in the same split whatever else is in the data;
* the poster's JPEG bytes, passed through unchanged: the transformed examples store no pixels
  (float32 pixels took 27 times as much space on the real posters). The training input pipeline,
  :func:`models.training.transformed_batches`, decodes and resizes them with
  :func:`models.image_ops.decode_and_resize`, the very function the embed stage applies to every
  poster, at the backbone's and the raw-pixels baseline's input sizes; normalisation for the
  backbone is a layer inside the model, so a trained model sees at embedding time exactly the
  pixels it was trained on.

Configuration comes in ``custom_config`` (as TFX's Transform component passes it), built by
:func:`transform_config`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.tf_metadata import dataset_metadata

from models import features
from schemas import PosterRecord

GENRE_SET = "genre_set"


def transform_config(genre_set: str = features.DEFAULT_GENRE_SET) -> dict[str, Any]:
    """The ``custom_config`` of :func:`preprocessing_fn`, checked."""
    features.genre_mapping(genre_set)
    return {GENRE_SET: genre_set}


def raw_feature_spec() -> dict[str, Any]:
    """The parsing spec of the PosterRecord columns the transform reads."""
    spec = PosterRecord.feature_spec()
    return {key: spec[key] for key in features.RAW_FEATURE_KEYS}


def raw_metadata() -> dataset_metadata.DatasetMetadata:
    """tf.Transform metadata of the raw instances made by :func:`to_raw_instance`."""
    return dataset_metadata.DatasetMetadata.from_feature_spec(raw_feature_spec())


def to_raw_instance(record: PosterRecord) -> dict[str, Any]:
    """A poster as a tf.Transform instance dict (the columns in ``RAW_FEATURE_KEYS``)."""
    instance = {
        features.MOVIE_ID_KEY: int(record.movie_id),
        features.IMAGE_BYTES_KEY: bytes(record.image_jpeg),
        features.GENRES_KEY: [g.encode("utf-8") for g in record.genres],
    }
    return {key: instance[key] for key in features.RAW_FEATURE_KEYS}


def split_index(movie_ids: tf.Tensor) -> tf.Tensor:
    """int64 split index (``features.TRAIN`` / ``VALIDATION`` / ``TEST``) of each movie id."""
    buckets = tf.strings.to_hash_bucket_fast(
        tf.strings.as_string(movie_ids), features.SPLIT_BUCKETS
    )
    train_end = features.TRAIN_BUCKETS
    validation_end = features.TRAIN_BUCKETS + features.VALIDATION_BUCKETS
    return tf.where(
        buckets < train_end,
        tf.constant(features.TRAIN, tf.int64),
        tf.where(
            buckets < validation_end,
            tf.constant(features.VALIDATION, tf.int64),
            tf.constant(features.TEST, tf.int64),
        ),
    )


def multi_hot_genres(genres: tf.SparseTensor, genre_set: str) -> tf.Tensor:
    """float32 [batch, num_classes] labels over the tf.Transform genre vocabulary."""
    mapping = features.genre_mapping(genre_set)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(mapping), tf.string), tf.constant(list(mapping.values()), tf.string)
        ),
        default_value="",
    )
    classes = tf.sparse.map_values(table.lookup, genres)
    classes = tf.sparse.retain(classes, tf.not_equal(classes.values, ""))
    indices = tft.compute_and_apply_vocabulary(
        classes, vocab_filename=features.GENRE_VOCABULARY, name="genre_vocabulary"
    )
    indices = tf.sparse.retain(indices, indices.values >= 0)
    num_classes = len(features.class_names(genre_set))
    indicator = tf.sparse.to_indicator(indices, num_classes)
    return tf.cast(indicator, tf.float32)


def preprocessing_fn(
    inputs: dict[str, Any], custom_config: dict[str, Any] | None = None
) -> dict[str, tf.Tensor]:
    """Raw poster features -> movie id, split, multi-hot genre label and the JPEG bytes."""
    config = {**transform_config(), **(custom_config or {})}
    movie_ids = inputs[features.MOVIE_ID_KEY]
    return {
        features.MOVIE_ID_KEY: movie_ids,
        features.SPLIT_KEY: split_index(movie_ids),
        features.LABEL_KEY: multi_hot_genres(inputs[features.GENRES_KEY], config[GENRE_SET]),
        features.IMAGE_BYTES_KEY: inputs[features.IMAGE_BYTES_KEY],
    }


def bound_preprocessing_fn(custom_config: dict[str, Any]) -> Callable[[dict], dict]:
    """:func:`preprocessing_fn` with its configuration bound, for ``AnalyzeAndTransformDataset``."""
    return functools.partial(preprocessing_fn, custom_config=custom_config)
