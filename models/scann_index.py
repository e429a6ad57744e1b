"""A ScaNN index over one model version's poster vectors: build, measure, save, load, search.

ScaNN's package init loads TensorFlow ops built for another TensorFlow release and only
tolerates TensorFlow being absent, so :func:`import_scann` (the one place scann is imported)
hides ``tensorflow`` from ``sys.modules`` while importing it and uses the TF-free pybind API.
Indexes are serialised with relative paths and staged to and from any Beam filesystem (gs://).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from storage.files import write_bytes
from storage.runs import TEMPORARY_SUFFIX

BRUTE_FORCE_MAX = 20_000
TREE_MIN = 50_000
FINE_TREE_MAX = 400_000  # below this a finer tree (3 x sqrt(N) leaves) beats BLAS exact search
IDS_FILE = "ids.npy"
MANIFEST_FILE = "index_manifest.json"
_IMPORT_LOCK = threading.Lock()
_ABSENT = object()
_EXACT_QUERY_BLOCK = 128
_EXACT_DATABASE_BLOCK = 131_072


def import_scann() -> Any:
    """ScaNN's TF-free pybind module, importing scann with TensorFlow hidden from its init."""
    with _IMPORT_LOCK:
        if "scann" not in sys.modules:
            saved = sys.modules.get("tensorflow", _ABSENT)
            sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
            try:
                import scann  # noqa: F401 - here only, with TensorFlow hidden (see above)
            finally:
                if saved is _ABSENT:
                    del sys.modules["tensorflow"]
                else:
                    sys.modules["tensorflow"] = saved
        from scann.scann_ops.py import scann_ops_pybind  # after the guarded import above

        return scann_ops_pybind


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """How the searcher is built; every field can be overridden from the command line."""

    mode: str  # brute_force | ah | tree_ah
    num_neighbors: int = 10
    num_leaves: int = 0
    num_leaves_to_search: int = 0
    training_sample_size: int = 100_000
    dims_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder_k: int = 100

    def __post_init__(self) -> None:
        if self.mode not in ("brute_force", "ah", "tree_ah"):
            raise ValueError(f"index mode must be brute_force, ah or tree_ah, not {self.mode!r}")
        if self.mode == "tree_ah" and not 0 < self.num_leaves_to_search <= self.num_leaves:
            raise ValueError("tree_ah needs 0 < num_leaves_to_search <= num_leaves")


