"""Fixtures for the model tests: CPU-only TensorFlow, the real and a synthetic SqueezeNet file."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REAL_WEIGHTS = "weights/squeezenet_v1.1_imagenet_notop_keras1.h5"


@pytest.fixture(scope="session")
def real_squeezenet_weights(shared_data: pathlib.Path) -> pathlib.Path:
    """The real Keras 1 SqueezeNet v1.1 ImageNet weights file; skips when it is absent."""
    path = shared_data / REAL_WEIGHTS
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def keras1_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict]:
    """A synthetic SqueezeNet file in the real file's Keras 1 layout, and its arrays by path."""
    from tests.models.keras1_files import write_keras1_squeezenet

    path = tmp_path_factory.mktemp("keras1") / "synthetic_squeezenet_keras1.h5"
    arrays = write_keras1_squeezenet(path, np.random.default_rng(7))
    return path, arrays
