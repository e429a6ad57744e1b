"""The history-dependent nightly path at MovieLens scale: wall time, CPU and memory per stage.

For each size (1M, 5M and 25M watch events by default, in that order) a seeded MovieLens-25M-
shaped watch history (:mod:`benchmarks.history_gen`: users = events / 154, 10k / 30k / 60k films,
Zipf-like popularity whose top film reaches about half the users, log-normal activity of at
least 20 films) is written as a ratings CSV, and its shape is printed. The poster side does not
depend on the history, so it is prepared once per size, outside the totals: seeded clustered
unit vectors (dim 64) for every film, published as an embed-stage vector table, and
``pipelines.index`` over them (timed on its own line). Then the three stages that grow with the
history run in order, each as a subprocess of the project's .venv python on the default local
runner, exactly as the nightly job chains them:

* ``pipelines.cowatch --watch_history=H --output=VECTORS`` (its summary gives the co-watch
  version);
* ``pipelines.evaluate`` of the poster version with that co-watch version (the report holds the
  tuned blend);
* ``pipelines.neighbors`` with that blend into a DuckDB warehouse, whose candidates are counted.

Per stage: wall seconds, CPU seconds (user + sys of the stage and of every process it waited
for, from ``os.wait4``), the peak RSS of its largest process (``ru_maxrss``, same source) and the
peak of the summed RSS of all its processes (sampled from /proc every 0.2 s). A stage that fails
or runs past ``--stage_timeout_s`` is reported with the tail of its stderr; the stages after it
at that size are skipped, and after a timeout the larger sizes are skipped too. With two or more
sizes, the growth exponents of total wall time and peak RSS against events are fitted (least
squares on logs); the last line is ``RESULT events=... wall_s=... peak_rss_gb=... cpu_s=...
time_exponent=... memory_exponent=...`` for the largest size.

    python -m benchmarks.nightly_scale [--events 1000000] [--seed 0] [--workdir DIR] [--keep]
        [--stage_timeout_s 1800]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import hashlib
import json
import math
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.history_gen import format_stats
from benchmarks.history_gen import generate_history
from benchmarks.history_gen import history_stats
from benchmarks.history_gen import write_history_csv
from schemas import CandidateRow
from schemas import EmbeddingRow
from schemas import NeighborRow
from storage.runs import publish_run

DEFAULT_SIZES = (1_000_000, 5_000_000, 25_000_000)
DEFAULT_STAGE_TIMEOUT_S = 1800.0
REPO = pathlib.Path(__file__).resolve().parent.parent
POSTER_DIM = 64
POSTER_CLUSTERS = 200
POSTER_NOISE = 0.35
POSTER_MODEL = "poster_embedding_synthetic"
EMBEDDED_AT = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
RUN_ID = "run-0001"
SAMPLE_INTERVAL_S = 0.2
POLL_INTERVAL_S = 0.05
STDERR_TAIL_LINES = 15
TIMED_STAGES = ("cowatch", "evaluate", "neighbors")
GB = 1024.0**3
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class StageResult:
    """How one stage subprocess ended and what it cost."""

    name: str
    status: str
    wall_s: float = math.nan
    cpu_s: float = math.nan
    rss_gb: float = math.nan
    tree_rss_gb: float = math.nan
    stdout: str = ""
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the stage exited 0 within its time limit."""
        return self.status == "ok"

    @property
    def peak_gb(self) -> float:
        """The larger of the largest process's peak and the sampled peak of all processes."""
        return max(self.rss_gb, self.tree_rss_gb)


@dataclasses.dataclass
class SizeResult:
    """One size: the history's shape, the prepared poster side and the timed stages."""

    events: int
    stats: dict
    generate_s: float
    index: StageResult | None = None
    stages: list[StageResult] = dataclasses.field(default_factory=list)
    candidates: int | None = None
    candidate_users: int | None = None
    neighbors: int | None = None
    note: str = ""

    @property
    def complete(self) -> bool:
        """Whether every timed stage ran and succeeded."""
        return len(self.stages) == len(TIMED_STAGES) and all(s.ok for s in self.stages)

    @property
    def timed_out(self) -> bool:
        """Whether a stage ran past its time limit."""
        return any(s.status.startswith("timed out") for s in self.stages + [self.index] if s)

    def total(self, field: str) -> float:
        """Sum of a cost over the stages that ran (nan when none did)."""
        values = [getattr(s, field) for s in self.stages if not math.isnan(getattr(s, field))]
        return float(sum(values)) if values else math.nan

    @property
    def peak_gb(self) -> float:
        """The highest peak RSS of any timed stage."""
        values = [s.peak_gb for s in self.stages if not math.isnan(s.peak_gb)]
        return max(values) if values else math.nan


