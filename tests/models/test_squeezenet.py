"""SqueezeNet v1.1: the architecture, and its Keras 1 loader on synthetic and real weight files."""

from __future__ import annotations

import csv
import pathlib

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from models import registry
from models import squeezenet
from tests.models.keras1_files import squeezenet_conv_shapes
from tests.models.keras1_files import write_keras1_squeezenet

REAL_FILE_SHA256 = "17154246284f555591549ac2c83e127abfbf4307dc4b0060fdaa2931d0fa38da"
REAL_POSTERS = 8


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """A randomly initialised SqueezeNet v1.1 (shared; each test loads what it checks)."""
    return squeezenet.squeezenet_v1_1()


def _weights_by_path(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable's value by its path ('fire2_squeeze1x1/kernel')."""
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def _owning_layer(dataset_path: str, layer_names: list[str]) -> str:
    """The Keras 1 layer a dataset belongs to: the longest listed layer name prefixing its path."""
    owners = [name for name in layer_names if dataset_path.startswith(name + "/")]
    return max(owners, key=len)


def _check_every_dataset_loaded(path: pathlib.Path, model: keras.Model, pairs) -> int:
    """Assert each array in the file equals its layer's weight (kernels as (h, w, in, out))."""
    weights = _weights_by_path(model)
    loaded = dict(pairs)
    with h5py.File(path, "r") as f:
        layer_names = [name.decode() for name in f.attrs["layer_names"]]
        datasets = []
        f.visititems(
            lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None
        )
        for dataset_path in datasets:
            array = f[dataset_path][()]
            layer = squeezenet.keras_layer_name(_owning_layer(dataset_path, layer_names))
            variable = f"{layer}/kernel" if array.ndim == 4 else f"{layer}/bias"
            assert loaded[dataset_path] == variable
            expected = weights[variable]
            if array.shape != expected.shape:
                array = np.transpose(array, (2, 3, 1, 0))
            np.testing.assert_array_equal(array, expected, err_msg=dataset_path)
    assert sorted(loaded) == sorted(datasets)
    assert sorted(loaded.values()) == sorted(weights)
    return len(datasets)


def test_architecture_matches_squeezenet_v1_1(model):
    assert model.input_shape == (None, 227, 227, 3)
    assert model.output_shape == (None, 13, 13, 512)
    assert model.count_params() == 722_496
    conv_shapes = {
        squeezenet.keras_layer_name(name): shape for name, shape in squeezenet_conv_shapes().items()
    }
    got = {layer.name: tuple(layer.kernel.shape) for layer in model.layers if layer.weights}
    assert got == conv_shapes
    assert model.get_layer("conv1").strides == (2, 2)
    assert model.get_layer("fire9_expand3x3").padding == "same"
    pooled = squeezenet.squeezenet_v1_1(pooling="avg")
    assert pooled.output_shape == (None, 512)


def test_synthetic_keras1_file_loads_every_array(model, keras1_file):
    path, arrays = keras1_file
    assert squeezenet.is_legacy_h5(str(path))

    pairs = squeezenet.load_keras1_weights(model, str(path))

    assert len(pairs) == len(arrays) == 50
    assert _check_every_dataset_loaded(path, model, pairs) == 50
    weights = _weights_by_path(model)
    np.testing.assert_array_equal(
        weights["fire2_squeeze1x1/bias"], arrays["fire2/squeeze1x1/fire2/squeeze1x1_b"]
    )


def test_theano_ordered_kernels_are_transposed(model, tmp_path):
    path = tmp_path / "theano.h5"
    arrays = write_keras1_squeezenet(path, np.random.default_rng(3), theano=True)
    with h5py.File(path, "r") as f:
        assert f["conv1/uniform1"].shape == (64, 3, 3, 3)

    squeezenet.load_keras1_weights(model, str(path))

    weights = _weights_by_path(model)
    np.testing.assert_array_equal(weights["conv1/kernel"], arrays["conv1/uniform1"])
    np.testing.assert_array_equal(
        weights["fire9_expand3x3/kernel"], arrays["fire9/expand3x3/uniform25"]
    )


def test_mismatched_shape_names_the_array_and_assigns_nothing(model, tmp_path):
    path = tmp_path / "bad.h5"
    write_keras1_squeezenet(path, np.random.default_rng(4))
    with h5py.File(path, "a") as f:
        del f["fire5/expand3x3/uniform13"]
        f["fire5/expand3x3/uniform13"] = np.zeros((3, 3, 32, 127), np.float32)
    before = _weights_by_path(model)

    with pytest.raises(squeezenet.WeightsFileError, match="fire5/expand3x3/uniform13"):
        squeezenet.load_keras1_weights(model, str(path))

    after = _weights_by_path(model)
    assert all(np.array_equal(before[key], after[key]) for key in before)


def test_missing_layer_in_file_names_it(model, tmp_path):
    path = tmp_path / "partial.h5"
    write_keras1_squeezenet(path, np.random.default_rng(5))
    with h5py.File(path, "a") as f:
        names = [n for n in f.attrs["layer_names"] if n != b"fire7/expand1x1"]
        f.attrs["layer_names"] = np.array(names, dtype="S")

    with pytest.raises(squeezenet.WeightsFileError, match="fire7_expand1x1"):
        squeezenet.load_keras1_weights(model, str(path))


def test_missing_array_and_extra_layer_are_errors(model, tmp_path):
    path = tmp_path / "broken.h5"
    write_keras1_squeezenet(path, np.random.default_rng(6))
    with h5py.File(path, "a") as f:
        del f["fire3/squeeze1x1/fire3/squeeze1x1_b"]
    with pytest.raises(squeezenet.WeightsFileError, match="fire3/squeeze1x1_b"):
        squeezenet.load_keras1_weights(model, str(path))

    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(64, 3, name="conv1")])
    with pytest.raises(squeezenet.WeightsFileError, match="fire2/squeeze1x1"):
        squeezenet.load_keras1_weights(other, str(path))


