"""What every pipeline entry point shares: option parsing with --help, the local runner, and
errors that end a command with one line on stderr."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.options.pipeline_options import _BeamArgumentParser
from apache_beam.runners.direct.direct_runner import DirectRunner

from pipelines import console
from transforms.manifest import is_secret_option
from transforms.manifest import redact_options

_LOCAL_RUNNERS = (None, "DirectRunner", "direct", "directrunner")
_LOG = logging.getLogger(__name__)
DEBUG_FLAG = "--debug"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
        console = parser.add_argument_group("console")
        console.add_argument(
            "--log_level",
            choices=LOG_LEVELS,
            default=None,
            help="Log every library at this level, TensorFlow's and Beam's start-up lines "
            "included. Default: this project's INFO lines, other libraries' warnings only.",
        )
        console.add_argument(
            "-v", "--verbose", action="store_true", help="The same as --log_level=INFO."
        )
        console.add_argument(
            DEBUG_FLAG,
            action="store_true",
            help="--log_level=DEBUG, and an error's traceback before its one-line message.",
        )


BEAM_EPILOG = (
    "Any other Beam pipeline option (--project, --region, --temp_location, --setup_file, "
    "--direct_running_mode, --direct_num_workers, ...) is passed to the runner."
)


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines that end with [required] and (default: ...) where they apply."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        note = getattr(action, "required_note", None)
        if note:
            text += f" [{note}]"
        if shows_default(action):
            text += " (default: %(default)s)"
        return text


def shows_default(action: argparse.Action) -> bool:
    """Whether a flag's help shows its default (not for switches and unset values)."""
    if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
        return False
    if not action.option_strings:
        return False
    return action.nargs != 0 and not isinstance(action.default, list)


class _OnlyFlags:
    """What an options class's ``_add_argparse_args`` sees when a command reads only some of
    its flags: a parser that keeps those (all when ``names`` is None) in groups of their own."""

    def __init__(self, parser, names, title: str, description: str | None = None,
                 shared_from: str | None = None) -> None:  # fmt: skip
        self._parser = parser
        self._names = names
        self._title = title
        self._description = description
        self._shared_from = shared_from
        self._group = None

    def add_argument_group(self, title=None, description=None, **_) -> _OnlyFlags:
        title = title or self._title
        if self._shared_from:
            title = f"{title} (shared)"
            description = f"Flags of {self._shared_from} that this command reads too."
        return _OnlyFlags(self._parser, self._names, title, description)

    def add_argument(self, *flags, **kwargs):
        longs = [f for f in flags if f.startswith("--")] or list(flags)
        dest = kwargs.get("dest") or longs[0].lstrip("-").replace("-", "_")
        if self._names is not None and dest not in self._names:
            return None
        if self._group is None:
            self._group = self._parser.add_argument_group(self._title, self._description)
        return self._group.add_argument(*flags, **kwargs)

    add_value_provider_argument = add_argument


