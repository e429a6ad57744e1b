"""Tests for models.scann_index: the TF-hiding import, search against NumPy, recall, persistence."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from models import scann_index
from models.scann_index import IndexParams
from models.scann_index import PosterIndex
from models.scann_index import choose_params
from models.scann_index import exact_search
from models.scann_index import import_scann

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((n, dim)))


def _clustered_unit(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, dim)))
    labels = rng.integers(0, clusters, n)
    noise = rng.standard_normal((n, dim)) * (spread / np.sqrt(dim))
    return _unit(centres[labels] + noise)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def clustered() -> np.ndarray:
    """20,000 unit vectors in 64 dimensions from 200 wide Gaussian clusters (10th nn ~0.53)."""
    return _clustered_unit(20_000, 64, clusters=200, spread=1.2, seed=11)


@pytest.fixture(scope="module")
def small_index() -> tuple[PosterIndex, np.ndarray]:
    """A small AH index over 3,000 clustered vectors, with those vectors."""
    vectors = _clustered_unit(3_000, 32, clusters=50, spread=1.0, seed=5)
    ids = np.arange(3_000, dtype=np.int64) * 7 + 100
    return PosterIndex.build(ids, vectors, "v1", choose_params(3_000, mode="ah")), vectors


# ------------------------------------------------------------------ import_scann


def test_import_scann_keeps_an_imported_tensorflow():
    result = _run_python(
        """
        import sys
        import tensorflow
        real = sys.modules["tensorflow"]
        assert "scann" not in sys.modules
        from models.scann_index import import_scann
        pybind = import_scann()
        assert "scann" in sys.modules and hasattr(pybind, "builder")
        assert sys.modules["tensorflow"] is real
        import tensorflow as again
        assert again is real
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_import_scann_without_tensorflow_leaves_it_importable():
    result = _run_python(
        """
        import sys
        from models.scann_index import import_scann
        pybind = import_scann()
        assert hasattr(pybind, "load_searcher")
        assert "tensorflow" not in sys.modules, "import_scann imported or blocked tensorflow"
        import tensorflow
        assert sys.modules["tensorflow"] is tensorflow
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_import_scann_keeps_a_blocked_tensorflow_blocked():
    result = _run_python(
        """
        import sys
        sys.modules["tensorflow"] = None
        from models.scann_index import import_scann
        import_scann()
        assert "tensorflow" in sys.modules and sys.modules["tensorflow"] is None
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_import_scann_in_process_returns_the_pybind_module():
    pybind = import_scann()
    assert pybind is import_scann()
    assert callable(pybind.builder) and callable(pybind.load_searcher)
    assert sys.modules.get("tensorflow", "absent") is not None


# ------------------------------------------------------------------ exact search


def test_exact_search_blocks_agree_with_a_full_sort(monkeypatch: pytest.MonkeyPatch):
    database = _random_unit(503, 16, seed=1)
    database[40] = database[7]  # an exact tie: the lower row comes first
    queries = np.vstack([_random_unit(37, 16, seed=2), database[7:8]])
    monkeypatch.setattr(scann_index, "_EXACT_QUERY_BLOCK", 8)
    monkeypatch.setattr(scann_index, "_EXACT_DATABASE_BLOCK", 50)
    rows, scores = exact_search(database, queries, 12)
    products = queries @ database.T
    expected = np.array([np.lexsort((np.arange(503), -row))[:12] for row in products])
    np.testing.assert_array_equal(rows, expected)
    # BLAS may round a block's products in the last bit differently from the full product's.
    np.testing.assert_allclose(
        scores, np.take_along_axis(products, expected, axis=1), rtol=0, atol=1e-6
    )
    assert rows[-1, :2].tolist() == [7, 40]


def test_exact_search_caps_k_at_the_database_size():
    rows, scores = exact_search(_random_unit(4, 8, seed=3), _random_unit(2, 8, seed=4), 10)
    assert rows.shape == scores.shape == (2, 4)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3]


# ------------------------------------------------------------------ search and recall