def choose_params(n: int, **overrides: Any) -> IndexParams:
    """Brute force up to 20k, AH + reordering below 50k, tree + AH (about sqrt(N) leaves) above.

    Below 400k the tree has 3 x sqrt(N) leaves and searches 3% of them: at that size exact
    search is a fast matrix product, and only a finer partition keeps recall@10 >= 0.95 at
    50x its speed (measured in benchmarks/neighbors_scale.py).
    """
    mode = overrides.pop("mode", None) or (
        "brute_force" if n <= BRUTE_FORCE_MAX else "ah" if n < TREE_MIN else "tree_ah"
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base: dict[str, Any] = {"mode": mode}
    if mode == "tree_ah":
        fine = TREE_MIN <= n < FINE_TREE_MAX
        leaves = overrides.get("num_leaves") or max(2, round((3 if fine else 1) * math.sqrt(n)))
        searched = max(1, leaves * 3 // 100) if fine else max(1, leaves // 10)
        base.update(num_leaves=leaves, num_leaves_to_search=searched)
        base["training_sample_size"] = min(n, 250_000)
    base.update(overrides)
    return IndexParams(**base)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("vectors must be finite and non-zero to be L2-normalised")
    return vectors / norms


def exact_search(
    database: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product (indices, scores), best first, equal scores by lower index.

    Works in blocks of queries x database rows, so memory stays near 200 MB at any size.
    """
    n = database.shape[0]
    k = min(k, n)
    dtype = np.result_type(queries.dtype, database.dtype)
    rows = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=dtype)
    for q0 in range(0, len(queries), _EXACT_QUERY_BLOCK):
        block = queries[q0 : q0 + _EXACT_QUERY_BLOCK]
        found_rows, found_scores = [], []
        for d0 in range(0, n, _EXACT_DATABASE_BLOCK):
            products = block @ database[d0 : d0 + _EXACT_DATABASE_BLOCK].T
            keep = min(k, products.shape[1])
            top = np.argpartition(products, products.shape[1] - keep, axis=1)[:, -keep:]
            found_scores.append(np.take_along_axis(products, top, axis=1))
            found_rows.append(top + d0)
        candidates = np.concatenate(found_rows, axis=1)
        candidate_scores = np.concatenate(found_scores, axis=1)
        order = np.lexsort((candidates, -candidate_scores), axis=1)[:, :k]
        rows[q0 : q0 + len(block)] = np.take_along_axis(candidates, order, axis=1)
        scores[q0 : q0 + len(block)] = np.take_along_axis(candidate_scores, order, axis=1)
    return rows, scores


class PosterIndex:
    """A ScaNN searcher with the movie ids of its rows and what it was built from."""

    def __init__(self, searcher: Any, ids: np.ndarray, info: dict) -> None:
        self.searcher = searcher
        self.ids = np.asarray(ids, dtype=np.int64)
        self.info = info

    @property
    def model_version(self) -> str:
        """The model version of the indexed vectors."""
        return self.info["model_version"]

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, model_version: str, params: IndexParams
    ) -> PosterIndex:
        """Build a dot-product searcher over L2-normalised vectors."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(set(np.asarray(ids).tolist())) != len(ids):
            raise ValueError("movie ids must be unique within one index")
        database = _normalise(vectors)
        pybind = import_scann()
        k = min(params.num_neighbors, len(database))
        builder = pybind.builder(database, k, "dot_product")
        if params.mode == "brute_force":
            builder = builder.score_brute_force()
        else:
            if params.mode == "tree_ah":
                builder = builder.tree(
                    num_leaves=params.num_leaves,
                    num_leaves_to_search=params.num_leaves_to_search,
                    training_sample_size=min(params.training_sample_size, len(database)),
                )
            builder = builder.score_ah(
                params.dims_per_block,
                anisotropic_quantization_threshold=params.anisotropic_quantization_threshold,
            ).reorder(params.reorder_k)
        start = time.perf_counter()
        searcher = builder.build()
        info = {
            "model_version": model_version,
            "n": int(len(database)),
            "dim": int(database.shape[1]),
            "params": dataclasses.asdict(params),
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        return cls(searcher, ids, info)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (movie ids, dot-product scores) for each query row, best first.

        Where the index finds fewer than k rows (too few in the searched leaves) the missing
        places hold id -1 and score NaN.
        """
        queries = _normalise(np.atleast_2d(queries))
        k = min(k, len(self.ids))
        params = self.info["params"]
        options: dict[str, int] = {"final_num_neighbors": k}
        if params["mode"] != "brute_force":
            # ScaNN reorders only reorder_k candidates and pads the rest with row 0 / NaN.
            options["pre_reorder_num_neighbors"] = max(k, params["reorder_k"])
        if params.get("num_leaves_to_search"):
            options["leaves_to_search"] = params["num_leaves_to_search"]
        rows, scores = self.searcher.search_batched(queries, **options)
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        ids = self.ids[rows]
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def recall_at_k(
        self, database: np.ndarray, k: int = 10, sample: int = 1000, seed: int = 0
    ) -> float:
        """Mean overlap of the index's top-k with exact search, on a sample of rows as queries."""
        database = _normalise(database)
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(database), size=min(sample, len(database)), replace=False)
        queries = database[np.sort(picks)]
        exact_rows, _ = exact_search(database, queries, k)
        found, _ = self.search(queries, k)
        exact_ids = self.ids[exact_rows]
        hits = [
            len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact_ids, strict=True)
        ]
        return float(np.sum(hits) / exact_ids.size)

    # ------------------------------------------------------------------ persistence
    def save(self, uri: str) -> None:
        """Serialise (relative paths) and copy every file to ``uri`` (a local dir or gs://).

        The manifest is removed first and written last, so a save killed half-way leaves a
        folder that :meth:`load` refuses, never a mix of two indexes.
        """
        manifest = FileSystems.join(uri, MANIFEST_FILE)
        stale = FileSystems.match([FileSystems.join(uri, f"*{TEMPORARY_SUFFIX}")])[0]
        old = [manifest] if FileSystems.exists(manifest) else []
        old += [m.path for m in stale.metadata_list]
        if old:
            FileSystems.delete(old)
        with tempfile.TemporaryDirectory() as local:
            self.searcher.serialize(local, relative_path=True)
            np.save(os.path.join(local, IDS_FILE), self.ids)
            with open(os.path.join(local, MANIFEST_FILE), "w") as handle:
                json.dump(self.info, handle, indent=2, sort_keys=True)
            names = sorted(os.listdir(local), key=lambda name: (name == MANIFEST_FILE, name))
            for name in names:
                with open(os.path.join(local, name), "rb") as handle:
                    write_bytes(FileSystems.join(uri, name), handle.read())

    @classmethod
    def load(cls, uri: str) -> PosterIndex:
        """Copy an index from ``uri`` (local or gs://) to a local temp dir and load it."""
        pattern = FileSystems.join(uri, "*")
        matches = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
        if not any(p.endswith(MANIFEST_FILE) for p in matches):
            raise FileNotFoundError(f"no ScaNN index at {uri} ({MANIFEST_FILE} missing)")
        with tempfile.TemporaryDirectory(prefix="scann-index-") as local:
            for path in matches:
                with (
                    FileSystems.open(path) as src,
                    open(os.path.join(local, os.path.basename(path)), "wb") as dst,
                ):
                    dst.write(src.read())
            with open(os.path.join(local, MANIFEST_FILE)) as handle:
                info = json.load(handle)
            ids = np.load(os.path.join(local, IDS_FILE))
            searcher = import_scann().load_searcher(local)  # reads every file into memory
        return cls(searcher, ids, info)
