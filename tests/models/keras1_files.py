"""Writes synthetic SqueezeNet v1.1 weights in the Keras 1 HDF5 layout of the real file."""

from __future__ import annotations

import pathlib

import h5py
import numpy as np

from models.squeezenet import FIRE_MODULES

_POOL_AFTER = {"fire3": "pool3", "fire5": "pool5"}


def squeezenet_conv_shapes() -> dict[str, tuple[int, int, int, int]]:
    """Keras 1 layer name to (h, w, in, out) kernel shape, for every SqueezeNet v1.1 conv."""
    shapes = {"conv1": (3, 3, 3, 64)}
    channels = 64
    for fire, squeeze, expand in FIRE_MODULES:
        shapes[f"{fire}/squeeze1x1"] = (1, 1, channels, squeeze)
        shapes[f"{fire}/expand1x1"] = (1, 1, squeeze, expand)
        shapes[f"{fire}/expand3x3"] = (3, 3, squeeze, expand)
        channels = 2 * expand
    return shapes


def squeezenet_layer_names() -> list[str]:
    """Every layer name, weightless ones included, in the order the real file lists them."""
    names = ["input_1", "conv1", "relu_conv1", "pool1"]
    for fire, _, _ in FIRE_MODULES:
        names.extend(
            f"{fire}/{layer}"
            for layer in (
                "squeeze1x1",
                "relu_squeeze1x1",
                "expand1x1",
                "expand3x3",
                "relu_expand1x1",
                "relu_expand3x3",
                "concat",
            )
        )
        if fire in _POOL_AFTER:
            names.append(_POOL_AFTER[fire])
    return [*names, "drop9"]


def write_keras1_squeezenet(
    path: pathlib.Path, rng: np.random.Generator, theano: bool = False
) -> dict[str, np.ndarray]:
    """Write random weights as Keras 1 would; return each array, (h, w, in, out) kernels, by path.

    Like the real file: a ``layer_names`` attribute lists every layer, weightless ones included;
    each layer group's ``weight_names`` names a kernel ``uniformN`` and a bias ``<layer>_b``, so a
    fire layer's bias ends up nested one group deeper (``fire2/squeeze1x1/fire2/squeeze1x1_b``).
    With ``theano`` the kernels are stored (out, in, h, w).
    """
    shapes = squeezenet_conv_shapes()
    layer_names = squeezenet_layer_names()
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in layer_names], dtype="S")
        for name in layer_names:
            group = f.require_group(name)
            if name not in shapes:
                group.attrs["weight_names"] = np.array([], dtype=np.float64)
                continue
            kernel = rng.normal(size=shapes[name]).astype(np.float32)
            bias = rng.normal(size=shapes[name][-1]).astype(np.float32)
            kernel_name = f"uniform{len(arrays) // 2 + 1}"
            bias_name = f"{name}_b"
            group.create_dataset(
                kernel_name, data=np.transpose(kernel, (3, 2, 0, 1)) if theano else kernel
            )
            group.create_dataset(bias_name, data=bias)
            group.attrs["weight_names"] = np.array([kernel_name, bias_name], dtype="S")
            arrays[f"{name}/{kernel_name}"] = kernel
            arrays[f"{name}/{bias_name}"] = bias
    return arrays
