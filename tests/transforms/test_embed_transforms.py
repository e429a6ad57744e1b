"""Embedding transforms: batch padding and image preparation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from transforms.embed import PaddedPredict
from transforms.embed import padded_size
from transforms.embed import prepare_image


@pytest.mark.parametrize(
    ("n", "minimum", "expected"), [(1, 8, 8), (8, 8, 8), (9, 8, 16), (33, 8, 64), (5, 1, 8)]
)
def test_padded_sizes_are_powers_of_two_at_least_the_minimum(n, minimum, expected):
    assert padded_size(n, minimum) == expected


class RecordingModel:
    def __init__(self):
        self.shapes = []

    def predict_on_batch(self, x):
        self.shapes.append(x.shape)
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)


def test_padding_rows_are_dropped_and_results_kept_in_order():
    model = RecordingModel()
    batch = [np.full((2, 2, 3), i, np.float32) for i in range(5)]
    results = list(PaddedPredict(4)(model, batch))
    assert model.shapes == [(8, 2, 2, 3)]
    assert [float(r.inference[0]) for r in results] == [12.0 * i for i in range(5)]
    assert all(r.example is b for r, b in zip(results, batch, strict=True))


def test_prepare_image_resizes_to_the_model_input():
    buffer = io.BytesIO()
    Image.new("RGB", (182, 268), (10, 200, 30)).save(buffer, format="JPEG")
    pixels = prepare_image(buffer.getvalue(), (227, 227))
    assert pixels.shape == (227, 227, 3) and pixels.dtype == np.float32
    assert abs(float(pixels[..., 1].mean()) - 200) < 3


def test_prepare_image_rejects_garbage():
    with pytest.raises(tf.errors.InvalidArgumentError):
        prepare_image(b"\xff\xd8not really", (64, 64))
