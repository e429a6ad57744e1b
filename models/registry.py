"""The backbone registry: one Keras embedding model per choice, raw pixels in, unit vectors out.

Every model built here has the same contract: float32 RGB images in 0..255, shaped
``[batch, height, width, 3]`` at the backbone's input size, go in; L2-normalised float32 feature
vectors come out. Preprocessing is a layer inside the model, so one ``.keras`` file embeds raw
pixels anywhere (a Beam model handler, a notebook, a test) with no code beside it but
``models.layers``.

``weights`` (the embed CLI's ``--weights``) is one of:

* ``None`` or ``"random"``: random initialisation, deterministic (seeded) so versions are stable;
* ``"imagenet"``: the Keras download for ``keras.applications`` backbones;
* a local path or ``gs://`` URI to ``.h5`` / ``.weights.h5`` weights (for ``squeezenet_v1_1`` a
  Keras 1 file such as ``squeezenet_v1.1_imagenet_notop_keras1.h5``), or to a ``.keras`` model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import warnings
from collections.abc import Callable
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from models import pixels
from models import small_cnn
from models import squeezenet
from models.layers import PREPROCESS_MODES
from models.layers import L2Normalize
from models.layers import preprocess_layer

DEFAULT_MODEL = "inception_v3"
RANDOM_WEIGHTS = "random"
IMAGENET_WEIGHTS = "imagenet"
RANDOM_INIT_SEED = 1337
WEIGHTS_FLAG = "--weights"
BACKBONE_LAYER = "backbone"
VERSION_DIGEST_CHARS = 12

_READ_CHUNK = 1 << 20
_DOWNLOAD_ERROR_MARKERS = ("URL fetch failure", "Incomplete or corrupted file")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: what a backbone expects and produces, and how to build it."""

    name: str
    input_size: tuple[int, int]
    preprocess: str
    feature_dim: int | None
    description: str
    backbone_fn: Callable[[tuple[int, int], str | None], keras.Model] = dataclasses.field(
        repr=False, compare=False
    )
    no_imagenet_reason: str | None = None

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"{self.name}: preprocess must be one of {PREPROCESS_MODES}")

    def build(self, weights: str | None = None) -> keras.Model:
        """The full embedding model (preprocessing, backbone, pooling, L2) with these weights."""
        return _build(self, weights)[0]


@dataclasses.dataclass
class EmbeddingModel:
    """A built embedding model with its name, content-derived version, input size and output dim."""

    keras_model: keras.Model
    name: str
    version: str
    input_size: tuple[int, int]
    dim: int


def _application(constructor: str) -> Callable[[tuple[int, int], str | None], keras.Model]:
    """A backbone builder for ``keras.applications.<constructor>`` without its classifier."""

    def build_backbone(input_size: tuple[int, int], weights: str | None) -> keras.Model:
        application = getattr(keras.applications, constructor)
        return application(
            include_top=False,
            weights=weights,
            input_shape=(*input_size, 3),
            pooling=None,
            name=BACKBONE_LAYER,
        )

    return build_backbone


def _squeezenet_backbone(input_size: tuple[int, int], weights: str | None) -> keras.Model:
    """SqueezeNet v1.1, randomly initialised (weights come from a file)."""
    return squeezenet.squeezenet_v1_1((*input_size, 3), name=BACKBONE_LAYER)


def _small_cnn_backbone(input_size: tuple[int, int], weights: str | None) -> keras.Model:
    """The small from-scratch CNN, randomly initialised."""
    return small_cnn.small_cnn(input_size, small_cnn.EMBEDDING_DIM, name=BACKBONE_LAYER)


def _pixels_backbone(input_size: tuple[int, int], weights: str | None) -> keras.Model:
    """The 16x16 thumbnail features (no weights)."""
    return pixels.pixel_features(input_size, name=BACKBONE_LAYER)


