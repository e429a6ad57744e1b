"""The from-scratch small CNN and the raw-pixels baseline."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models import pixels
from models import small_cnn


def test_small_cnn_shapes_and_layers():
    model = small_cnn.small_cnn()
    assert model.input_shape == (None, 128, 128, 3)
    assert model.output_shape == (None, 128)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Rescaling", "Conv2D", "BatchNormalization", "GlobalAveragePooling2D", "Dense"} <= kinds
    other = small_cnn.small_cnn(input_size=(64, 96), embedding_dim=32)
    assert other.input_shape == (None, 64, 96, 3)
    assert other.output_shape == (None, 32)


def test_small_cnn_trains():
    keras.utils.set_random_seed(0)
    model = small_cnn.small_cnn(input_size=(32, 32), embedding_dim=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    first = model.train_on_batch(x, y)
    for _ in range(5):
        last = model.train_on_batch(x, y)
    assert last < first


def test_pixels_is_block_average_flattened_and_normalised():
    model = pixels.pixels()
    image = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)

    got = keras.ops.convert_to_numpy(model(image))

    blocks = image.reshape(2, 16, 4, 16, 4, 3).mean(axis=(2, 4)).reshape(2, -1)
    expected = blocks / np.linalg.norm(blocks, axis=1, keepdims=True)
    assert got.shape == (2, pixels.FEATURE_DIM) == (2, 768)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_pixels_rejects_sizes_off_the_grid():
    with pytest.raises(ValueError, match="multiple of the grid"):
        pixels.pixel_features(input_size=(60, 64))