def venv_python() -> str:
    """The project's .venv python, or this interpreter when there is none."""
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def session_rss_bytes(session: int) -> int:
    """Summed resident memory of every live process of a session (from /proc)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields after "(comm)": state ppid pgrp session ...
            total += int(fields[21]) * PAGE_BYTES
    return total


def _tail(path: pathlib.Path, lines: int = STDERR_TAIL_LINES) -> str:
    text = path.read_text(errors="replace").rstrip().splitlines()
    return "\n".join(text[-lines:])


def run_stage(
    name: str, module: str, args: Sequence[str], logs: pathlib.Path, timeout_s: float
) -> StageResult:
    """Run ``python -m module args`` in its own session; its wall, CPU and memory cost."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.stdout", logs / f"{name}.stderr"
    command = [venv_python(), "-m", module, *args]
    print(f"  running {name}: {' '.join(command[1:])}", flush=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], session_rss_bytes(proc.pid))
                done.wait(SAMPLE_INTERVAL_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_INTERVAL_S)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if not timed_out:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the stage's that outlived it
        except ProcessLookupError:
            pass
    if timed_out:
        state = f"timed out after {timeout_s:.0f} s"
    elif proc.returncode != 0:
        state = f"failed (exit {proc.returncode})"
    else:
        state = "ok"
    print(f"  {name}: {state}, {wall:.1f} s", flush=True)
    return StageResult(
        name=name, status=state, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
        rss_gb=usage.ru_maxrss * 1024 / GB, tree_rss_gb=peak[0] / GB,
        stdout=out_path.read_text(errors="replace"),
        stderr_tail="" if state == "ok" else _tail(err_path),
    )  # fmt: skip


def poster_vectors(films: int, seed: int) -> np.ndarray:
    """Seeded unit vectors (float32, dim 64) from clusters of uneven size, one a film."""
    rng = np.random.default_rng([seed, films, POSTER_DIM])
    centres = rng.standard_normal((POSTER_CLUSTERS, POSTER_DIM))
    weights = rng.lognormal(0.0, 0.7, POSTER_CLUSTERS)
    label = rng.choice(POSTER_CLUSTERS, size=films, p=weights / weights.sum())
    noise = POSTER_NOISE * rng.standard_normal((films, POSTER_DIM))
    x = centres[label] / math.sqrt(POSTER_DIM) + noise / math.sqrt(POSTER_DIM) * 2.0
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_poster_table(root: pathlib.Path, film_ids: np.ndarray, seed: int) -> str:
    """Publish seeded poster vectors for every film as an embed-stage vector table under
    ``root``; returns its model version."""
    digest = hashlib.sha256(f"{POSTER_MODEL}:{seed}:{film_ids.size}".encode()).hexdigest()
    version = f"{POSTER_MODEL}-{digest[:12]}"
    vectors = poster_vectors(film_ids.size, seed)
    schema = EmbeddingRow.arrow_schema(POSTER_DIM)
    c = EmbeddingRow.c
    n = film_ids.size
    columns = {
        c.movie_id: pa.array(film_ids, pa.int64()),
        c.dim: pa.array(np.full(n, POSTER_DIM, dtype=np.int64)),
        c.model_name: pa.array([POSTER_MODEL] * n),
        c.model_version: pa.array([version] * n),
        c.content_sha256: pa.array(
            [hashlib.sha256(f"{seed}:{m}".encode()).hexdigest() for m in film_ids.tolist()]
        ),
        c.poster_of: pa.array(film_ids, pa.int64()),
        c.embedded_at: pa.array([EMBEDDED_AT] * n, schema.field(c.embedded_at).type),
        c.embedding: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), POSTER_DIM),
    }
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    folder = root / version / EmbeddingRow.TABLE / RUN_ID
    folder.mkdir(parents=True)
    pq.write_table(table, folder / f"{EmbeddingRow.TABLE}-00000-of-00001.parquet")
    publish_run(str(root / version), RUN_ID, "benchmark")
    return version


def cowatch_version(result: StageResult, vectors: pathlib.Path) -> str | None:
    """The co-watch version from the stage's JSON summary, else from its newest run manifest."""
    start = result.stdout.find("{")
    if start >= 0:
        try:
            return json.loads(result.stdout[start:])["model_version"]
        except (ValueError, KeyError):
            pass
    manifests = sorted(glob.glob(str(vectors / "_cowatch_runs" / "manifests" / "run-*.json")))
    if manifests:
        return json.loads(pathlib.Path(manifests[-1]).read_text()).get("model_version")
    return None


def evaluation_report(nightly: pathlib.Path) -> pathlib.Path | None:
    """The newest evaluation report under the nightly root, when it holds a blend."""
    reports = sorted(
        (nightly / "reports").glob("evaluation-*.json"), key=lambda p: p.stat().st_mtime
    )
    if not reports or json.loads(reports[-1].read_text()).get("blend") is None:
        return None
    return reports[-1]


