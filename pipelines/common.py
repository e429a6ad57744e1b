"""What every pipeline entry point shares: option parsing with --help, and the local runner."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.direct.direct_runner import DirectRunner

_LOCAL_RUNNERS = (None, "DirectRunner", "direct", "directrunner")


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
    return PipelineOptions(argv)


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


def configure_logging() -> None:
    """INFO logging for command-line runs, quiet for chatty libraries."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
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


def main(run) -> None:
    """Command-line entry: INFO logging, run the stage, print its accounting, exit non-zero
    when the accounting identity does not hold."""
    configure_logging()
    summary = run()
    print(f"outputs under {summary.get('output_path', '?')} (run {summary.get('run_id', '?')})")
    print(summary["identity"])
    raise SystemExit(0 if summary["accounting_ok"] else 1)