@dataclasses.dataclass(frozen=True)
class Command:
    """An entry point's command line: what ``--help`` lists, and how argv is parsed.

    ``reads`` names the other stages' flags this command reads too, as (options class, flag
    names) pairs, None for all of a class's flags; ``required`` the flags it cannot run without
    (``"--catalog|--synthetic_films"``: one of them); ``hides`` the shared flags it ignores;
    ``beam`` whether it runs a Beam pipeline (and reads --runner and --dry_run);
    ``overrides`` replaces the help or default of flags whose meaning here differs.
    """

    name: str
    options_class: type[PipelineOptions]
    doc: str
    reads: tuple[tuple[type[PipelineOptions], tuple[str, ...] | None], ...] = ()
    required: tuple[str, ...] = ()
    hides: tuple[str, ...] = ()
    beam: bool = True
    overrides: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)

    @property
    def description(self) -> str:
        """The first line of the entry point's docstring."""
        return self.doc.strip().splitlines()[0]

    def parser(self) -> argparse.ArgumentParser:
        """The argparse parser behind ``--help``: every flag the command reads, grouped."""
        parser = argparse.ArgumentParser(
            prog=f"python -m {self.name}",
            description=self.description,
            epilog=BEAM_EPILOG if self.beam else None,
            formatter_class=_HelpFormatter,
            allow_abbrev=False,  # one stage's flag must never read as the prefix of another's
        )
        self.options_class._add_argparse_args(parser)
        for options_class, names in self.reads:
            shared_from = options_class.__module__ if names is not None else None
            options_class._add_argparse_args(
                _OnlyFlags(parser, names, options_class.__name__, shared_from=shared_from)
            )
        shared = tuple(
            a.dest for a in _actions_of(CommonOptions) if a.option_strings[-1] not in self.hides
        )
        CommonOptions._add_argparse_args(_OnlyFlags(parser, shared, "shared"))
        if self.beam:
            group = parser.add_argument_group("Beam runner")
            group.add_argument(
                "--runner",
                default="DirectRunner",
                help="DirectRunner runs the pipeline on this machine (every core); "
                "DataflowRunner on Google Cloud Dataflow.",
            )
            group.add_argument(
                "--dry_run",
                default=False,
                metavar="BOOL",
                help="True: build the pipeline (for Dataflow: translate it) without running it.",
            )
        by_flag = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}
        for action in by_flag.values():
            if action.metavar is None and action.type in (int, float):
                action.metavar = "N"
        for flag, changes in self.overrides.items():
            for key, value in changes.items():
                setattr(by_flag[flag], key, value)
        for entry in self.required:
            alternatives = entry.split("|")
            for flag in alternatives:
                others = [f for f in alternatives if f != flag]
                by_flag[flag].required_note = "required" + "".join(f", or {f}" for f in others)
        needed = [self._usage_of(entry, by_flag) for entry in self.required]
        parser.usage = " ".join([parser.prog, *needed, "[OPTION ...]"])
        return parser

    @staticmethod
    def _usage_of(entry: str, by_flag: dict[str, argparse.Action]) -> str:
        forms = [f"{f}={by_flag[f].metavar or by_flag[f].dest.upper()}" for f in entry.split("|")]
        return forms[0] if len(forms) == 1 else "(" + " | ".join(forms) + ")"

    def flags(self) -> set[str]:
        """Every flag ``--help`` lists (``--help`` itself left out)."""
        return {
            flag
            for action in self.parser()._actions
            for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"
        }

    def check_flags(self, argv: Sequence[str] | None) -> None:
        """UsageError (exit 2) naming every flag in argv that neither this command nor, when it
        runs a pipeline, Beam's own options declare, with the closest known flag (as Beam's
        "did you mean" does); ``--help`` prints the help and exits first."""
        argv = list(sys.argv[1:] if argv is None else argv)
        _, rest = self.parser().parse_known_args(argv)
        known = self.flags() | (beam_flags() if self.beam else set())
        unknown = [n for n in (a.split("=", 1)[0] for a in rest if a.startswith("--"))
                   if n not in known]  # fmt: skip
        if not unknown:
            return
        named = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            if name in self.hides:
                named.append(f"{name} (a shared flag this command does not read)")
            else:
                named.append(name + (f" (did you mean {close[0]}?)" if close else ""))
        raise UsageError(
            f"unknown flag{'s' if len(named) > 1 else ''} {', '.join(named)}; nothing was run — "
            f"python -m {self.name} --help lists the flags it reads"
        )

    def parse(self, argv: Sequence[str] | None) -> PipelineOptions:
        """Parse argv into PipelineOptions; ``--help`` prints the help and exits, a bad value
        exits with argparse's message (status 2)."""
        argv = list(sys.argv[1:] if argv is None else argv)
        self.parser().parse_known_args(argv)
        options = PipelineOptions(without_foreign_secrets(argv, self.options_class))
        if self.beam:
            check_dataflow_flags(options)
        return options


def check_dataflow_flags(options: PipelineOptions) -> None:
    """UsageError before any work when --runner=DataflowRunner lacks the flags Dataflow cannot
    run without (Beam would otherwise fail later, with a traceback)."""
    if "DataflowRunner" not in str(options.view_as(StandardOptions).runner or ""):
        return
    cloud = options.view_as(GoogleCloudOptions)
    missing = [flag for flag, value in (
        ("--project", cloud.project), ("--region", cloud.region),
        ("--temp_location", cloud.temp_location or cloud.staging_location),
    ) if not value]  # fmt: skip
    if missing:
        raise UsageError(
            f"--runner=DataflowRunner needs {', '.join(missing)} (for example --project=my-project "
            "--region=europe-west1 --temp_location=gs://my-bucket/tmp); nothing was run"
        )


