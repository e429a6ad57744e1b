"""What a command prints on stderr: the project's own log lines and one progress line.

By default (:func:`setup` with no level) the project's loggers log at INFO and every other
library only its warnings, less a few known harmless ones; TensorFlow's C++ start-up lines
(oneDNN, CUDA stubs, ``failed call to cuInit`` on a CPU machine, absl's
``All log messages before absl::InitializeLog()``) are held back. A level (``--log_level``,
``-v`` for INFO, ``--debug`` for DEBUG) brings everything back at that level.

:func:`progress` shows the work of a running stage from :mod:`monitoring.progress`: items done
(of the total when known), the rate and the time left. On a terminal it is one line that
updates in place every second; otherwise it is a log line every 10 seconds.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from collections.abc import Iterator

from monitoring import progress as counts

PROJECT_PACKAGES = (
    "pipelines", "transforms", "reporting", "models", "fetching", "imaging", "storage", "schemas",
    "monitoring", "synthetic", "benchmarks",
)  # fmt: skip
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_LOGGER = "pipelines.progress"
TTY_INTERVAL_S = 1.0
LOG_INTERVAL_S = 10.0
# Warnings of other libraries that say nothing a user of this project can act on.
HARMLESS_WARNINGS = (
    "Resource module is not available for current platform",  # Beam RunInference, every load
    "You are passing instance dicts and DatasetMetadata to TFT",  # tf.Transform input format
    "Tables initialized inside a tf.function",  # tf.Transform's vocabulary lookup
    "triggered tf.function retracing",  # Keras predict on the last, smaller batch
)
_NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]"  # absl C++ INFO and WARNING lines
    r"|To enable the following instructions:)"
)
_LIBRARIES = ("apache_beam", "absl", "tensorflow", "tensorflow_transform", "urllib3", "h5py")
_TF_LEVELS = {"DEBUG": "0", "INFO": "0", "WARNING": "1", "ERROR": "2"}
_STDERRS = (sys.stderr, sys.__stderr__)
_CLEAR_TO_END = "\x1b[K"
_WRITE_LOCK = threading.RLock()
_ACTIVE: list[_Reporter] = []


def _is_project(logger_name: str) -> bool:
    return logger_name == "__main__" or logger_name.split(".", 1)[0] in PROJECT_PACKAGES


class _DefaultFilter(logging.Filter):
    """The project's records; other libraries' warnings and errors, less the harmless ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_project(record.name):
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(text in message for text in HARMLESS_WARNINGS)


class _ConsoleHandler(logging.StreamHandler):
    """A stderr handler that clears the progress line before it writes a record."""

    def emit(self, record: logging.LogRecord) -> None:
        with _WRITE_LOCK:
            for reporter in _ACTIVE:
                reporter.clear()
            super().emit(record)


