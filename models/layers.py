"""Serialisable preprocessing and normalisation layers used inside every embedding model.

Each layer is registered under the ``poster_recs`` package, so a ``.keras`` file that uses them
loads with ``keras.saving.load_model(path, safe_mode=True)`` once this module has been imported:
no Lambda layers, no pickled code.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

PACKAGE = "poster_recs"

IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
IMAGENET_RGB_MEANS = (0.485, 0.456, 0.406)
IMAGENET_RGB_STDS = (0.229, 0.224, 0.225)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CaffePreprocess(keras.layers.Layer):
    """ImageNet 'caffe' mode: RGB 0..255 to BGR with the ImageNet BGR means subtracted."""

    def call(self, inputs: Any) -> Any:
        """Flip channels to BGR and subtract the per-channel means."""
        x = ops.cast(inputs, self.compute_dtype)
        means = ops.convert_to_tensor(IMAGENET_BGR_MEANS, dtype=self.compute_dtype)
        return ops.flip(x, axis=-1) - means

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Same shape as the input."""
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class TfPreprocess(keras.layers.Layer):
    """ImageNet 'tf' mode: RGB 0..255 scaled to -1..1."""

    def call(self, inputs: Any) -> Any:
        """Scale to -1..1."""
        x = ops.cast(inputs, self.compute_dtype)
        return x / 127.5 - 1.0

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Same shape as the input."""
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class TorchPreprocess(keras.layers.Layer):
    """ImageNet 'torch' mode: RGB 0..255 to 0..1, then normalised by the ImageNet mean and std."""

    def call(self, inputs: Any) -> Any:
        """Scale to 0..1 and standardise each channel."""
        x = ops.cast(inputs, self.compute_dtype) / 255.0
        means = ops.convert_to_tensor(IMAGENET_RGB_MEANS, dtype=self.compute_dtype)
        stds = ops.convert_to_tensor(IMAGENET_RGB_STDS, dtype=self.compute_dtype)
        return (x - means) / stds

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Same shape as the input."""
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Normalize(keras.layers.Layer):
    """Scales each vector along ``axis`` to unit L2 norm, in float32 (a zero vector stays zero).

    Vectors are first divided by their largest absolute value, so features far below the float32
    range of their squares (random backbones can give norms near 1e-10) still come out unit-norm.
    """

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon

    def call(self, inputs: Any) -> Any:
        """Divide by the largest magnitude, then by the L2 norm (floored at ``epsilon``)."""
        x = ops.cast(inputs, "float32")
        scale = ops.max(ops.abs(x), axis=self.axis, keepdims=True)
        x = x / ops.maximum(scale, _FLOAT32_TINY)
        norm = ops.sqrt(ops.sum(ops.square(x), axis=self.axis, keepdims=True))
        return x / ops.maximum(norm, self.epsilon)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Same shape as the input."""
        return input_shape

    def compute_output_spec(self, inputs: Any) -> keras.KerasTensor:
        """A float32 tensor of the input's shape."""
        return keras.KerasTensor(inputs.shape, dtype="float32")

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, for serialisation."""
        config = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config


PREPROCESS_MODES = ("caffe", "tf", "torch", "none")

_PREPROCESS_LAYERS: dict[str, type[keras.layers.Layer]] = {
    "caffe": CaffePreprocess,
    "tf": TfPreprocess,
    "torch": TorchPreprocess,
}


def preprocess_layer(mode: str, name: str = "preprocess") -> keras.layers.Layer | None:
    """The preprocessing layer for ``mode`` ('caffe', 'tf', 'torch'), or None for 'none'."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocess mode {mode!r}; use one of {PREPROCESS_MODES}")
    if mode == "none":
        return None
    return _PREPROCESS_LAYERS[mode](name=name)
