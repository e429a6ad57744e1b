"""SqueezeNet v1.1 in Keras 3, and a loader for its real ImageNet weights saved by Keras 1.

The weights file (``squeezenet_v1.1_imagenet_notop_keras1.h5``) names its layers ``conv1`` and
``fire2/squeeze1x1`` ... ``fire9/expand3x3``; Keras 3 forbids ``/`` in layer names, so the layers
here are named ``conv1`` and ``fire2_squeeze1x1`` ... ``fire9_expand3x3`` (``/`` becomes ``_``).
Inputs are 227x227 images already in ImageNet 'caffe' form (BGR, mean-subtracted); the output is
the fire9 feature map (13x13x512), or its 512-d global average with ``pooling="avg"``.
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import keras
import numpy as np

INPUT_SIZE = (227, 227)
FEATURE_DIM = 512

FIRE_MODULES = (
    ("fire2", 16, 64),
    ("fire3", 16, 64),
    ("fire4", 32, 128),
    ("fire5", 32, 128),
    ("fire6", 48, 192),
    ("fire7", 48, 192),
    ("fire8", 64, 256),
    ("fire9", 64, 256),
)
_POOL_AFTER = {"fire3": "pool3", "fire5": "pool5"}


class WeightsFileError(ValueError):
    """A weights file whose layout or shapes do not match the model."""


def _fire(x: keras.KerasTensor, name: str, squeeze: int, expand: int) -> keras.KerasTensor:
    """One fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated on channels."""
    x = keras.layers.Conv2D(squeeze, 1, padding="valid", name=f"{name}_squeeze1x1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu_squeeze1x1")(x)
    left = keras.layers.Conv2D(expand, 1, padding="valid", name=f"{name}_expand1x1")(x)
    left = keras.layers.ReLU(name=f"{name}_relu_expand1x1")(left)
    right = keras.layers.Conv2D(expand, 3, padding="same", name=f"{name}_expand3x3")(x)
    right = keras.layers.ReLU(name=f"{name}_relu_expand3x3")(right)
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([left, right])


def squeezenet_v1_1(
    input_shape: tuple[int, int, int] = (*INPUT_SIZE, 3),
    pooling: str | None = None,
    name: str = "squeezenet_v1_1",
) -> keras.Model:
    """SqueezeNet v1.1 without its classifier, randomly initialised."""
    if pooling not in (None, "avg"):
        raise ValueError(f"pooling must be None or 'avg', not {pooling!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(64, 3, strides=2, padding="valid", name="conv1")(inputs)
    x = keras.layers.ReLU(name="relu_conv1")(x)
    x = keras.layers.MaxPooling2D(pool_size=3, strides=2, name="pool1")(x)
    for fire_name, squeeze, expand in FIRE_MODULES:
        x = _fire(x, fire_name, squeeze, expand)
        if fire_name in _POOL_AFTER:
            x = keras.layers.MaxPooling2D(pool_size=3, strides=2, name=_POOL_AFTER[fire_name])(x)
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name)


def keras_layer_name(h5_layer_name: str) -> str:
    """The Keras 3 layer name for a layer named ``h5_layer_name`` in a Keras 1 file."""
    return h5_layer_name.replace("/", "_")


def is_legacy_h5(path: str) -> bool:
    """Whether ``path`` is a Keras 1/2 HDF5 weights file (top-level ``layer_names`` attribute)."""
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        return "layer_names" in root.attrs


def _decode(value: bytes | str) -> str:
    """An HDF5 attribute string as ``str``."""
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _iter_layer_weights(
    root: h5py.Group,
) -> Iterator[tuple[str, list[h5py.Dataset]]]:
    """Each (layer name, weight datasets in saved order) of a Keras 1/2 file's weighted layers."""
    for layer_name in (_decode(n) for n in root.attrs["layer_names"]):
        group = root[layer_name]
        weight_names = [_decode(n) for n in group.attrs.get("weight_names", [])]
        if not weight_names:
            continue
        datasets = []
        for weight_name in weight_names:
            if weight_name not in group:
                raise WeightsFileError(
                    f"layer {layer_name!r} lists weight {weight_name!r}, "
                    f"but {group.name}/{weight_name} is not in the file"
                )
            datasets.append(group[weight_name])
        yield layer_name, datasets