def test_real_file_layout_and_every_array_loaded(model, real_squeezenet_weights):
    assert registry.file_sha256(str(real_squeezenet_weights)) == REAL_FILE_SHA256
    with h5py.File(real_squeezenet_weights, "r") as f:
        assert f["conv1/uniform1"].shape == (3, 3, 3, 64)
        assert f["fire2/squeeze1x1/fire2/squeeze1x1_b"].shape == (16,)

    pairs = squeezenet.load_keras1_weights(model, str(real_squeezenet_weights))

    assert _check_every_dataset_loaded(real_squeezenet_weights, model, pairs) == 50


def test_real_weights_give_distinct_sensible_poster_features(real_squeezenet_weights, shared_data):
    em = registry.load_embedding_model("squeezenet_v1_1", weights=str(real_squeezenet_weights))
    folder = shared_data / "posters" / "set_a"
    with open(folder / "index.csv", newline="") as f:
        rows = [row for _, row in zip(range(REAL_POSTERS), csv.DictReader(f), strict=False)]
    posters = [Image.open(folder / row["poster_file"]) for row in rows]
    originals = np.stack([registry.resize_for(em, p) for p in posters])
    cropped = np.stack(
        [registry.resize_for(em, p.crop((4, 6, p.width - 4, p.height - 6))) for p in posters]
    )

    vectors = registry.embed_images(em, np.concatenate([originals, cropped]))
    features = keras.Model(
        em.keras_model.input, em.keras_model.get_layer("avg_pool").output
    ).predict(originals, verbose=0)

    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert np.all(features >= 0) and np.mean(features > 0) > 0.5
    similarity = vectors[:REAL_POSTERS] @ vectors[:REAL_POSTERS].T
    assert np.max(similarity[~np.eye(REAL_POSTERS, dtype=bool)]) < 0.98
    cross = vectors[REAL_POSTERS:] @ vectors[:REAL_POSTERS].T
    np.testing.assert_array_equal(np.argmax(cross, axis=1), np.arange(REAL_POSTERS))
