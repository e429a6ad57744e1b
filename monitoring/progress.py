"""Live progress counts of the work running in this process, for the console.

A DoFn calls :func:`advance` for each item it finishes (and :func:`add_total` for each item it
knows is coming); the console (``pipelines.console``) reads :func:`current` about once a second
and prints items done, the total when known, the rate and the time left. Beam Metrics of a run
can be queried only once the run has ended, so these counts are their live twin. They count what
runs in this process: the local runner's default in-memory mode, where the scrape stage's fetch
workers hand their results back to the DoFn. Where DoFns run in other processes (Dataflow, the
direct runner's multi-process mode) nothing is counted here and the console shows the elapsed
time only.
"""

from __future__ import annotations

import dataclasses
import threading
import time

_LOCK = threading.Lock()
_TASKS: dict[str, Task] = {}


@dataclasses.dataclass
class Task:
    """One kind of item counted: what it is (plural, e.g. 'posters embedded'), how many are
    done, how many are expected (None when unknown), when it was first counted (the start of its
    rate) and when last."""

    name: str
    done: int = 0
    total: int | None = None
    started_at: float = 0.0
    updated_at: float = 0.0


def _task(name: str, now: float) -> Task:
    task = _TASKS.get(name)
    if task is None:
        task = _TASKS[name] = Task(name, started_at=now)
    task.updated_at = now
    return task


def advance(name: str, n: int = 1, now: float | None = None) -> None:
    """Count ``n`` more items of ``name`` done."""
    now = time.monotonic() if now is None else now
    with _LOCK:
        _task(name, now).done += n


def add_total(name: str, n: int = 1, now: float | None = None) -> None:
    """Count ``n`` more items of ``name`` expected."""
    now = time.monotonic() if now is None else now
    with _LOCK:
        task = _task(name, now)
        task.total = (task.total or 0) + n


def set_total(name: str, total: int | None, now: float | None = None) -> None:
    """Set how many items of ``name`` are expected (None: unknown)."""
    now = time.monotonic() if now is None else now
    with _LOCK:
        _task(name, now).total = total


def reset() -> None:
    """Forget every count (a new stage starts)."""
    with _LOCK:
        _TASKS.clear()


def current() -> Task | None:
    """A copy of the task counted most recently, or None when nothing was counted."""
    with _LOCK:
        if not _TASKS:
            return None
        return dataclasses.replace(max(_TASKS.values(), key=lambda t: t.updated_at))
