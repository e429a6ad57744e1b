"""Output layout of a stage and its run manifest (counts that must add up).

Layout under an output root (local or ``gs://``)::

    {root}/{table}/run-NNNN/{table}-SSSSS-of-NNNNN.{ext}
    {root}/manifests/run-NNNN.json   (and run-NNNN.parquet, the RunManifest row)

A run is published in one step at the end, when its manifest JSON is written (last, and
atomically); readers take only published runs, and a killed run's number is reused by the next
run, which first deletes what the killed one left (the rule lives in ``storage.runs``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from fetching.resolve import REDACTED
from fetching.resolve import redact_secrets
from schemas import RunManifest
from storage import runs
from storage.files import parquet_encoder
from storage.files import write_bytes

_LOG = logging.getLogger(__name__)
SECRET_WORDS = ("api_key", "apikey", "access_key", "token", "password", "passwd", "secret")
"""An option (or flag) whose name holds one of these is a secret: never written or logged."""


def is_secret_option(name: str) -> bool:
    """Whether an option or flag name (``tmdb_api_key``, ``--db-password``) marks a secret."""
    key = name.lstrip("-").replace("-", "_").lower()
    return any(word in key for word in SECRET_WORDS)


def redact_options(options: dict) -> dict:
    """Options as a run may record them: secret options' values and api_key URL values redacted."""
    shown = {}
    for name, value in options.items():
        if is_secret_option(name) and value not in (None, ""):
            value = REDACTED
        elif isinstance(value, str):
            value = redact_secrets(value, ())
        shown[name] = value
    return shown


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """Where one run of a stage writes its tables and manifest."""

    root: str
    run_id: str

    @staticmethod
    def completed_runs(root: str) -> list[str]:
        """Run ids under ``root`` that finished (have a manifest), oldest first."""
        return runs.published_runs(root)

    @classmethod
    def next_run(cls, root: str) -> OutputLayout:
        """The layout of the next run under ``root`` (run-0001 for a new root)."""
        done = cls.completed_runs(root)
        number = int(done[-1].split("-")[1]) + 1 if done else 1
        return cls(root=root, run_id=f"run-{number:04d}")

    def table_prefix(self, table: str, run_id: str | None = None) -> str:
        """Shard prefix of a table for this (or another) run."""
        run = run_id or self.run_id
        return FileSystems.join(self.root, table, run, table)

    def table_glob(self, table: str, suffix: str, run_id: str | None = None) -> str:
        """Glob of every shard of a table for this (or another) run."""
        return f"{self.table_prefix(table, run_id)}-*-of-*{suffix}"

    @property
    def manifest_path(self) -> str:
        """The JSON manifest of this run; writing it (last) publishes the run."""
        return runs.manifest_path(self.root, self.run_id)

    def discard_unpublished(self) -> None:
        """Delete what killed runs left under the root, before this run writes its tables."""
        runs.discard_unpublished(self.root)


ACCOUNTED = ("written", "duplicates", "dead_lettered", "already_present")


def count(pcoll: beam.PCollection, label: str) -> beam.PCollection:
    """A singleton PCollection holding the number of elements (0 when empty)."""
    return pcoll | label >> beam.combiners.Count.Globally()


def count_by(pcoll: beam.PCollection, label: str, key) -> beam.PCollection:
    """A singleton PCollection holding {key(element): count}."""
    return (
        pcoll
        | f"{label}Keys" >> beam.Map(key)
        | f"{label}Count" >> beam.combiners.Count.PerElement()
        | f"{label}Dict" >> beam.combiners.ToDict()
    )


def dead_letter_reasons(dead: beam.PCollection, label: str) -> beam.PCollection:
    """A singleton {"stage/reason": count} of a dead-letter PCollection."""
    return count_by(dead, label, lambda d: f"{d.stage}/{d.reason}")


