"""Tests for the serialisable preprocessing and normalisation layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models import layers


def _images(seed: int = 0, shape: tuple[int, ...] = (2, 5, 7, 3)) -> np.ndarray:
    """Uniform random float32 pixels in 0..255."""
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="caffe")),
        ("tf", lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="tf")),
        ("torch", lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="torch")),
    ],
)
def test_preprocess_layers_match_keras_preprocess_input(mode, reference):
    x = _images()
    got = keras.ops.convert_to_numpy(layers.preprocess_layer(mode)(x))
    np.testing.assert_allclose(got, reference(x.copy()), rtol=1e-5, atol=1e-4)


def test_caffe_preprocess_is_bgr_minus_means():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], dtype=np.float32)
    got = keras.ops.convert_to_numpy(layers.CaffePreprocess()(pixel))
    np.testing.assert_allclose(got[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_preprocess_none_is_no_layer_and_unknown_mode_fails():
    assert layers.preprocess_layer("none") is None
    with pytest.raises(ValueError, match="unknown preprocess mode"):
        layers.preprocess_layer("inception")


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_zero():
    x = np.array(
        [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [2e-10, -1e-10, 0.0], [1e30, 1e30, 0.0]],
        dtype=np.float32,
    )
    got = keras.ops.convert_to_numpy(layers.L2Normalize()(x))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], [0.6, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(got[1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(got[[0, 2, 3]], axis=1), 1.0, rtol=1e-6)


def test_keras_round_trip_with_every_custom_layer_under_safe_mode(tmp_path):
    inputs = keras.Input(shape=(8, 8, 3), name="image")
    branches = [
        keras.layers.Flatten()(layer(inputs))
        for layer in (layers.CaffePreprocess(), layers.TfPreprocess(), layers.TorchPreprocess())
    ]
    x = keras.layers.Dense(4)(keras.layers.Concatenate()(branches))
    model = keras.Model(inputs, layers.L2Normalize(axis=-1, epsilon=1e-9)(x))
    path = tmp_path / "layers.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)

    x = _images(1, (3, 8, 8, 3))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )
    loaded_l2 = [layer for layer in loaded.layers if isinstance(layer, layers.L2Normalize)]
    assert [(layer.axis, layer.epsilon) for layer in loaded_l2] == [(-1, 1e-9)]
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
