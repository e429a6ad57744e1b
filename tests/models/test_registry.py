"""The backbone registry: every entry's contract, weights sources, versions and saved models."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

from models import layers
from models import registry

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

EXPECTED = {
    "inception_v3": ((299, 299), "tf", 2048),
    "vgg16": ((224, 224), "caffe", 512),
    "nasnet_large": ((331, 331), "tf", 4032),
    "resnet50": ((224, 224), "caffe", 2048),
    "efficientnet_b0": ((224, 224), "none", 1280),
    "mobilenet_v2": ((224, 224), "tf", 1280),
    "squeezenet_v1_1": ((227, 227), "caffe", 512),
    "small_cnn": ((128, 128), "none", 128),
    "pixels": ((64, 64), "none", 768),
}
APPLICATIONS = {
    "inception_v3": "InceptionV3",
    "vgg16": "VGG16",
    "nasnet_large": "NASNetLarge",
    "resnet50": "ResNet50",
    "efficientnet_b0": "EfficientNetB0",
    "mobilenet_v2": "MobileNetV2",
}
PREPROCESS_LAYERS = {
    "caffe": layers.CaffePreprocess,
    "tf": layers.TfPreprocess,
    "torch": layers.TorchPreprocess,
}
OFFLINE_ERROR = (
    "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/x.h5: "
    "None -- [Errno -2] Name or service not known"
)


def _images(em: registry.EmbeddingModel, n: int = 2, seed: int = 0) -> np.ndarray:
    """Uniform random float32 pixels in 0..255 at the model's input size."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, *em.input_size, 3)).astype(np.float32)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of a model, nested models expanded."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def _perturb(model: keras.Model, seed: int) -> None:
    """Add small noise to every trainable weight."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_weights:
        value = keras.ops.convert_to_numpy(variable)
        variable.assign(value + rng.normal(scale=0.01, size=value.shape).astype(value.dtype))


def test_registry_entries_and_default():
    got = {
        name: (s.input_size, s.preprocess, s.feature_dim) for name, s in registry.REGISTRY.items()
    }
    assert got == EXPECTED
    assert registry.DEFAULT_MODEL == "inception_v3"
    assert registry.model_names() == list(EXPECTED)
    assert all(spec.description for spec in registry.REGISTRY.values())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_entry_builds_random_and_embeds_unit_vectors(name):
    spec = registry.get_spec(name)

    em = registry.load_embedding_model(name)
    vectors = registry.embed_images(em, _images(em))

    assert (em.name, em.input_size, em.dim) == (name, spec.input_size, spec.feature_dim)
    assert em.version.startswith(f"{name}-") and len(em.version) == len(name) + 13
    assert em.keras_model.input_shape == (None, *spec.input_size, 3)
    assert vectors.shape == (2, spec.feature_dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    every_layer = _all_layers(em.keras_model)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in every_layer)
    preprocess = [
        layer for layer in em.keras_model.layers if type(layer) in PREPROCESS_LAYERS.values()
    ]
    expected_preprocess = [PREPROCESS_LAYERS[spec.preprocess]] if spec.preprocess != "none" else []
    assert [type(layer) for layer in preprocess] == expected_preprocess


def test_spec_build_is_the_full_model():
    model = registry.get_spec("pixels").build()
    assert model.input_shape == (None, 64, 64, 3)
    assert model.output_shape == (None, 768)
    assert isinstance(model.layers[-1], layers.L2Normalize)


def test_versions_are_stable_across_calls_and_processes():
    first = registry.load_embedding_model("small_cnn")
    second = registry.load_embedding_model("small_cnn")
    assert first.version == second.version
    for a, b in zip(first.keras_model.weights, second.keras_model.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": "-1"}
    code = "from models import registry; print(registry.load_embedding_model('small_cnn').version)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == first.version


def test_weights_h5_round_trip_and_version_follows_the_weights(tmp_path):
    random_em = registry.load_embedding_model("small_cnn")
    trained = registry.load_embedding_model("small_cnn")
    _perturb(trained.keras_model, seed=1)
    full_path = tmp_path / "small_cnn.weights.h5"
    backbone_path = tmp_path / "small_cnn_backbone.weights.h5"
    trained.keras_model.save_weights(full_path)
    trained.keras_model.get_layer(registry.BACKBONE_LAYER).save_weights(backbone_path)
    images = _images(trained, n=3)
    expected = registry.embed_images(trained, images)

    from_full = registry.load_embedding_model("small_cnn", weights=str(full_path))
    from_backbone = registry.load_embedding_model("small_cnn", weights=str(backbone_path))
    again = registry.load_embedding_model("small_cnn", weights=str(full_path))

    np.testing.assert_allclose(registry.embed_images(from_full, images), expected, atol=1e-6)
    np.testing.assert_allclose(registry.embed_images(from_backbone, images), expected, atol=1e-6)
    assert not np.allclose(registry.embed_images(random_em, images), expected, atol=1e-3)
    assert again.version == from_full.version
    assert len({random_em.version, from_full.version, from_backbone.version}) == 3

    _perturb(trained.keras_model, seed=2)
    trained.keras_model.save_weights(full_path)
    changed = registry.load_embedding_model("small_cnn", weights=str(full_path))
    assert changed.version != from_full.version


def test_legacy_notop_h5_loads_into_the_backbone(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    trained = registry.load_embedding_model("mobilenet_v2")
    _perturb(trained.keras_model, seed=3)
    path = tmp_path / "mobilenet_v2_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, trained.keras_model.get_layer("backbone"))
    images = _images(trained)

    loaded = registry.load_embedding_model("mobilenet_v2", weights=str(path))

    np.testing.assert_allclose(
        registry.embed_images(loaded, images), registry.embed_images(trained, images), atol=1e-6
    )


def test_unrelated_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "small_cnn.weights.h5"
    registry.load_embedding_model("small_cnn").keras_model.save_weights(path)
    with pytest.raises(ValueError, match="fits neither the squeezenet_v1_1 embedding model"):
        registry.load_embedding_model("squeezenet_v1_1", weights=str(path))


def test_keras1_squeezenet_file_and_its_keras_export_round_trip(tmp_path, keras1_file):
    path, _ = keras1_file
    em = registry.load_embedding_model("squeezenet_v1_1", weights=str(path))
    images = _images(em, n=3)
    expected = registry.embed_images(em, images)
    saved = tmp_path / "export" / "squeezenet.keras"
    registry.save_embedding_model(em, str(saved))

    from_file = registry.load_embedding_model(str(saved))
    as_weights = registry.load_embedding_model("squeezenet_v1_1", weights=str(saved))
    raw = keras.saving.load_model(saved, safe_mode=True)

    for other in (from_file, as_weights):
        np.testing.assert_allclose(registry.embed_images(other, images), expected, atol=1e-6)
        assert (other.input_size, other.dim) == ((227, 227), 512)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(raw(images)), expected, atol=1e-6)
    assert from_file.name == as_weights.name == "squeezenet_v1_1"
    assert from_file.version == registry.load_embedding_model(str(saved)).version
    assert em.version != registry.load_embedding_model("squeezenet_v1_1").version
    assert any(isinstance(layer, layers.CaffePreprocess) for layer in raw.layers)


def test_keras_file_reads_its_input_size(tmp_path):
    model = keras.Sequential(
        [keras.Input((48, 32, 3)), keras.layers.Flatten(), layers.L2Normalize()], name="exported"
    )
    path = tmp_path / "exported.keras"
    model.save(path)

    em = registry.load_embedding_model(str(path))

    assert (em.name, em.input_size, em.dim) == ("exported", (48, 32), 48 * 32 * 3)
    assert registry.resize_for(em, Image.new("RGB", (100, 30))).shape == (48, 32, 3)
    with pytest.raises(ValueError, match="takes \\(48, 32\\) images"):
        registry.load_embedding_model("pixels", weights=str(path))
    with pytest.raises(ValueError, match="leave --weights unset"):
        registry.load_embedding_model(str(path), weights="random")


def test_gs_weights_are_copied_locally_through_beam_filesystems(monkeypatch, keras1_file):
    from apache_beam.io.filesystems import FileSystems

    path, _ = keras1_file
    uri = "gs://bucket/weights/squeezenet_keras1.h5"
    opened = []

    def fake_open(source, mime_type="application/octet-stream", compression_type=None):
        opened.append(source)
        return open(path, "rb")

    monkeypatch.setattr(FileSystems, "open", fake_open)

    remote = registry.load_embedding_model("squeezenet_v1_1", weights=uri)
    local = registry.load_embedding_model("squeezenet_v1_1", weights=str(path))

    assert opened == [uri]
    assert remote.version == local.version
    images = _images(local)
    np.testing.assert_array_equal(
        registry.embed_images(remote, images), registry.embed_images(local, images)
    )


@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_imagenet_offline_raises_runtime_error_naming_the_flag(monkeypatch, name):
    def offline(*args, **kwargs):
        raise Exception(OFFLINE_ERROR)

    monkeypatch.setattr(keras.applications, APPLICATIONS[name], offline)

    with pytest.raises(RuntimeError, match="--weights=/path/to/weights.h5") as info:
        registry.load_embedding_model(name, weights="imagenet")
    assert "download" in str(info.value) and "failed" in str(info.value)


def test_imagenet_other_errors_pass_through(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("input_shape is not supported")

    monkeypatch.setattr(keras.applications, "VGG16", broken)
    with pytest.raises(ValueError, match="input_shape is not supported"):
        registry.load_embedding_model("vgg16", weights="imagenet")


def test_imagenet_version_digests_the_downloaded_weights(monkeypatch):
    random_version = registry.load_embedding_model("mobilenet_v2").version
    real = keras.applications.MobileNetV2

    def downloaded(*args, **kwargs):
        model = real(*args, **{**kwargs, "weights": None})
        _perturb(model, seed=4)
        return model

    monkeypatch.setattr(keras.applications, "MobileNetV2", downloaded)

    imagenet = registry.load_embedding_model("mobilenet_v2", weights="imagenet")

    assert imagenet.version != random_version
    assert imagenet.version == registry.load_embedding_model("mobilenet_v2", "imagenet").version


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("squeezenet_v1_1", "Keras has no SqueezeNet download.*--weights=/path/to/squeezenet"),
        ("small_cnn", "no ImageNet weights.*--weights="),
        ("pixels", "pixels has no weights"),
    ],
)
def test_imagenet_without_a_download_is_a_clear_error(name, message):
    with pytest.raises(ValueError, match=message):
        registry.load_embedding_model(name, weights="imagenet")


def test_bad_model_and_weights_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'alexnet'.*squeezenet_v1_1"):
        registry.load_embedding_model("alexnet")
    with pytest.raises(ValueError, match="--weights='imagenet21k' is not understood"):
        registry.load_embedding_model("pixels", weights="imagenet21k")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        registry.load_embedding_model("pixels", weights=str(tmp_path / "missing.weights.h5"))
    em = registry.load_embedding_model("pixels")
    with pytest.raises(ValueError, match="must end in .keras"):
        registry.save_embedding_model(em, str(tmp_path / "model.h5"))
    with pytest.raises(ValueError, match="not a local path"):
        registry.save_embedding_model(em, "gs://bucket/model.keras")


def test_resize_for_is_pil_bilinear_rgb_float32():
    em = registry.load_embedding_model("pixels")
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (268, 182, 3), dtype=np.uint8)
    image = Image.fromarray(array)

    from_pil = registry.resize_for(em, image)
    from_array = registry.resize_for(em, array)

    expected = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    assert from_pil.shape == (64, 64, 3) and from_pil.dtype == np.float32
    np.testing.assert_array_equal(from_pil, expected)
    np.testing.assert_array_equal(from_array, expected)
    gray = registry.resize_for(em, array[..., 0])
    assert gray.shape == (64, 64, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    rgba = registry.resize_for(em, Image.fromarray(array).convert("RGBA"))
    np.testing.assert_array_equal(rgba, expected)
    with pytest.raises(ValueError, match="must be uint8"):
        registry.resize_for(em, array.astype(np.float32))


def test_embed_images_batches_and_checks_shape():
    em = registry.load_embedding_model("pixels")
    images = _images(em, n=5)

    whole = registry.embed_images(em, images)
    batched = registry.embed_images(em, images, batch_size=2)

    np.testing.assert_allclose(batched, whole, atol=1e-7)
    assert registry.embed_images(em, images[:0]).shape == (0, 768)
    with pytest.raises(ValueError, match="images must be"):
        registry.embed_images(em, images[:, :32])


def test_configure_gpu_enables_growth_and_tolerates_initialised_devices(monkeypatch):
    import tensorflow as tf

    class FakeGpu:
        def __init__(self, name: str) -> None:
            self.name = name

    gpus = [FakeGpu("/physical_device:GPU:0"), FakeGpu("/physical_device:GPU:1")]
    grown = []

    def set_memory_growth(device, enabled):
        if device is gpus[1]:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        grown.append((device.name, enabled))

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: gpus)
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", set_memory_growth)

    assert registry.configure_gpu() == [gpu.name for gpu in gpus]
    assert grown == [("/physical_device:GPU:0", True)]