_SQUEEZENET_FILE = "squeezenet_v1.1_imagenet_notop_keras1.h5"

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "inception_v3",
            (299, 299),
            "tf",
            2048,
            "Inception v3 (Keras applications), global-average-pooled mixed10; the default",
            _application("InceptionV3"),
        ),
        BackboneSpec(
            "vgg16",
            (224, 224),
            "caffe",
            512,
            "VGG16 (Keras applications), global-average-pooled block5",
            _application("VGG16"),
        ),
        BackboneSpec(
            "nasnet_large",
            (331, 331),
            "tf",
            4032,
            "NASNet-A Large (Keras applications), global-average-pooled; the largest and slowest",
            _application("NASNetLarge"),
        ),
        BackboneSpec(
            "resnet50",
            (224, 224),
            "caffe",
            2048,
            "ResNet50 v1 (Keras applications), global-average-pooled conv5",
            _application("ResNet50"),
        ),
        BackboneSpec(
            "efficientnet_b0",
            (224, 224),
            "none",
            1280,
            "EfficientNet-B0 (Keras applications; rescales 0..255 inputs itself), pooled top",
            _application("EfficientNetB0"),
        ),
        BackboneSpec(
            "mobilenet_v2",
            (224, 224),
            "tf",
            1280,
            "MobileNet v2 1.0 (Keras applications), global-average-pooled top",
            _application("MobileNetV2"),
        ),
        BackboneSpec(
            "squeezenet_v1_1",
            squeezenet.INPUT_SIZE,
            "caffe",
            squeezenet.FEATURE_DIM,
            "SqueezeNet v1.1, global-average-pooled fire9; ImageNet weights from a Keras 1 file",
            _squeezenet_backbone,
            no_imagenet_reason=(
                "Keras has no SqueezeNet download; pass the real file by path, e.g. "
                f"{WEIGHTS_FLAG}=/path/to/{_SQUEEZENET_FILE}"
            ),
        ),
        BackboneSpec(
            "small_cnn",
            small_cnn.INPUT_SIZE,
            "none",
            small_cnn.EMBEDDING_DIM,
            "A small VGG-style CNN trained from scratch (rescales 0..255 inputs itself)",
            _small_cnn_backbone,
            no_imagenet_reason=(
                "small_cnn is trained from scratch and has no ImageNet weights; pass "
                f"{WEIGHTS_FLAG}=/path/to/trained.weights.h5 (or a .keras file) or "
                f"{WEIGHTS_FLAG}={RANDOM_WEIGHTS}"
            ),
        ),
        BackboneSpec(
            "pixels",
            pixels.INPUT_SIZE,
            "none",
            pixels.FEATURE_DIM,
            "Raw-pixel baseline: the image average-pooled to 16x16x3 and flattened",
            _pixels_backbone,
            no_imagenet_reason=f"pixels has no weights; leave {WEIGHTS_FLAG} unset",
        ),
    )
}


def model_names() -> list[str]:
    """The registry's backbone names, in registry order."""
    return list(REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry called ``name``; a ValueError listing the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: use one of {model_names()} or a path to a .keras file"
        ) from None


def configure_gpu() -> list[str]:
    """Turn on memory growth on every visible GPU and return their names."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:
            logging.info("GPU %s already initialised, memory growth left as is: %s", gpu.name, exc)
    return [gpu.name for gpu in gpus]


def _is_remote(path: str) -> bool:
    """Whether ``path`` is a URI for Beam's FileSystems (gs://...) rather than a local path."""
    return "://" in path


@contextlib.contextmanager
def _local_file(path: str) -> Iterator[str]:
    """A local path holding the file at ``path`` (copied to a temporary folder when remote)."""
    if not _is_remote(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} does not exist")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="poster_recs_weights_") as folder:
        local = os.path.join(folder, posixpath.basename(path))
        with (
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as source,
            open(local, "wb") as target,
        ):
            shutil.copyfileobj(source, target, _READ_CHUNK)
        yield local


