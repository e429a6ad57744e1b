"""What every pipeline entry point shares: option parsing with --help, the local runner, and
errors that end a command with one line on stderr."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.direct.direct_runner import DirectRunner

from transforms.manifest import is_secret_option
from transforms.manifest import redact_options

_LOCAL_RUNNERS = (None, "DirectRunner", "direct", "directrunner")
_LOG = logging.getLogger(__name__)
DEBUG_FLAG = "--debug"


class UsageError(ValueError):
    """The command line is wrong: a flag missing, malformed, or naming nothing (exit status 2).

    The message is one line that names the flag and says what to do.
    """

    exit_status = 2


class InputError(ValueError):
    """What a flag names cannot be used: empty, unreadable, corrupt or not writable (exit 1).

    The message is one line that names the flag or the file and says what to do.
    """

    exit_status = 1


class LocalRunner(DirectRunner):
    """The DirectRunner without its attempt to start Prism, which downloads a binary.

    Beam 2.77's DirectRunner skips Prism for interactive pipelines and otherwise behaves the
    same (in-process FnApiRunner, or its multi-process mode with --direct_running_mode).
    """

    _is_interactive = True


class CommonOptions(PipelineOptions):
    """Options every stage shares (declared once: Beam parses all option classes together)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        group = parser.add_argument_group("output")
        group.add_argument("--output", help="Output root of the stage (local or gs://).")
        group.add_argument(
            "--num_shards", type=int, default=4, help="Shards of the stage's main output table."
        )
        group.add_argument(
            DEBUG_FLAG,
            action="store_true",
            help="DEBUG logging, and an error's traceback before its one-line message.",
        )


def parse_options(
    argv: Sequence[str] | None,
    options_class: type[PipelineOptions],
    description: str,
) -> PipelineOptions:
    """Parse argv into PipelineOptions; ``--help`` lists the stage's own options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=description,
        allow_abbrev=False,  # one stage's flag must never read as the prefix of another's
        epilog="Beam runner options (--runner, --project, --region, --temp_location, "
        "--direct_running_mode, --direct_num_workers, --setup_file, ...) are accepted too.",
    )
    CommonOptions._add_argparse_args(parser)
    options_class._add_argparse_args(parser)
    parser.parse_known_args(argv)  # exits with the help text on --help, or on a bad value
    return PipelineOptions(without_foreign_secrets(argv, options_class))


def _declared_options(options_class: type[PipelineOptions]) -> set[str]:
    """Option names this stage's options, the common ones and Beam's own declare."""
    beam_own = [c for c in PipelineOptions.__subclasses__() if c.__module__.startswith("apache_")]
    classes = [CommonOptions, options_class, *beam_own]
    return {name for c in classes for name in c(flags=[]).get_all_options(current_only=True)}


def without_foreign_secrets(argv: Sequence[str], options_class: type[PipelineOptions]) -> list[str]:
    """argv less the secret flags (``--tmdb_api_key``, any ``*token*``, ...) that this stage does
    not declare: another stage's secret never reaches this one's options, manifest or Beam's
    "Discarding unparseable args" warning."""
    kept: list[str] = []
    declared: set[str] | None = None
    dropping_value = False
    for arg in argv:
        if dropping_value and not arg.startswith("-"):
            dropping_value = False
            continue
        dropping_value = False
        name = arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else ""
        if name and is_secret_option(name):
            declared = _declared_options(options_class) if declared is None else declared
            if name not in declared:
                _LOG.debug("--%s is not an option of this stage: not passed on", name)
                dropping_value = "=" not in arg
                continue
        kept.append(arg)
    return kept


def recorded_options(options: PipelineOptions) -> dict:
    """The options a run records in its manifest: those not at their default, secrets redacted."""
    return redact_options(options.get_all_options(drop_default=True, retain_unknown_options=False))


def make_pipeline(
    options: PipelineOptions, test_pipeline: beam.Pipeline | None = None
) -> beam.Pipeline:
    """The pipeline to build on: the given test pipeline, or one on the right runner."""
    if test_pipeline is not None:
        return test_pipeline
    runner = options.view_as(StandardOptions).runner
    if runner in _LOCAL_RUNNERS or str(runner).lower() in _LOCAL_RUNNERS:
        return beam.Pipeline(runner=LocalRunner(), options=options)
    options.view_as(SetupOptions).save_main_session = False
    return beam.Pipeline(options=options)


def is_local(options: PipelineOptions) -> bool:
    """Whether the pipeline runs on this machine (DirectRunner)."""
    runner = options.view_as(StandardOptions).runner
    return runner in _LOCAL_RUNNERS or str(runner).lower() in _LOCAL_RUNNERS


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether the command line asks for --debug (tracebacks and DEBUG logging)."""
    return DEBUG_FLAG in (sys.argv[1:] if argv is None else argv)


def configure_logging() -> None:
    """INFO logging for command-line runs (DEBUG with --debug), quiet for chatty libraries."""
    logging.basicConfig(
        level=logging.DEBUG if debug_requested() else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("urllib3", "absl", "tensorflow", "apache_beam.runners.portability"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_counters(result, namespace: str) -> dict[str, int]:
    """Log and return the Beam Metrics counters of a finished run in one namespace."""
    from apache_beam.metrics.metric import MetricsFilter

    counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or counter.attempted or 0)
    for name in sorted(totals):
        logging.getLogger(__name__).info("counter %s/%s = %d", namespace, name, totals[name])
    return totals


def one_line(text: object) -> str:
    """The text with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(text).split())


def cli(entry: Callable[[], object], argv: Sequence[str] | None = None) -> None:
    """Run a command-line entry; a UsageError or InputError ends it with one line on stderr,
    ``error: ...``, and exit status 2 or 1. With --debug (or DEBUG logging) the traceback is
    printed before that line."""
    try:
        entry()
    except (UsageError, InputError) as exc:
        if debug_requested(argv) or logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_status) from None


def main(run) -> None:
    """Command-line entry: INFO logging, run the stage, print its accounting, exit non-zero
    when the accounting identity does not hold; bad input ends with one line (see ``cli``)."""

    def entry() -> None:
        configure_logging()
        summary = run()
        print(f"outputs under {summary.get('output_path', '?')} (run {summary.get('run_id', '?')})")
        print(summary["identity"])
        raise SystemExit(0 if summary["accounting_ok"] else 1)

    cli(entry)
