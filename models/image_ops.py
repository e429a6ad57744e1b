"""The one image decode-and-resize used by training (tf.Transform) and by the embed stage.

Both paths call :func:`decode_and_resize`, a pure TensorFlow function, so a trained model sees
exactly the pixels at embedding time that it saw in training. Normalisation for the backbone
(caffe / tf / torch modes) happens inside the Keras model itself.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def decode_and_resize(image_bytes: tf.Tensor, input_size: tuple[int, int]) -> tf.Tensor:
    """Encoded image (JPEG/PNG scalar string) -> float32 RGB 0..255 of shape [height, width, 3]."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(
        tf.cast(image, tf.float32), input_size, method="bilinear", antialias=True
    )
    return tf.clip_by_value(resized, 0.0, 255.0)


def decode_and_resize_numpy(image_bytes: bytes, input_size: tuple[int, int]) -> np.ndarray:
    """:func:`decode_and_resize` on Python bytes, as a NumPy array (for Beam DoFns and tests)."""
    return decode_and_resize(tf.constant(image_bytes), tuple(input_size)).numpy()
