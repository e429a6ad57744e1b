"""iALS fits for :mod:`benchmarks.collab_peers`, run by the peer env's python (``.venv-bench``).

implicit lives in the peer env only, so this script imports nothing of the project. It reads a
JSON list of fits, each ``{"train": NPZ, "queries": [NPZ, ...], "params": {...}, "seed": N,
"out": NPZ}``: ``train`` is a users x films confidence matrix (``scipy.sparse.save_npz``), each
query matrix holds the same users' rows weighted otherwise. Each fit writes to ``out`` the item
factors, the fitted user factors and, per query matrix, the user factors recomputed from those
rows with the item factors fixed (``query_0``, ``query_1``, ...).

    .venv-bench/bin/python benchmarks/ials_peer.py JOBS.json
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import scipy.sparse
from implicit.cpu.als import AlternatingLeastSquares


def fit(job: dict) -> None:
    """Fit one iALS model and write its factors (and the query users' factors) to ``job["out"]``."""
    train = scipy.sparse.load_npz(job["train"]).tocsr().astype(np.float32)
    model = AlternatingLeastSquares(**job["params"], random_state=job["seed"], num_threads=1)
    model.fit(train, show_progress=False)
    users = np.arange(train.shape[0])
    found = {"items": model.item_factors, "users": model.user_factors}
    for index, path in enumerate(job["queries"]):
        rows = scipy.sparse.load_npz(path).tocsr().astype(np.float32)
        found[f"query_{index}"] = model.recalculate_user(users, rows)
    np.savez(job["out"], **found)


def main(argv: list[str]) -> int:
    """Run every fit of the jobs file ``argv[1]``."""
    if len(argv) != 2:
        print("usage: ials_peer.py JOBS.json", file=sys.stderr)
        return 2
    for job in json.loads(pathlib.Path(argv[1]).read_text(encoding="utf-8")):
        fit(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