@pytest.mark.parametrize("n, dim, seed", [(2_000, 48, 0), (500, 8, 1), (7, 16, 2)])
def test_brute_force_equals_exact_numpy_search(n: int, dim: int, seed: int):
    database = _random_unit(n, dim, seed)
    ids = np.random.default_rng(seed).permutation(10 * n)[:n] + 1
    queries = _random_unit(50, dim, seed + 100)
    index = PosterIndex.build(ids, database, "v1", choose_params(n))
    assert index.info["params"]["mode"] == "brute_force"
    found, scores = index.search(queries, 10)
    rows, exact_scores = exact_search(database, queries, 10)
    np.testing.assert_array_equal(found, ids[rows])
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


@pytest.mark.parametrize("mode", ["ah", "tree_ah"])
def test_quantised_indexes_reach_recall_on_clustered_vectors(clustered: np.ndarray, mode: str):
    params = choose_params(len(clustered), mode=mode)
    ids = np.arange(len(clustered), dtype=np.int64) + 1
    index = PosterIndex.build(ids, clustered, "v1", params)
    assert index.recall_at_k(clustered, k=10, sample=500) >= 0.95


def test_search_returns_k_real_neighbours_beyond_reorder_k(small_index):
    index, vectors = small_index
    k = index.info["params"]["reorder_k"] + 50
    found, scores = index.search(vectors[:5], k)
    assert found.shape == (5, k)
    assert np.isfinite(scores).all() and (found >= 0).all()
    assert all(len(set(row.tolist())) == k for row in found)
    assert set(found.ravel().tolist()) <= set(index.ids.tolist())


def test_search_marks_missing_neighbours_with_minus_one():
    vectors = _clustered_unit(500, 16, clusters=25, spread=0.5, seed=9)
    params = IndexParams(mode="tree_ah", num_leaves=50, num_leaves_to_search=1)
    index = PosterIndex.build(np.arange(500) + 1, vectors, "v1", params)
    found, scores = index.search(vectors[:10], 100)
    missing = found == -1
    assert missing.any(), "one leaf of ~10 rows cannot hold 100 neighbours"
    assert np.isnan(scores[missing]).all() and np.isfinite(scores[~missing]).all()
    for row, gaps in zip(found, missing, strict=True):
        assert len(set(row[~gaps].tolist())) == int((~gaps).sum())


# ------------------------------------------------------------------ persistence


@pytest.mark.parametrize("mode", ["brute_force", "ah", "tree_ah"])
def test_index_loads_after_its_directory_moves(tmp_path: pathlib.Path, mode: str):
    vectors = _clustered_unit(3_000, 32, clusters=50, spread=1.0, seed=6)
    ids = np.arange(3_000, dtype=np.int64) + 10
    index = PosterIndex.build(ids, vectors, "v7", choose_params(3_000, mode=mode))
    index.save(str(tmp_path / "built"))
    shutil.move(tmp_path / "built", tmp_path / "elsewhere" / "moved")
    loaded = PosterIndex.load(str(tmp_path / "elsewhere" / "moved"))
    assert loaded.model_version == "v7" and loaded.info == index.info
    np.testing.assert_array_equal(loaded.ids, ids)
    expected_ids, expected_scores = index.search(vectors[:40], 10)
    found_ids, found_scores = loaded.search(vectors[:40], 10)
    np.testing.assert_array_equal(found_ids, expected_ids)
    np.testing.assert_array_equal(found_scores, expected_scores)


def test_a_save_killed_half_way_leaves_no_loadable_mix(tmp_path, monkeypatch):
    """The manifest goes first and comes back last: a killed rebuild is refused, not mixed."""
    import models.scann_index

    vectors = _clustered_unit(2_000, 16, clusters=20, spread=1.0, seed=3)
    out = str(tmp_path / "index")
    PosterIndex.build(np.arange(2_000), vectors, "old", choose_params(2_000)).save(out)
    new = PosterIndex.build(np.arange(2_000) + 5, vectors, "new", choose_params(2_000, mode="ah"))
    write_bytes, written = models.scann_index.write_bytes, []

    def killed_after_two(path: str, data: bytes) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after it runs
        written.append(path)
        write_bytes(path, data)

    monkeypatch.setattr(models.scann_index, "write_bytes", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        new.save(out)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="index_manifest.json missing"):
        PosterIndex.load(out)
    new.save(out)
    loaded = PosterIndex.load(out)
    assert loaded.model_version == "new" and loaded.ids[0] == 5


