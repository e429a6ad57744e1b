"""Lookups shared by the query tool and the run reports: films, staged models, vectors, ratings.

Everything reads what the stages wrote: film labels from the scrape stage's poster records
(:func:`storage.posters.read_posters`), the embed stage's staged
``{version}/model/{version}.keras`` files and vector tables, the index stage's ScaNN folders,
and a MovieLens-style watch history. Images are embedded with
:func:`models.image_ops.decode_and_resize_numpy` and ``predict_on_batch``, exactly as the embed
stage does, so a query poster lands where the same poster in the index is.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from models.scann_index import PosterIndex
from models.vectors import read_vector_table
from models.vectors import shared_poster_groups
from models.vectors import vectors_glob
from schemas import PosterRecord
from schemas import WatchEvent
from storage.history import read_history_file

MODEL_FOLDER = "model"
INDEX_FOLDER = "index"
_VERSION = re.compile(r"[A-Za-z0-9_.]+-[0-9a-f]{12}")


@dataclasses.dataclass
class QueryModel:
    """An embedding model ready to embed image bytes: raw 0..255 RGB in, unit vector out."""

    keras_model: object
    version: str
    input_size: tuple[int, int]
    dim: int
    source: str


def staged_model_uri(vectors_root: str, model_version: str) -> str:
    """The ``.keras`` file the embed stage saved for a model version."""
    return FileSystems.join(vectors_root, model_version, MODEL_FOLDER, f"{model_version}.keras")


def index_uri(vectors_root: str, model_version: str) -> str:
    """The default index folder of a model version (where ``pipelines.index`` writes it)."""
    return FileSystems.join(vectors_root, model_version, INDEX_FOLDER)


def staged_version(model_uri: str) -> str | None:
    """The version of a model file the embed stage staged (``{v}/model/{v}.keras``), else None."""
    parts = model_uri.replace("\\", "/").rstrip("/").split("/")
    if len(parts) < 3 or not parts[-1].endswith(".keras"):
        return None
    stem = parts[-1][: -len(".keras")]
    if parts[-2] == MODEL_FOLDER and parts[-3] == stem and _VERSION.fullmatch(stem):
        return stem
    return None


def _input_size(keras_model) -> tuple[int, int]:
    shape = keras_model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"model {keras_model.name!r} input {shape} is not [batch, h, w, 3]")
    return int(shape[1]), int(shape[2])


@contextlib.contextmanager
def _local_file(uri: str) -> Iterator[str]:
    """A local path holding the file at ``uri`` (gs:// files are copied to a temp folder)."""
    if "://" not in uri:
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="query-model-") as folder:
        local = os.path.join(folder, posixpath.basename(uri))
        with FileSystems.open(uri) as source, open(local, "wb") as target:
            shutil.copyfileobj(source, target)
        yield local


def load_query_model(model: str, weights: str | None = None) -> QueryModel:
    """A staged ``.keras`` file, another ``.keras`` file or a registry name, with its version.

    A staged file keeps the version it was saved under; anything else gets the version the
    embed stage would give it (``models.registry.load_embedding_model``).
    """
    # Keras and TensorFlow load in seconds: only when a model is asked for.
    import keras

    import models.layers  # noqa: F401 - registers the custom layers for deserialisation
    from models.registry import load_embedding_model

    version = staged_version(model)
    if version is not None:
        with _local_file(model) as local:
            keras_model = keras.saving.load_model(local, compile=False)
    else:
        built = load_embedding_model(model, weights)
        keras_model, version = built.keras_model, built.version
    return QueryModel(
        keras_model=keras_model,
        version=version,
        input_size=_input_size(keras_model),
        dim=int(keras_model.output_shape[-1]),
        source=model,
    )


def embed_image_bytes(model: QueryModel, images: Sequence[bytes]) -> np.ndarray:
    """Unit-norm float32 vectors ``[n, dim]`` of encoded images, decoded as the embed stage does.

    Raises ``tf.errors.InvalidArgumentError`` for bytes TensorFlow cannot decode.
    """
    from models.image_ops import decode_and_resize_numpy  # TensorFlow: only when embedding

    if not images:
        return np.zeros((0, model.dim), dtype=np.float32)
    batch = np.stack([decode_and_resize_numpy(data, model.input_size) for data in images])
    vectors = np.asarray(model.keras_model.predict_on_batch(batch), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def title_with_year(title: str, year: int | None) -> str:
    """'Title (year)', the year written once: MovieLens titles already end with it."""
    if not year or title.rstrip().endswith(f"({year})"):
        return title
    return f"{title} ({year})"


def film_label(movie_id: int, films: dict[int, PosterRecord]) -> str:
    """'Title (year)' of a film, or 'film N' when its poster record has no title."""
    record = films.get(movie_id)
    if record is None or not record.title:
        return f"film {movie_id}"
    return title_with_year(record.title, record.year)


def mean_ratings(watch_history: str) -> tuple[dict[int, float], int]:
    """Mean rating per film of a ratings CSV or Parquet file, and the number of users."""
    totals: dict[int, list[float]] = {}
    users: set[int] = set()
    for event in read_history_file(watch_history, "report"):
        if isinstance(event, WatchEvent):
            totals.setdefault(event.movie_id, []).append(float(event.rating))
            users.add(event.user_id)
    return {m: float(np.mean(r)) for m, r in totals.items()}, len(users)


def index_neighbours(
    vectors_root: str, model_version: str, movie_ids: Sequence[int] | None, k: int
) -> dict[int, list[tuple[int, float]]]:
    """Each film's top-k (neighbour id, score) from the version's index, the film itself and
    the films that share its poster (its own duplicates) excluded, as the nightly tables do."""
    index = PosterIndex.load(index_uri(vectors_root, model_version))
    path_glob = vectors_glob(vectors_root, model_version)
    table = read_vector_table(path_glob)
    shared = shared_poster_groups(path_glob)
    row_of = {m: i for i, m in enumerate(table.ids.tolist())}
    wanted = list(row_of) if movie_ids is None else [m for m in movie_ids if m in row_of]
    if not wanted:
        return {}
    twins = max(collections.Counter(shared.values()).values(), default=1)
    found, scores = index.search(table.vectors[[row_of[m] for m in wanted]], k + twins)
    lists: dict[int, list[tuple[int, float]]] = {}
    for movie_id, ids, sims in zip(wanted, found.tolist(), scores.tolist(), strict=True):
        group = shared.get(movie_id, movie_id)
        pairs = [(n, float(s)) for n, s in zip(ids, sims, strict=True)
                 if n != -1 and shared.get(n, n) != group]  # fmt: skip
        lists[movie_id] = pairs[:k]
    return lists