def count_warehouse(path: pathlib.Path) -> tuple[int, int, int]:
    """(candidate rows, distinct users with candidates, neighbour rows) in a DuckDB warehouse."""
    with duckdb.connect(str(path), read_only=True) as con:
        rows, users = con.execute(
            f"SELECT count(*), count(DISTINCT {CandidateRow.c.user_id}) FROM {CandidateRow.TABLE}"
        ).fetchone()
        (neighbors,) = con.execute(f"SELECT count(*) FROM {NeighborRow.TABLE}").fetchone()
    return int(rows), int(users), int(neighbors)


def skipped(name: str, reason: str) -> StageResult:
    """A stage that did not run because an earlier one failed."""
    return StageResult(name=name, status=f"skipped ({reason})")


def measure_size(events: int, seed: int, work: pathlib.Path, timeout_s: float) -> SizeResult:
    """Generate one history, prepare the poster side, run the three stages and count the
    warehouse's candidates."""
    work.mkdir(parents=True, exist_ok=True)
    history_path, vectors, nightly = work / "ratings.csv", work / "vectors", work / "nightly"
    logs = work / "logs"
    start = time.perf_counter()
    history = generate_history(events, seed)
    write_history_csv(history, str(history_path))
    generate_s = time.perf_counter() - start
    stats = history_stats(history)
    film_ids = history.film_ids
    run_date = datetime.datetime.fromtimestamp(stats["last_timestamp"], datetime.UTC).date()
    run_date += datetime.timedelta(days=1)
    del history
    result = SizeResult(events=events, stats=stats, generate_s=generate_s)
    print(f"== {events:,} events: {format_stats(stats)}", flush=True)
    print(f"  history written in {generate_s:.1f} s: {history_path}", flush=True)
    poster = write_poster_table(vectors, film_ids, seed)
    print(f"  poster vectors: {film_ids.size:,} x {POSTER_DIM} as {poster}", flush=True)
    index_args = [f"--vectors={vectors}", f"--model_version={poster}"]
    result.index = run_stage("index", "pipelines.index", index_args, logs, timeout_s)
    if not result.index.ok:
        result.stages = [skipped(n, "index failed") for n in TIMED_STAGES]
        return result
    cowatch = run_stage(
        "cowatch", "pipelines.cowatch",
        [f"--watch_history={history_path}", f"--output={vectors}"], logs, timeout_s,
    )  # fmt: skip
    result.stages.append(cowatch)
    version = cowatch_version(cowatch, vectors) if cowatch.ok else None
    if version is None:
        if cowatch.ok:
            cowatch.status = "failed (no model_version in its summary or manifest)"
        result.stages += [skipped(n, "no co-watch version") for n in TIMED_STAGES[1:]]
        return result
    shared = [
        f"--vectors={vectors}", f"--model_version={poster}", f"--watch_history={history_path}",
        f"--cowatch_version={version}",
    ]  # fmt: skip
    evaluate = run_stage(
        "evaluate", "pipelines.evaluate", [*shared, f"--output={nightly}"], logs, timeout_s
    )
    result.stages.append(evaluate)
    blend = evaluation_report(nightly) if evaluate.ok else None
    if blend is None:
        if evaluate.ok:
            evaluate.status = "failed (no evaluation report with a blend)"
        result.stages.append(skipped("neighbors", "no blend"))
        return result
    warehouse = nightly / "warehouse.duckdb"
    neighbors = run_stage(
        "neighbors", "pipelines.neighbors",
        [f"--run_date={run_date.isoformat()}", *shared, f"--blend={blend}",
         f"--warehouse=duckdb://{warehouse}", f"--output={nightly}"],
        logs, timeout_s,
    )  # fmt: skip
    result.stages.append(neighbors)
    if neighbors.ok:
        try:
            result.candidates, result.candidate_users, result.neighbors = count_warehouse(warehouse)
        except duckdb.Error as exc:
            result.note = f"warehouse query failed: {exc}"
    return result


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def stage_line(stage: StageResult) -> str:
    """One stage's row of the table."""
    share = stage.cpu_s / stage.wall_s if stage.wall_s and not math.isnan(stage.cpu_s) else math.nan
    return (
        f"  {stage.name:<10} {_fmt(stage.wall_s, '9.1f'):>9} {_fmt(stage.cpu_s, '9.1f'):>9} "
        f"{_fmt(share, '5.2f'):>5} {_fmt(stage.rss_gb, '8.2f'):>8} "
        f"{_fmt(stage.tree_rss_gb, '8.2f'):>8}  {stage.status}"
    )