def test_serialised_files_hold_no_absolute_paths(tmp_path: pathlib.Path):
    vectors = _clustered_unit(3_000, 32, clusters=50, spread=1.0, seed=8)
    index = PosterIndex.build(
        np.arange(3_000) + 1, vectors, "v1", choose_params(3_000, mode="tree_ah")
    )
    out = tmp_path / "index"
    index.save(str(out))
    assets = (out / "scann_assets.pbtxt").read_text()
    paths = re.findall(r'asset_path:\s*"([^"]*)"', assets)
    assert paths, assets
    for path in paths:
        assert not os.path.isabs(path), path
        assert (out / path).is_file(), path
    for needle in (str(tmp_path), tempfile.gettempdir() + os.sep):
        for file in out.iterdir():
            assert needle.encode() not in file.read_bytes(), f"{needle} in {file.name}"


def test_load_of_a_missing_directory_says_what_is_missing(tmp_path: pathlib.Path):
    missing = str(tmp_path / "no-index-here")
    with pytest.raises(FileNotFoundError, match="no ScaNN index at .*no-index-here"):
        PosterIndex.load(missing)


# ------------------------------------------------------------------ input checks


def test_duplicate_ids_are_rejected():
    vectors = _random_unit(4, 8, seed=0)
    with pytest.raises(ValueError, match="unique"):
        PosterIndex.build(np.array([1, 2, 2, 3]), vectors, "v1", choose_params(4))


def test_id_and_vector_counts_must_match():
    with pytest.raises(ValueError, match="3 ids for 4 vectors"):
        PosterIndex.build(np.array([1, 2, 3]), _random_unit(4, 8, 0), "v1", choose_params(4))


def test_zero_vectors_are_rejected(small_index):
    vectors = _random_unit(4, 8, seed=0)
    vectors[2] = 0.0
    with pytest.raises(ValueError, match="non-zero"):
        PosterIndex.build(np.arange(4), vectors, "v1", choose_params(4))
    index, database = small_index
    with pytest.raises(ValueError, match="non-zero"):
        index.search(np.zeros((1, database.shape[1]), dtype=np.float32), 5)


# ------------------------------------------------------------------ choose_params


@pytest.mark.parametrize(
    "n, mode",
    [(1, "brute_force"), (20_000, "brute_force"), (20_001, "ah"), (49_999, "ah")],
)
def test_choose_params_regimes_below_the_tree(n: int, mode: str):
    params = choose_params(n)
    assert params.mode == mode
    assert params.num_leaves == params.num_leaves_to_search == 0


@pytest.mark.parametrize(
    "n, leaves, searched, sample",
    [(100_000, 949, 28, 100_000), (200_000, 1342, 40, 200_000), (1_000_000, 1_000, 100, 250_000)],
)
def test_choose_params_tree_has_about_sqrt_n_leaves(n: int, leaves: int, searched: int, sample):
    params = choose_params(n)
    assert params.mode == "tree_ah"
    assert (params.num_leaves, params.num_leaves_to_search) == (leaves, searched)
    assert params.training_sample_size == sample


def test_choose_params_overrides():
    assert choose_params(500, mode="tree_ah").num_leaves == 22
    assert choose_params(1_000_000, mode="ah").mode == "ah"
    assert choose_params(1_000_000, mode=None).mode == "tree_ah"
    tuned = choose_params(1_000_000, reorder_k=250, num_leaves_to_search=30, dims_per_block=None)
    assert (tuned.reorder_k, tuned.num_leaves_to_search, tuned.dims_per_block) == (250, 30, 2)
    assert choose_params(1_000_000, num_leaves=50).num_leaves_to_search == 5
    with pytest.raises(ValueError, match="num_leaves_to_search"):
        choose_params(1_000_000, num_leaves_to_search=2_000)
    with pytest.raises(ValueError, match="brute_force, ah or tree_ah"):
        choose_params(10, mode="hnsw")