def file_sha256(path: str) -> str:
    """The sha256 hex digest of a local file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(model: keras.Model) -> str:
    """The sha256 of a model's weight values (dtype, shape and bytes of each, in model order)."""
    digest = hashlib.sha256()
    for variable in model.weights:
        array = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _version(name: str, preprocess: str, input_size: tuple[int, int], weights_digest: str) -> str:
    """A short stable version: the name and a digest of preprocessing, input size and weights."""
    payload = json.dumps(
        {
            "backbone": name,
            "preprocess": preprocess,
            "input_size": list(input_size),
            "weights": weights_digest,
        },
        sort_keys=True,
    )
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:VERSION_DIGEST_CHARS]}"


def _assemble(spec: BackboneSpec, backbone: keras.Model) -> keras.Model:
    """Wrap a backbone as the full embedding model: preprocess, backbone, pool, L2 normalise."""
    inputs = keras.Input(shape=(*spec.input_size, 3), dtype="float32", name="image")
    x = inputs
    layer = preprocess_layer(spec.preprocess)
    if layer is not None:
        x = layer(x)
    x = backbone(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = L2Normalize(name="l2_normalize", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=spec.name)


def _is_download_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is Keras failing to fetch a weights file."""
    if isinstance(exc, OSError):
        return True
    return any(marker in str(exc) for marker in _DOWNLOAD_ERROR_MARKERS)


def _imagenet_backbone(spec: BackboneSpec) -> keras.Model:
    """The backbone with Keras' downloaded ImageNet weights; RuntimeError if the download fails."""
    if spec.no_imagenet_reason is not None:
        raise ValueError(
            f"{spec.name} has no '{IMAGENET_WEIGHTS}' weights: {spec.no_imagenet_reason}"
        )
    try:
        return spec.backbone_fn(spec.input_size, IMAGENET_WEIGHTS)
    except Exception as exc:
        if not _is_download_failure(exc):
            raise
        raise RuntimeError(
            f"downloading the ImageNet weights for {spec.name} failed ({exc}); this machine may "
            f"have no internet access: download the no-top weights file elsewhere and pass "
            f"{WEIGHTS_FLAG}=/path/to/weights.h5 (a local path or gs:// URI)"
        ) from exc


def _load_weights_keeping_warnings_on_success(model: keras.Model, path: str) -> None:
    """``model.load_weights(path)``; its warnings are re-issued only if the load succeeds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _load_weights_file(spec: BackboneSpec, model: keras.Model, path: str) -> None:
    """Load ``.h5`` / ``.weights.h5`` weights into the full model, or else into its backbone."""
    backbone = model.get_layer(BACKBONE_LAYER)
    if spec.name == "squeezenet_v1_1" and squeezenet.is_legacy_h5(path):
        squeezenet.load_keras1_weights(backbone, path)
        return
    try:
        _load_weights_keeping_warnings_on_success(model, path)
    except ValueError as full_error:
        try:
            _load_weights_keeping_warnings_on_success(backbone, path)
        except ValueError as backbone_error:
            raise ValueError(
                f"{path} fits neither the {spec.name} embedding model ({full_error}) nor its "
                f"backbone ({backbone_error})"
            ) from backbone_error


def _check_keras_model(spec: BackboneSpec, model: keras.Model, path: str) -> None:
    """Raise ValueError unless a loaded ``.keras`` model has the spec's input size and dim."""
    input_size = _input_size(model)
    dim = model.output_shape[-1]
    if input_size != spec.input_size or (spec.feature_dim is not None and dim != spec.feature_dim):
        raise ValueError(
            f"{path} takes {input_size} images to {dim}-d vectors, but {spec.name} takes "
            f"{spec.input_size} images to {spec.feature_dim}-d vectors"
        )


def _build(spec: BackboneSpec, weights: str | None) -> tuple[keras.Model, str]:
    """Build the full embedding model for ``spec``; return it with the digest of its weights.

    Resets the global random seeds (``keras.utils.set_random_seed``) so random initialisation, and
    hence the version, is the same in every process.
    """
    keras.utils.set_random_seed(RANDOM_INIT_SEED)
    if weights is None or weights == RANDOM_WEIGHTS:
        model = _assemble(spec, spec.backbone_fn(spec.input_size, None))
        return model, weights_sha256(model)
    if weights == IMAGENET_WEIGHTS:
        model = _assemble(spec, _imagenet_backbone(spec))
        return model, weights_sha256(model)
    if weights.endswith(".keras"):
        with _local_file(weights) as local:
            model = keras.saving.load_model(local, compile=False, safe_mode=True)
            _check_keras_model(spec, model, weights)
            return model, file_sha256(local)
    if weights.endswith((".h5", ".hdf5")):
        with _local_file(weights) as local:
            model = _assemble(spec, spec.backbone_fn(spec.input_size, None))
            _load_weights_file(spec, model, local)
            return model, file_sha256(local)
    raise ValueError(
        f"{WEIGHTS_FLAG}={weights!r} is not understood: use '{RANDOM_WEIGHTS}', "
        f"'{IMAGENET_WEIGHTS}', or a local path or gs:// URI ending in .h5, .weights.h5 or .keras"
    )


def _input_size(model: keras.Model) -> tuple[int, int]:
    """The (height, width) a model's image input expects; ValueError if not fixed RGB."""
    shape = model.input_shape
    if (
        not isinstance(shape, tuple)
        or len(shape) != 4
        or shape[3] != 3
        or not all(isinstance(side, int) for side in shape[1:3])
    ):
        raise ValueError(f"model {model.name!r} input {shape} is not [batch, height, width, 3]")
    return (shape[1], shape[2])


def load_embedding_model(model: str, weights: str | None = None) -> EmbeddingModel:
    """The embedding model for a registry name (with ``weights``) or a saved ``.keras`` file.

    Building from a registry name resets the global random seeds (see ``_build``); ``.keras``
    files need ``models.layers`` imported, which importing this module does.
    """
    configure_gpu()
    if model.endswith(".keras"):
        if weights is not None:
            raise ValueError(
                f"{model} is a saved model with its own weights; leave {WEIGHTS_FLAG} unset"
            )
        with _local_file(model) as local:
            keras_model = keras.saving.load_model(local, compile=False, safe_mode=True)
            digest = file_sha256(local)
        input_size = _input_size(keras_model)
        name = keras_model.name
        return EmbeddingModel(
            keras_model=keras_model,
            name=name,
            version=_version(name, "saved", input_size, digest),
            input_size=input_size,
            dim=int(keras_model.output_shape[-1]),
        )
    spec = get_spec(model)
    keras_model, digest = _build(spec, weights)
    return EmbeddingModel(
        keras_model=keras_model,
        name=spec.name,
        version=_version(spec.name, spec.preprocess, spec.input_size, digest),
        input_size=spec.input_size,
        dim=int(keras_model.output_shape[-1]),
    )


def save_embedding_model(em: EmbeddingModel, path: str) -> None:
    """Write the full embedding model to a local ``.keras`` file."""
    if not path.endswith(".keras"):
        raise ValueError(f"{path} must end in .keras")
    if _is_remote(path):
        raise ValueError(f"{path} is not a local path; save locally, then copy it")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    em.keras_model.save(path)


def resize_for(em: EmbeddingModel, image: Image.Image | np.ndarray) -> np.ndarray:
    """An image as model input: RGB, PIL-bilinear resized to ``input_size``, float32 0..255."""
    return resize_to(image, em.input_size)


def resize_to(image: Image.Image | np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The one resize used everywhere: RGB, PIL bilinear to (height, width), float32 0..255."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"arrays must be uint8 HxW or HxWxC, got {image.dtype} of shape {image.shape}"
            )
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    height, width = input_size
    rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32)


def embed_images(em: EmbeddingModel, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Unit-norm float32 embeddings, ``[n, dim]``, of ``[n, height, width, 3]`` 0..255 images."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (*em.input_size, 3):
        raise ValueError(f"images must be [n, {em.input_size[0]}, {em.input_size[1]}, 3]")
    batches = [
        keras.ops.convert_to_numpy(
            em.keras_model(images[start : start + batch_size], training=False)
        )
        for start in range(0, len(images), batch_size)
    ]
    if not batches:
        return np.zeros((0, em.dim), dtype=np.float32)
    return np.concatenate(batches).astype(np.float32, copy=False)