def build_manifest(
    layout: OutputLayout,
    stage: str,
    started_at: datetime.datetime,
    input_path: str,
    options: dict,
    counts: dict[str, int],
    breakdown: dict[str, dict],
) -> RunManifest:
    """The manifest row of a run, with the accounting identity evaluated."""
    input_rows = counts["input_rows"]
    accounted = (
        counts["written"]
        + counts["duplicates"]
        + counts["dead_lettered"]
        + counts["already_present"]
    )
    return RunManifest(
        run_id=layout.run_id,
        stage=stage,
        started_at=started_at,
        finished_at=datetime.datetime.now(datetime.UTC),
        input_path=redact_secrets(input_path, ()),
        output_path=layout.root,
        input_rows=input_rows,
        written=counts["written"],
        duplicates=counts["duplicates"],
        dead_lettered=counts["dead_lettered"],
        already_present=counts["already_present"],
        accounting_ok=input_rows == accounted,
        counts_json=json.dumps(breakdown, sort_keys=True),
        options_json=json.dumps(redact_options(options), sort_keys=True, default=str),
    )


class WriteRunManifest(beam.PTransform):
    """Writes a run's manifest from singleton count PCollections, after every table is written.

    The input is a dict of singleton PCollections: ``input_rows`` and the four ``ACCOUNTED``
    counts, plus any others, which go into the manifest's per-reason breakdown.
    """

    def __init__(
        self,
        layout: OutputLayout,
        stage: str,
        started_at: datetime.datetime,
        input_path: str,
        options: dict,
    ) -> None:
        super().__init__()
        self._args = (layout, stage, started_at, input_path, options)

    def expand(self, counts: dict[str, beam.PCollection]) -> beam.PCollection:
        missing = {"input_rows", *ACCOUNTED} - set(counts)
        if missing:
            raise ValueError(f"manifest counts missing: {sorted(missing)}")
        layout, stage, started_at, input_path, options = self._args
        side = {name: beam.pvalue.AsSingleton(p) for name, p in counts.items()}

        def write(_, **values) -> str:
            totals = {k: values.pop(k) for k in ("input_rows", *ACCOUNTED)}
            row = build_manifest(layout, stage, started_at, input_path, options, totals, values)
            write_manifest(layout, row)
            return layout.manifest_path

        pipeline = next(iter(counts.values())).pipeline
        return (
            pipeline
            | "ManifestTrigger" >> beam.Create([None])
            | "WriteManifest" >> beam.Map(write, **side)
        )


def manifest_json(manifest: RunManifest) -> str:
    """The manifest as indented JSON (counts expanded) for people and tools."""
    data = manifest.to_dict()
    data["counts"] = json.loads(data.pop("counts_json"))
    data["options"] = json.loads(data.pop("options_json"))
    data["identity"] = (
        f"input_rows {manifest.input_rows} == written {manifest.written} + duplicates "
        f"{manifest.duplicates} + dead_lettered {manifest.dead_lettered} + already_present "
        f"{manifest.already_present}: {'OK' if manifest.accounting_ok else 'VIOLATED'}"
    )
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def write_manifest(layout: OutputLayout, manifest: RunManifest) -> None:
    """Write the manifest JSON and its one-row Parquet table; this marks the run completed."""
    parquet_path = layout.manifest_path[: -len(".json")] + ".parquet"
    write_bytes(parquet_path, parquet_encoder(RunManifest)([manifest]))
    write_bytes(layout.manifest_path, manifest_json(manifest).encode("utf-8"))
    if manifest.accounting_ok:
        _LOG.info("%s: accounting identity holds (%d rows)", layout.run_id, manifest.input_rows)
    else:
        _LOG.error("%s: accounting identity VIOLATED: %s", layout.run_id, manifest_json(manifest))


def read_manifest(path: str) -> dict:
    """A manifest JSON written by :func:`write_manifest`."""
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def write_json_report(root: str, name: str, report: dict) -> str:
    """Write ``{root}/reports/{name}.json`` (sorted, indented) and return its path."""
    path = FileSystems.join(root, "reports", f"{name}.json")
    write_bytes(path, json.dumps(report, indent=2, sort_keys=True, default=str).encode("utf-8"))
    return path