def _find_layer(model: keras.Model, name: str) -> keras.layers.Layer | None:
    """The layer called ``name`` in ``model`` or in any model nested inside it."""
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = _find_layer(layer, name)
            if found is not None:
                return found
    return None


def _layers_with_weights(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer with weights in ``model``, nested models expanded."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_layers_with_weights(layer))
        elif layer.weights:
            found.append(layer)
    return found


def to_keras_kernel(array: np.ndarray, expected_shape: tuple[int, ...]) -> np.ndarray:
    """A conv kernel in Keras' (h, w, in, out) order, transposed from (out, in, h, w) if need be."""
    if tuple(array.shape) == tuple(expected_shape):
        return array
    kh, kw, c_in, c_out = expected_shape
    if tuple(array.shape) == (c_out, c_in, kh, kw):
        return np.transpose(array, (2, 3, 1, 0))
    raise WeightsFileError(
        f"kernel of shape {tuple(array.shape)} fits neither (h, w, in, out) "
        f"{tuple(expected_shape)} nor (out, in, h, w) {(c_out, c_in, kh, kw)}"
    )


def load_keras1_weights(model: keras.Model, path: str) -> list[tuple[str, str]]:
    """Load a Keras 1 SqueezeNet h5 file into ``model``; return the (dataset, variable) pairs.

    Layers are matched by name (``fire2/squeeze1x1`` in the file is ``fire2_squeeze1x1`` here), in
    ``model`` or any model nested in it. Each layer's arrays are read in the order its
    ``weight_names`` attribute lists them (kernel, then bias); kernels saved in Theano order
    (out, in, h, w) are transposed to (h, w, in, out). Raises ``WeightsFileError`` naming the array
    when a layer is missing on either side or a shape does not match; nothing is assigned then.
    """
    staged: list[tuple[keras.Variable, np.ndarray, str]] = []
    loaded_layers = set()
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightsFileError(f"{path} is not a Keras 1/2 HDF5 weights file (no layer_names)")
        for h5_name, datasets in _iter_layer_weights(root):
            layer = _find_layer(model, keras_layer_name(h5_name))
            if layer is None:
                raise WeightsFileError(
                    f"{path}: layer {h5_name!r} (arrays {[d.name for d in datasets]}) has no "
                    f"layer {keras_layer_name(h5_name)!r} in model {model.name!r}"
                )
            if len(datasets) != len(layer.weights):
                raise WeightsFileError(
                    f"{path}: layer {h5_name!r} has {len(datasets)} arrays "
                    f"{[d.name for d in datasets]}, but layer {layer.name!r} has "
                    f"{len(layer.weights)} weights {[v.path for v in layer.weights]}"
                )
            for dataset, variable in zip(datasets, layer.weights, strict=True):
                array = np.asarray(dataset[()])
                expected = tuple(variable.shape)
                try:
                    if len(expected) == 4:
                        array = to_keras_kernel(array, expected)
                    elif tuple(array.shape) != expected:
                        raise WeightsFileError(
                            f"shape {tuple(array.shape)} does not match {expected}"
                        )
                except WeightsFileError as exc:
                    raise WeightsFileError(
                        f"{path}: array {dataset.name} does not fit {variable.path}: {exc}"
                    ) from exc
                staged.append((variable, array, dataset.name.lstrip("/")))
            loaded_layers.add(layer.name)
    missing = [
        layer.name for layer in _layers_with_weights(model) if layer.name not in loaded_layers
    ]
    if missing:
        raise WeightsFileError(f"{path} has no arrays for layers {missing} of model {model.name!r}")
    for variable, array, _ in staged:
        variable.assign(array.astype(variable.dtype))
    return [(dataset_path, variable.path) for variable, _, dataset_path in staged]