def setup(level: int | None = None, quiet_stages: bool = False) -> None:
    """Configure logging and the libraries' own output for a command-line run.

    ``level`` None is the default console described in the module docstring; a level applies
    to every logger, the project's and the libraries'. ``quiet_stages`` (the nightly job)
    lowers the stages' own INFO lines to warnings, so its console holds stage lines, progress
    and results.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        # An earlier setup's handler, or the plain stderr one that logging.basicConfig() adds
        # (Beam's PipelineOptions calls it); other handlers (a test's capture) stay.
        plain = type(handler) is logging.StreamHandler and handler.stream in _STDERRS
        if plain or isinstance(handler, _ConsoleHandler):
            root.removeHandler(handler)
    for name in (*_LIBRARIES, *PROJECT_PACKAGES, "__main__", "pipelines.nightly", PROGRESS_LOGGER):
        logging.getLogger(name).setLevel(logging.NOTSET)  # what an earlier setup set
    handler = _ConsoleHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    if level is not None:
        root.setLevel(level)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _TF_LEVELS[logging.getLevelName(level)])
        return
    root.setLevel(logging.INFO)
    handler.addFilter(_DefaultFilter())
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    if quiet_stages:
        for name in PROJECT_PACKAGES:
            logging.getLogger(name).setLevel(logging.WARNING)
        for name in ("__main__", "pipelines.nightly", PROGRESS_LOGGER):
            logging.getLogger(name).setLevel(logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


@contextlib.contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    """Hold back what native code writes to file descriptor 2 meanwhile; write back every line
    that is not known start-up noise."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            # A progress line drawn meanwhile ("\r" + line + "\x1b[K") is stale: drop it.
            lines = (line.rsplit(_CLEAR_TO_END, 1)[-1] for line in text.splitlines(True))
            kept = [line for line in lines if line.strip() and not _NATIVE_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs a module's loader with native stderr noise held back (see _QuietTensorFlowImport)."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self._loader
        with _native_stderr_filtered():
            self._loader.exec_module(module)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, the first time any module does, with the lines its C++ runtime
    writes before absl logging is initialised (and TF_CPP_MIN_LOG_LEVEL applies) held back."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(label: str, task: counts.Task | None, elapsed: float, now: float) -> str:
    """``label: 1,200/5,000 posters embedded (24%), 40.0/s, ~1m35s left, 40s elapsed``: the
    rate is over the time since the task was first counted."""
    parts = []
    if task is not None and (task.done or task.total):
        done = f"{task.done:,}/{task.total:,}" if task.total else f"{task.done:,}"
        share = f" ({min(task.done / task.total, 1):.0%})" if task.total else ""
        parts.append(f"{done} {task.name}{share}")
        spent = now - task.started_at
        if task.done and spent > 0:
            rate = task.done / spent
            parts.append(f"{rate:.1f}/s" if rate < 100 else f"{rate:,.0f}/s")
            if task.total and task.total > task.done:
                parts.append(f"~{_duration((task.total - task.done) / rate)} left")
    parts.append(f"{_duration(elapsed)} elapsed")
    return f"{label}: " + ", ".join(parts)


class _Reporter:
    """The thread that shows one stage's progress (see :func:`progress`)."""

    def __init__(self, label: str, stream, tty: bool, interval: float,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self.label = label
        self._stream = stream
        self._tty = tty
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._shown = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def line(self) -> str:
        now = self._clock()
        return progress_line(self.label, counts.current(), now - self._started, now)

    def show(self) -> None:
        """Draw the line (terminal) or log it (otherwise)."""
        line = self.line()
        if not self._tty:
            logging.getLogger(PROGRESS_LOGGER).info("%s", line)
            return
        width = max(shutil.get_terminal_size((100, 24)).columns - 1, 20)
        with _WRITE_LOCK:
            self._stream.write("\r" + line[:width] + _CLEAR_TO_END)
            self._stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Remove the line from the terminal (before another line is written)."""
        with _WRITE_LOCK:
            if self._shown:
                self._stream.write("\r" + _CLEAR_TO_END)
                self._stream.flush()
                self._shown = False

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.show()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.clear()


@contextlib.contextmanager
def progress(label: str, stream=None, interval: float | None = None,
             clock: Callable[[], float] = time.monotonic) -> Iterator[_Reporter]:  # fmt: skip
    """Show the progress of the work inside the block under ``label`` until it ends.

    The counts of :mod:`monitoring.progress` start from zero. On a terminal the line updates in
    place every second; otherwise it is logged every 10 seconds (a block that ends sooner logs
    nothing).
    """
    stream = sys.stderr if stream is None else stream
    tty = bool(getattr(stream, "isatty", lambda: False)())
    interval = interval or (TTY_INTERVAL_S if tty else LOG_INTERVAL_S)
    counts.reset()
    reporter = _Reporter(label, stream, tty, interval, clock)
    _ACTIVE.append(reporter)
    reporter.start()
    try:
        yield reporter
    finally:
        reporter.stop()
        _ACTIVE.remove(reporter)


def say(text: str, stream=None) -> None:
    """Print one line of the command's own output, clear of any progress line."""
    with _WRITE_LOCK:
        for reporter in _ACTIVE:
            reporter.clear()
        print(text, file=sys.stdout if stream is None else stream, flush=True)
