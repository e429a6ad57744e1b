"""The raw-pixels baseline: a poster shrunk to a 16x16 RGB thumbnail, flattened, L2-normalised.

It has no weights, so it is the floor that every learned embedding must beat.
"""

from __future__ import annotations

import keras

from models.layers import L2Normalize

INPUT_SIZE = (64, 64)
GRID = (16, 16)
FEATURE_DIM = GRID[0] * GRID[1] * 3


def pixel_features(
    input_size: tuple[int, int] = INPUT_SIZE,
    grid: tuple[int, int] = GRID,
    name: str = "pixel_features",
) -> keras.Model:
    """Average-pool an RGB image down to ``grid`` and flatten it (16x16x3 = 768 values)."""
    if input_size[0] % grid[0] or input_size[1] % grid[1]:
        raise ValueError(f"input size {input_size} is not a multiple of the grid {grid}")
    pool = (input_size[0] // grid[0], input_size[1] // grid[1])
    inputs = keras.Input(shape=(*input_size, 3), name="image")
    x = keras.layers.AveragePooling2D(pool_size=pool, name="downsample")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, x, name=name)


def pixels(input_size: tuple[int, int] = INPUT_SIZE, name: str = "pixels") -> keras.Model:
    """The full baseline embedding model: RGB 0..255 images to unit-norm 768-d vectors."""
    inputs = keras.Input(shape=(*input_size, 3), name="image")
    x = pixel_features(input_size)(inputs)
    x = L2Normalize(name="l2_normalize", dtype="float32")(x)
    return keras.Model(inputs, x, name=name)