def format_size(result: SizeResult) -> str:
    """The size's stage table, totals, warehouse counts and failures' stderr tails."""
    lines = [
        f"-- {result.events:,} events ({result.stats['users']:,} users, "
        f"{result.stats['catalogue_films']:,} films)",
        f"  {'stage':<10} {'wall s':>9} {'cpu s':>9} {'cpu/w':>5} {'proc GB':>8} "
        f"{'all GB':>8}  status",
    ]
    if result.index is not None:
        lines.append(stage_line(result.index) + "  [poster side: not in the totals]")
    lines += [stage_line(s) for s in result.stages]
    total = StageResult(
        "TOTAL", "complete" if result.complete else "incomplete",
        result.total("wall_s"), result.total("cpu_s"),
        max((s.rss_gb for s in result.stages if not math.isnan(s.rss_gb)), default=math.nan),
        max((s.tree_rss_gb for s in result.stages if not math.isnan(s.tree_rss_gb)),
            default=math.nan),
    )  # fmt: skip
    lines.append(stage_line(total) + " (cowatch + evaluate + neighbors; GB: the highest)")
    if result.candidates is not None:
        lines.append(
            f"  warehouse: {result.candidates:,} candidate rows for "
            f"{result.candidate_users:,} distinct users (of {result.stats['users']:,}); "
            f"{result.neighbors:,} neighbour rows"
        )
    if result.note:
        lines.append(f"  {result.note}")
    for stage in [result.index, *result.stages]:
        if stage is not None and stage.stderr_tail:
            lines.append(f"  {stage.name} stderr (last {STDERR_TAIL_LINES} lines):")
            lines += [f"    | {line}" for line in stage.stderr_tail.splitlines()]
    return "\n".join(lines)


def growth_exponent(events: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(events); nan with fewer than two sizes."""
    pairs = [(e, v) for e, v in zip(events, values, strict=True) if v > 0 and math.isfinite(v)]
    if len(pairs) < 2:
        return math.nan
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def format_summary(results: Sequence[SizeResult]) -> str:
    """Totals per size, the growth exponents and the RESULT line (the largest size's figures)."""
    lines = ["== summary (cowatch + evaluate + neighbors)"]
    lines.append(f"  {'events':>11} {'wall s':>9} {'cpu s':>9} {'peak GB':>8}  status")
    for r in results:
        lines.append(
            f"  {r.events:>11,} {_fmt(r.total('wall_s'), '9.1f'):>9} "
            f"{_fmt(r.total('cpu_s'), '9.1f'):>9} {_fmt(r.peak_gb, '8.2f'):>8}  "
            f"{'complete' if r.complete else 'incomplete'}"
        )
    done = [r for r in results if r.complete]
    time_exp = growth_exponent([r.events for r in done], [r.total("wall_s") for r in done])
    memory_exp = growth_exponent([r.events for r in done], [r.peak_gb for r in done])
    lines.append(
        f"  growth exponents over {len(done)} complete size(s): wall ~ events^"
        f"{_fmt(time_exp, '.2f')}, peak RSS ~ events^{_fmt(memory_exp, '.2f')} "
        f"(1.0 = linear); {os.cpu_count()} CPUs"
    )
    largest = max(results, key=lambda r: r.events)
    if not largest.complete:
        lines.append(f"  the {largest.events:,}-event run is incomplete: its figures are partial")
    lines.append(
        f"RESULT events={largest.events} wall_s={largest.total('wall_s'):.1f} "
        f"peak_rss_gb={largest.peak_gb:.2f} cpu_s={largest.total('cpu_s'):.1f} "
        f"time_exponent={time_exp:.3f} memory_exponent={memory_exp:.3f}"
    )
    return "\n".join(lines)


def run(
    sizes: Sequence[int], seed: int, workdir: pathlib.Path, timeout_s: float
) -> list[SizeResult]:
    """Measure each size in order; after a timeout the larger sizes are not run."""
    results = []
    for events in sizes:
        result = measure_size(events, seed, workdir / f"events-{events}", timeout_s)
        results.append(result)
        print(format_size(result), flush=True)
        if result.timed_out:
            print(f"  a stage timed out at {events:,} events: larger sizes are skipped",
                  flush=True)  # fmt: skip
            break
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the sizes and options, run the benchmark and print the summary last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None,
                        help="One size (default: 1M, 5M and 25M events in turn).")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="Default: a temporary folder.")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument("--stage_timeout_s", type=float, default=DEFAULT_STAGE_TIMEOUT_S)
    args = parser.parse_args(argv)
    sizes = [args.events] if args.events else list(DEFAULT_SIZES)
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="nightly_scale-")).resolve()
    print(f"work folder {workdir}; stages run with {venv_python()}", flush=True)
    try:
        results = run(sizes, args.seed, workdir, args.stage_timeout_s)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    print(f"(the benchmark process itself, generator included, peaked at {own:.2f} GB)")
    print(format_summary(results))


if __name__ == "__main__":
    main()
