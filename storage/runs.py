"""Published runs: the commit rule that every stage's writers and readers share.

A run of a stage writes its tables under ``{root}/{table}/run-NNNN/`` and publishes them in one
step at the end, by writing ``{root}/manifests/run-NNNN.json`` last (under a temporary name,
then renamed). Readers take only the files of published runs (:func:`published_paths`), so
the shards of a killed or still-running run are never read. The next run of the stage reuses
the unpublished run number and first deletes what the killed run left
(:func:`discard_unpublished`), so shards of another ``--num_shards`` never mix with its own.
Local paths and ``gs://`` alike, through Beam's FileSystems.
"""

from __future__ import annotations

import json
import logging
import re

from apache_beam.io.filesystems import FileSystems

MANIFESTS = "manifests"
_RUN_FOLDER = re.compile(r"run-\d{4,}")
_MANIFEST = re.compile(r"(run-\d{4,})\.json$")
_MANIFEST_FILE = re.compile(r"(run-\d{4,})\.")
TEMPORARY_SUFFIX = ".tmp-writing"
_LOG = logging.getLogger(__name__)


def manifest_path(root: str, run_id: str) -> str:
    """The manifest whose presence publishes run ``run_id`` of the output root ``root``."""
    return FileSystems.join(root, MANIFESTS, f"{run_id}.json")


def _match(pattern: str) -> list[str]:
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def run_of(path: str) -> tuple[str, str] | None:
    """(output root, run id) of a table file ``{root}/{table}/run-NNNN/{file}``, else None."""
    parts = path.split("/")
    if len(parts) >= 4 and _RUN_FOLDER.fullmatch(parts[-2]):
        return "/".join(parts[:-3]), parts[-2]
    return None


def published_paths(pattern: str, include_unpublished: bool = False) -> list[str]:
    """The files matching ``pattern`` (sorted), less those of runs without a manifest.

    ``include_unpublished`` keeps them: for a stage that reads its own run before publishing it.
    """
    if include_unpublished:
        return _match(pattern)
    published: dict[tuple[str, str], bool] = {}
    kept = []
    for path in _match(pattern):
        run = run_of(path)
        if run is not None and run not in published:
            published[run] = FileSystems.exists(manifest_path(*run))
            if not published[run]:
                _LOG.warning(
                    "ignoring %s/*/%s: that run has no manifest (killed or still running); the "
                    "next run of its stage deletes it", run[0], run[1],
                )  # fmt: skip
        if run is None or published[run]:
            kept.append(path)
    return kept


def published_runs(root: str) -> list[str]:
    """Run ids under ``root`` that are published (have a manifest), oldest first."""
    found = (m.group(1) for p in _match(manifest_path(root, "run-*")) if (m := _MANIFEST.search(p)))
    return sorted(found, key=lambda run_id: int(run_id.split("-")[1]))


def discard_unpublished(root: str) -> list[str]:
    """Delete every file of the runs under ``root`` that have no manifest; return their paths.

    A stage calls this before it writes a run, so what a killed run left (shards of any
    ``--num_shards``, a manifest's Parquet row, temporary files) is gone before the run number
    is reused. Published runs are never touched.
    """
    done = set(published_runs(root))
    prefix = FileSystems.join(root, "x")[:-1]
    leftovers = [
        p for p in _match(FileSystems.join(root, "*", "run-*", "**"))
        if p[len(prefix) :].split("/")[1] not in done
    ]  # fmt: skip
    for path in _match(FileSystems.join(root, MANIFESTS, "run-*")):
        run = _MANIFEST_FILE.match(path.rsplit("/", 1)[-1])
        if run and (run.group(1) not in done or path.endswith(TEMPORARY_SUFFIX)):
            leftovers.append(path)
    if leftovers:
        _LOG.warning("deleting %d files of unpublished runs under %s", len(leftovers), root)
        FileSystems.delete(leftovers)
    return leftovers


def publish_run(root: str, run_id: str, stage: str) -> str:
    """Publish tables written outside a stage (tests, benchmarks, imported data) under ``root``
    as run ``run_id``: a minimal manifest, written last; returns its path."""
    path = manifest_path(root, run_id)
    temp = path + TEMPORARY_SUFFIX
    with FileSystems.create(temp) as handle:
        handle.write(json.dumps({"run_id": run_id, "stage": stage}).encode("utf-8"))
    FileSystems.rename([temp], [path])
    return path