@functools.cache
def beam_flags() -> frozenset[str]:
    """Every flag Beam's own options classes declare (runner, Dataflow, worker, ...)."""

    def subclasses(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    parser = _BeamArgumentParser(add_help=False, allow_abbrev=False, conflict_handler="resolve")
    for cls in sorted(set(subclasses(PipelineOptions)), key=lambda c: c.__qualname__):
        if cls.__module__.startswith("apache_beam."):
            cls._add_argparse_args(parser)
    return frozenset(flag for action in parser._actions for flag in action.option_strings)


def flag_names(options_class: type[PipelineOptions]) -> tuple[str, ...]:
    """The option names (argparse dests) an options class declares."""
    return tuple(action.dest for action in _actions_of(options_class))


def _actions_of(options_class: type[PipelineOptions]) -> list[argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    options_class._add_argparse_args(parser)
    return [a for a in parser._actions if a.option_strings]


def parse_options(
    argv: Sequence[str] | None,
    options_class: type[PipelineOptions],
    description: str,
) -> PipelineOptions:
    """Parse argv into PipelineOptions of one options class (and the shared ones)."""
    return Command(options_class.__module__, options_class, description).parse(argv)


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


def requested_log_level(argv: Sequence[str] | None = None) -> int | None:
    """The level --debug, --log_level or -v / --verbose asks for (in that order), or None for
    the default console."""
    args = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG in args:
        return logging.DEBUG
    level = None
    for i, arg in enumerate(args):
        name = ""
        if arg.startswith("--log_level="):
            name = arg.split("=", 1)[1].upper()
        elif arg == "--log_level" and i + 1 < len(args):
            name = args[i + 1].upper()
        if name in LOG_LEVELS:
            level = getattr(logging, name)
    if level is None and any(arg in ("-v", "--verbose") for arg in args):
        level = logging.INFO
    return level


def configure_logging(argv: Sequence[str] | None = None, quiet_stages: bool = False) -> None:
    """The console of a command-line run (see :mod:`pipelines.console`): the project's INFO
    lines and other libraries' warnings, or every logger at the level the command line asks
    for; ``quiet_stages`` keeps the stages' INFO lines off the nightly job's console."""
    console.setup(requested_log_level(argv), quiet_stages=quiet_stages)


def log_counters(result, namespace: str) -> dict[str, int]:
    """Log (on one line) and return the Beam Metrics counters of a finished run in one
    namespace."""
    counters = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + (counter.committed or counter.attempted or 0)
    if totals:
        _LOG.info("counters %s: %s", namespace,
                  ", ".join(f"{name} {totals[name]:,}" for name in sorted(totals)))  # fmt: skip
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


def accounting_text(summary: Mapping) -> str:
    """Where a run wrote its outputs, and its accounting identity (a manifest's summary)."""
    return (
        f"outputs under {summary.get('output_path', '?')} (run {summary.get('run_id', '?')})\n"
        f"{summary['identity']}"
    )


def json_text(summary: Mapping) -> str:
    """A summary as indented JSON, keys sorted."""
    return json.dumps(summary, indent=2, sort_keys=True)


def main(
    run: Callable[[Sequence[str] | None], Mapping],
    argv: Sequence[str] | None = None,
    *,
    show: Callable[[Mapping], str] = accounting_text,
    label: str | None = None,
    quiet: bool = False,
) -> None:
    """The command-line entry of every stage: the console, ``run(argv)`` under a progress line
    (``label``, the stage's name by default), then what ``show`` makes of its summary on stdout.

    The exit status is 1 when the summary's accounting identity does not hold
    (``accounting_ok`` false), 2 or 1 with one line on stderr for a usage or input error (see
    ``cli``), else 0. ``quiet``: the stages' INFO lines stay off the console and no progress
    line is drawn (the nightly job prints a line per stage, the query tool only its answers).
    """

    command = getattr(run, "__globals__", {}).get("COMMAND")

    def entry() -> None:
        configure_logging(argv, quiet_stages=quiet)
        if isinstance(command, Command):
            command.check_flags(argv)
        if quiet:
            summary = run(argv)
        else:
            with console.progress(label or stage_label(run)):
                summary = run(argv)
        print(show(summary))
        raise SystemExit(1 if summary.get("accounting_ok") is False else 0)

    cli(entry, argv)


def stage_label(function: Callable) -> str:
    """The stage a module-level function belongs to (``embed`` for pipelines.embed.run), also
    when its module runs as ``python -m``."""
    spec = getattr(function, "__globals__", {}).get("__spec__")
    return (spec.name if spec is not None else function.__module__).rsplit(".", 1)[-1]
