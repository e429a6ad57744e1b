"""Reading the embed stage's Parquet vector tables into NumPy, one model version at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import EmbeddingRow
from storage.runs import published_paths


@dataclasses.dataclass(frozen=True)
class VectorTable:
    """Movie ids and their vectors (one row per film, the latest embedding wins)."""

    ids: np.ndarray
    vectors: np.ndarray
    model_version: str

    @property
    def dim(self) -> int:
        """Vector length."""
        return int(self.vectors.shape[1])


def vectors_glob(root: str, model_version: str) -> str:
    """The glob of every vector shard of one model version under an embed --output root."""
    return FileSystems.join(root, model_version, EmbeddingRow.TABLE, "*", "*.parquet")


def model_versions(root: str) -> list[str]:
    """Model versions that have vector tables under an embed --output root."""
    pattern = FileSystems.join(root, "*", EmbeddingRow.TABLE, "*", "*.parquet")
    paths = published_paths(pattern)
    suffix_parts = 3  # {version}/embeddings/run-NNNN/file
    return sorted({p.replace("\\", "/").split("/")[-suffix_parts - 1] for p in paths})


def vector_dim(path_glob: str) -> int:
    """The vector length of a vector table, from the first row of its first file."""
    paths = published_paths(path_glob)
    if not paths:
        raise FileNotFoundError(f"no vector files match {path_glob}")
    with FileSystems.open(paths[0]) as handle:
        column = pq.read_table(pa.BufferReader(handle.read()), columns=[EmbeddingRow.c.dim])
    return int(column.column(0)[0].as_py())


def read_vector_table(path_glob: str) -> VectorTable:
    """All vectors matching ``path_glob`` (local or gs://, published runs) as arrays; one model
    version only."""
    paths = published_paths(path_glob)
    if not paths:
        raise FileNotFoundError(f"no vector files match {path_glob}")
    tables = []
    for path in paths:
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(pa.BufferReader(handle.read())))
    c = EmbeddingRow.c
    names = [c.movie_id, c.embedding, c.model_version, c.embedded_at]
    table = pa.concat_tables([t.select(names) for t in tables], promote_options="permissive")
    versions = pc.unique(table.column(c.model_version)).to_pylist()
    if len(versions) != 1:
        raise ValueError(f"{path_glob} mixes model versions {versions}; index one at a time")
    order = pc.sort_indices(
        table, sort_keys=[(c.movie_id, "ascending"), (c.embedded_at, "descending")]
    )
    table = table.take(order)
    ids = table.column(c.movie_id).to_numpy()
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    embedding = table.column(c.embedding).combine_chunks()
    flat = np.asarray(embedding.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    vectors = flat.reshape(len(ids), -1)
    return VectorTable(
        ids=ids[keep].astype(np.int64), vectors=vectors[keep], model_version=versions[0]
    )


def shared_poster_groups(path_glob: str) -> dict[int, int]:
    """movie id -> poster_of, for the films of a vector table that share a poster with another.

    Films missing from the answer have a poster of their own. Read from two columns only.
    """
    c = EmbeddingRow.c
    poster_of: dict[int, int] = {}
    for path in published_paths(path_glob):
        with FileSystems.open(path) as handle:
            data = pa.BufferReader(handle.read())
        table = pq.read_table(data, columns=[c.movie_id, c.poster_of])
        ids = table.column(c.movie_id).to_pylist()
        poster_of.update(zip(ids, table.column(c.poster_of).to_pylist(), strict=True))
    sizes: dict[int, int] = {}
    for group in poster_of.values():
        sizes[group] = sizes.get(group, 0) + 1
    return {m: g for m, g in poster_of.items() if sizes[g] > 1}
