"""Peer baseline: img2dataset's wall time on a URL list, run in its own env (never .venv).

img2dataset and its dependencies live in ``.venv-bench`` (``make bench-peers``, pins in
``benchmarks/requirements-peers.txt``), kept apart from the project's env. This module uses only
the standard library: it writes the URL list to a file, starts img2dataset in the peer env's
python as a subprocess and reads the counts from img2dataset's own ``*_stats.json`` files.

The run makes no traffic except to the URLs given: wandb is off (``enable_wandb=False`` and
``WANDB_MODE=disabled``), albumentations' update check on import is off
(``NO_ALBUMENTATIONS_UPDATE=1``) and proxy variables are dropped so fetches go straight to the
URLs' hosts.

    from benchmarks.peers import peer_available, run_img2dataset
    run = run_img2dataset(urls, workdir="/tmp/peer")   # PeerRun(wall_s=..., successes=...)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON_ENV = "POSTERS_BENCH_PYTHON"
PEER_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
RUN_TIMEOUT_S = 3600.0

# Settings for the img2dataset child process: no telemetry, no update checks, no proxies.
_QUIET_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_MODE": "disabled",
    "WANDB_DISABLED": "true",
    "WANDB_SILENT": "true",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_DROPPED_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)

# Runs in the peer env: img2dataset.download with the keyword arguments given as JSON in argv[1].
_RUNNER = """
import json, sys
from img2dataset import download
if __name__ == "__main__":
    download(**json.loads(sys.argv[1]))
"""


@dataclasses.dataclass(frozen=True)
class PeerRun:
    """One img2dataset run: wall time of the whole subprocess (start-up included) and its counts."""

    wall_s: float
    successes: int
    failures: int
    output_dir: str

    @property
    def per_s(self) -> float:
        """Images written per second of wall time."""
        return self.successes / self.wall_s if self.wall_s > 0 else 0.0


def peer_python() -> pathlib.Path:
    """The peer env's python: $POSTERS_BENCH_PYTHON, default .venv-bench/bin/python."""
    return pathlib.Path(os.environ.get(PYTHON_ENV) or PEER_PYTHON)


def peer_available(module: str = "img2dataset", env: dict | None = None) -> str | None:
    """None when the peer env can import ``module``, else the reason it cannot."""
    python = peer_python()
    if not python.exists():
        return f"peer env not found at {python}: run `make bench-peers` first (or set {PYTHON_ENV})"
    if not os.access(python, os.X_OK):
        return f"{python} is not executable: run `make bench-peers` first (or set {PYTHON_ENV})"
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        found = subprocess.run(
            [str(python), "-c", probe], env=env or _child_env(), capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{python} does not run ({err}): run `make bench-peers` first"
    if found.returncode != 0:
        return f"{module} is not installed in {python}: run `make bench-peers` first"
    return None


def run_img2dataset(
    urls: list[str],
    workdir: str,
    processes: int = 2,
    threads: int = 32,
    image_size: int = 768,
    samples_per_shard: int | None = None,
    same_work: bool = False,
    jpeg_quality: int = 95,
) -> PeerRun:
    """Download, resize (border, to ``image_size``) and re-encode (jpg) ``urls`` with img2dataset.

    ``same_work``: the project's image work instead: the longer side at most ``image_size``,
    aspect ratio kept, never upscaled, nothing padded, and an image that needs no resize (and is
    already a JPEG) kept as fetched, else re-encoded as JPEG at ``jpeg_quality``.

    Writes ``urls.txt``, ``img2dataset/`` (webdataset shards and stats) and ``img2dataset.log``
    under ``workdir``; a previous ``img2dataset/`` there is removed first, so that the run never
    skips shards as already done. ``samples_per_shard`` defaults to an even split of the URLs over
    the processes (img2dataset's own 10,000 would leave all but one process idle on small lists).
    Raises RuntimeError when img2dataset exits non-zero or writes no stats.
    """
    if not urls:
        raise ValueError("no URLs to download")
    if processes < 1 or threads < 1:
        raise ValueError("processes and threads must be at least 1")
    reason = peer_available()
    if reason is not None:
        raise RuntimeError(reason)
    work = pathlib.Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    url_file = work / "urls.txt"
    url_file.write_text("".join(f"{url}\n" for url in urls), encoding="utf-8")
    output_dir = work / "img2dataset"
    if output_dir.exists():
        shutil.rmtree(output_dir)
    per_shard = samples_per_shard or max(1, math.ceil(len(urls) / processes))
    settings = {
        "url_list": str(url_file),
        "input_format": "txt",
        "output_folder": str(output_dir),
        "output_format": "webdataset",
        "image_size": image_size,
        "resize_mode": "keep_ratio_largest" if same_work else "border",
        "resize_only_if_bigger": same_work,
        "skip_reencode": same_work,
        "encode_quality": jpeg_quality,
        "encode_format": "jpg",
        "processes_count": processes,
        "thread_count": threads,
        "number_sample_per_shard": per_shard,
        "distributor": "multiprocessing",
        "enable_wandb": False,
        "timeout": 10,
        "retries": 0,
    }
    log_path = work / "img2dataset.log"
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        done = subprocess.run(
            [str(peer_python()), "-c", _RUNNER, json.dumps(settings)],
            cwd=work,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
        )
        wall_s = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"img2dataset exited {done.returncode}; log {log_path}:\n{_tail(log_path)}"
        )
    successes, failures = _read_stats(output_dir)
    if successes + failures == 0:
        raise RuntimeError(f"img2dataset wrote no stats in {output_dir}; log:\n{_tail(log_path)}")
    return PeerRun(
        wall_s=wall_s, successes=successes, failures=failures, output_dir=str(output_dir)
    )


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(_QUIET_ENV)
    return env


def _read_stats(output_dir: pathlib.Path) -> tuple[int, int]:
    """(successes, failures) summed over img2dataset's per-shard ``*_stats.json`` files."""
    successes = failures = 0
    for path in sorted(output_dir.glob("*_stats.json")):
        stats = json.loads(path.read_text(encoding="utf-8"))
        successes += int(stats["successes"])
        failures += int(stats["failed_to_download"]) + int(stats["failed_to_resize"])
    return successes, failures


def _tail(path: pathlib.Path, chars: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]
