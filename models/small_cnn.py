"""A small VGG-style CNN to train from scratch on posters.

Raw RGB 0..255 in (rescaled to 0..1 inside the model), an ``embedding_dim`` vector out, not yet
normalised: the registry adds the L2 normalisation, a trainer adds whatever head its loss needs.
"""

from __future__ import annotations

import keras

INPUT_SIZE = (128, 128)
EMBEDDING_DIM = 128
BLOCK_FILTERS = (32, 64, 128, 256)


def _block(x: keras.KerasTensor, index: int, filters: int) -> keras.KerasTensor:
    """Conv-BN-ReLU twice, then a 2x2 max pool."""
    for conv in (1, 2):
        prefix = f"block{index}_conv{conv}"
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=prefix)(x)
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
        x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    return keras.layers.MaxPooling2D(pool_size=2, name=f"block{index}_pool")(x)


def small_cnn(
    input_size: tuple[int, int] = INPUT_SIZE,
    embedding_dim: int = EMBEDDING_DIM,
    name: str = "small_cnn",
) -> keras.Model:
    """A randomly initialised VGG-style CNN: RGB 0..255 images to ``embedding_dim`` vectors."""
    inputs = keras.Input(shape=(*input_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for index, filters in enumerate(BLOCK_FILTERS, start=1):
        x = _block(x, index, filters)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(embedding_dim, name="embedding")(x)
    return keras.Model(inputs, x, name=name)
