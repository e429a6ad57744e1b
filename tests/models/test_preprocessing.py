"""preprocessing_fn with tf.Transform's own test helpers; the split; the feature definitions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from PIL import Image
from tensorflow_transform.beam import tft_unit

from models import features
from models import preprocessing
from schemas import PosterRecord
from tests.conftest import local_pipeline
from tests.fixtures import poster_record


def jpeg(seed: int, size: tuple[int, int] = (48, 36)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


RAW = [
    (11, ("Comedy", "Drama")),
    (12, ("Drama",)),
    (13, ("Documentary",)),
    (14, ("Horror", "Drama", "Crime")),
    (15, ("Crime", "Thriller", "Sci-Fi")),
]


def raw_instances() -> list[dict]:
    return [
        preprocessing.to_raw_instance(poster_record(movie_id, jpeg(movie_id), genres))
        for movie_id, genres in RAW
    ]


def expected_rows(genre_set: str, vocabulary: list[str]) -> list[dict]:
    splits = preprocessing.split_index(tf.constant([m for m, _ in RAW], tf.int64)).numpy()
    rows = []
    for (movie_id, genres), split in zip(RAW, splits, strict=True):
        data = jpeg(movie_id)
        poster = poster_record(movie_id, data, genres).image_jpeg
        classes = features.genre_classes(genres, genre_set)
        label = [1.0 if c in classes else 0.0 for c in vocabulary]
        label += [0.0] * (len(features.class_names(genre_set)) - len(label))
        rows.append({
            features.MOVIE_ID_KEY: movie_id,
            features.SPLIT_KEY: int(split),
            features.LABEL_KEY: np.array(label, np.float32),
            features.IMAGE_BYTES_KEY: poster,
        })  # fmt: skip
    return rows


class PreprocessingFnTest(tft_unit.TransformTestCase):
    """AnalyzeAndTransformDataset over five posters, compared with values computed directly."""

    def _check(self, genre_set: str, vocabulary: list[str]) -> str:
        temp_dir = self.get_temp_dir() + f"/{genre_set}"
        config = preprocessing.transform_config(genre_set)
        self.assertAnalyzeAndTransformResults(
            raw_instances(),
            preprocessing.raw_metadata(),
            preprocessing.bound_preprocessing_fn(config),
            expected_data=expected_rows(genre_set, vocabulary),
            expected_vocab_file_contents={
                features.GENRE_VOCABULARY: [v.encode() for v in vocabulary]
            },
            beam_pipeline=local_pipeline(),
            temp_dir=temp_dir,
        )
        return temp_dir

    def test_six_genres_labels_split_and_jpeg_bytes(self):
        # Most frequent first; ties in descending order of the class name.
        temp_dir = self._check("six", ["Drama", "Thriller", "Horror", "Comedy"])
        spec = tft.TFTransformOutput(temp_dir).transformed_feature_spec()
        self.assertEqual(spec[features.LABEL_KEY].shape, [6])
        # The image is stored as the poster's encoded bytes, never as decoded float pixels.
        self.assertEqual(spec[features.IMAGE_BYTES_KEY], tf.io.FixedLenFeature([], tf.string))
        self.assertEqual(
            set(spec),
            {features.MOVIE_ID_KEY, features.SPLIT_KEY, features.LABEL_KEY,
             features.IMAGE_BYTES_KEY},
        )  # fmt: skip

    def test_genre_groups_merge_related_genres(self):
        self._check("groups", ["drama", "crime_thriller", "horror", "fantasy_scifi", "documentary",
                               "comedy"])  # fmt: skip

    def test_the_saved_graph_passes_the_poster_bytes_through_unchanged(self):
        temp_dir = self._check("six", ["Drama", "Thriller", "Horror", "Comedy"])
        output = tft.TFTransformOutput(temp_dir)
        posters = [r[features.IMAGE_BYTES_KEY] for r in raw_instances()]
        raw = {
            features.MOVIE_ID_KEY: tf.constant([m for m, _ in RAW], tf.int64),
            features.IMAGE_BYTES_KEY: tf.constant(posters),
            features.GENRES_KEY: tf.sparse.from_dense(tf.constant([["Drama"]] * len(RAW))),
        }
        transformed = output.transform_raw_features(raw)
        self.assertEqual(list(transformed[features.IMAGE_BYTES_KEY].numpy()), posters)


def test_split_is_deterministic_and_about_80_10_10():
    ids = np.arange(1, 20_001, dtype=np.int64)
    splits = preprocessing.split_index(tf.constant(ids)).numpy()
    again = preprocessing.split_index(tf.constant(ids[::-1])).numpy()[::-1]
    shares = np.bincount(splits, minlength=3) / len(ids)
    np.testing.assert_array_equal(splits, again)
    np.testing.assert_allclose(shares, [0.8, 0.1, 0.1], atol=0.01)


def test_feature_keys_are_poster_columns_and_genre_sets_use_the_vocabulary():
    spec = preprocessing.raw_feature_spec()
    assert set(spec) == set(features.RAW_FEATURE_KEYS) <= set(PosterRecord.column_names())
    assert features.class_names("six") == tuple(sorted(features.SIX_GENRES))
    assert features.class_names("all") == tuple(sorted(features.GENRE_SETS["all"]))
    for mapping in features.GENRE_SETS.values():
        assert set(mapping) <= set(features.GENRE_SETS["all"])
    assert features.genre_classes(("Crime", "Thriller", "Western"), "groups") == (
        "action_adventure",
        "crime_thriller",
    )
    with pytest.raises(ValueError, match="unknown genre set"):
        preprocessing.transform_config("seven")
