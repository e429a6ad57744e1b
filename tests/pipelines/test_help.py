"""Every entry point's --help lists every flag it reads, grouped, with defaults and required flags
marked; --help imports no TensorFlow."""

from __future__ import annotations

import ast
import importlib
import json
import pathlib
import subprocess
import sys

import pytest

from pipelines.common import CommonOptions
from pipelines.common import UsageError
from pipelines.common import flag_names
from pipelines.reference import commands

PIPELINES = pathlib.Path(__file__).resolve().parents[2] / "pipelines"
ENTRY_POINTS = [command.name for command in commands()]
# Flags a command reads through a helper but never uses: similar passes pool_size=1 to the
# scrape stage's fetch_policy, so --fetch_concurrency is read there but has no effect.
READ_BUT_UNUSED = {"pipelines.similar": {"--fetch_concurrency"}}
# Flags read from the command line itself, not from the options (pipelines.common).
READ_FROM_ARGV = {"--log_level", "--verbose", "--debug"}


def _all_flag_dests() -> set[str]:
    """Every option name the project's and Beam's options classes declare."""
    from apache_beam.options.pipeline_options import PipelineOptions

    for name in ENTRY_POINTS:
        importlib.import_module(name)
    found: set[str] = set(flag_names(CommonOptions))
    stack = list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        try:
            found.update(flag_names(cls))
        except Exception:  # noqa: BLE001 - a Beam class that only its own parser understands
            continue
    return found


class _Module:
    """One pipelines module's functions, what each reads from the options and what it calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        tree = ast.parse((PIPELINES / f"{name.split('.')[-1]}.py").read_text())
        self.functions = {
            node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
        }
        self.imports: dict[str, tuple[str, str | None]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines"):
                for alias in node.names:
                    if node.module == "pipelines":  # from pipelines import scrape
                        self.imports[alias.asname or alias.name] = (f"pipelines.{alias.name}", None)
                    else:
                        self.imports[alias.asname or alias.name] = (node.module, alias.name)


def _options_names(function: ast.FunctionDef) -> set[str]:
    """Names that hold options in a function: parameters annotated with an options class, and
    names bound to ``x.view_as(...)``, ``parse_options(...)`` or ``COMMAND.parse(...)``."""
    names = set()
    for arg in function.args.args + function.args.kwonlyargs:
        if arg.annotation is not None and ast.unparse(arg.annotation).endswith("Options"):
            names.add(arg.arg)
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and _is_options_call(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _is_options_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in ("view_as", "parse"):
        return True
    return isinstance(func, ast.Name) and func.id == "parse_options"


def flags_read(entry: str, dests: set[str]) -> set[str]:
    """Every flag an entry point's ``run`` and ``main`` read from their options, following
    calls into other pipelines functions (not into other stages' ``run``: the nightly job
    hands those their own flags)."""
    modules: dict[str, _Module] = {}
    seen: set[tuple[str, str]] = set()
    found: set[str] = set()
    todo = [(entry, "run"), (entry, "main")]
    while todo:
        module_name, function_name = todo.pop()
        if (module_name, function_name) in seen or not (PIPELINES.parent / (
            module_name.replace(".", "/") + ".py")).exists():  # fmt: skip
            continue
        seen.add((module_name, function_name))
        module = modules.setdefault(module_name, _Module(module_name))
        function = module.functions.get(function_name)
        if function is None:
            continue
        holders = _options_names(function)
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                held = isinstance(node.value, ast.Name) and node.value.id in holders
                if (held or _is_options_call(node.value)) and node.attr in dests:
                    found.add(node.attr)
            if isinstance(node, ast.Call):
                todo.extend(_callee(module, node.func))
    return {f"--{dest}" for dest in found}


def _callee(module: _Module, func: ast.AST) -> list[tuple[str, str]]:
    if isinstance(func, ast.Name):
        if func.id in module.functions:
            return [(module.name, func.id)]
        if func.id in module.imports and module.imports[func.id][1]:
            return [module.imports[func.id]]
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        target = module.imports.get(func.value.id)
        if target and target[1] is None and func.attr not in ("run", "main"):
            return [(target[0], func.attr)]
    return []


@pytest.fixture(scope="module")
def dests() -> set[str]:
    return _all_flag_dests()


@pytest.mark.parametrize("command", commands(), ids=ENTRY_POINTS)
def test_help_lists_every_flag_the_entry_point_reads(command, dests):
    read = flags_read(command.name, dests) - READ_FROM_ARGV
    listed = command.flags()
    assert read - READ_BUT_UNUSED.get(command.name, set()) <= listed, read - listed
    if command.name != "pipelines.nightly":  # the nightly job hands the stages their flags
        assert listed - READ_FROM_ARGV <= read, f"listed but never read: {listed - read}"
    assert bool(read & {"--runner", "--dry_run"}) == command.beam  # lists them iff it reads them


def test_the_flag_finder_finds_reads_through_helpers(dests):
    # similar reads the scrape stage's fetch flags through scrape.fetch_policy and _normalise.
    read = flags_read("pipelines.similar", dests)
    assert {"--allowed_hosts", "--max_pixels", "--vectors", "--index", "--query"} <= read
    assert "--catalog" not in read
    # evaluate reads the hold-out through pipelines.cowatch.holdout_of.
    assert {"--holdout_fraction", "--holdout_seed"} <= flags_read("pipelines.evaluate", dests)


@pytest.mark.parametrize("command", commands(), ids=ENTRY_POINTS)
def test_help_shows_usage_groups_defaults_and_required_flags(command):
    text = command.parser().format_help()
    assert text.startswith(f"usage: python -m {command.name} ")
    for entry in command.required:
        for flag in entry.split("|"):
            assert f"{flag}=" in text.splitlines()[0]
            line = next(i for i, line in enumerate(text.splitlines()) if line.strip().startswith(
                f"{flag} "))  # fmt: skip
            assert "[required" in " ".join(text.splitlines()[line:line + 4])
    assert "console:" in text
    assert "(default: " in text


def test_help_marks_shared_flags_and_shows_their_meaning_here():
    from pipelines import neighbors
    from pipelines import train

    text = neighbors.COMMAND.parser().format_help()
    assert "index stage (shared):" in text and "--vectors VECTORS" in text
    assert "--num_shards" not in text  # the stage writes one shard: not listed
    train_help = train.COMMAND.parser().format_help()
    assert "(default: squeezenet_v1_1)" in train_help  # not the embed stage's inception_v3


@pytest.mark.parametrize(
    "name", ["embed", "train", "cowatch", "index", "neighbors", "evaluate"]
)
def test_required_flags_are_those_the_stage_asks_for(name):
    module = importlib.import_module(f"pipelines.{name}")
    with pytest.raises(UsageError) as failure:
        module.run([])
    for flag in module.COMMAND.required:
        assert flag in str(failure.value)


def test_help_of_every_entry_point_imports_no_tensorflow():
    """--help answers in about a second: TensorFlow (seconds to import) is imported by the
    stages only once their flags are checked."""
    script = (
        "import json, runpy, sys\n"
        f"names = {ENTRY_POINTS!r}\n"
        "out = {}\n"
        "for name in names:\n"
        "    sys.argv = [name, '--help']\n"
        "    try:\n"
        "        runpy.run_module(name, run_name='__main__', alter_sys=True)\n"
        "    except SystemExit as exc:\n"
        "        out[name] = exc.code\n"
        "out['tensorflow'] = 'tensorflow' in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        cwd=PIPELINES.parent,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("tensorflow") is False
    assert result == {name: 0 for name in ENTRY_POINTS}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_a_misspelt_flag_is_a_usage_error_and_beams_own_flags_pass(name):
    module = importlib.import_module(name)
    command = module.COMMAND
    flag = sorted(command.flags() - {"--help"})[0]
    misspelt = flag[:-1] + flag[-1] * 2  # one letter doubled: --catalog -> --catalogg
    with pytest.raises(UsageError, match=rf"unknown flag {misspelt} \(did you mean {flag}\?\)"):
        command.check_flags([f"{misspelt}=x"])
    with pytest.raises(UsageError, match="unknown flags --no_such_flag, --other"):
        command.check_flags(["--no_such_flag", "--other=1"])
    for hidden in command.hides:
        with pytest.raises(UsageError, match=f"{hidden} \\(a shared flag this command does not"):
            command.check_flags([f"{hidden}=2"])
    beam_own = [
        "--direct_num_workers=2", "--project=poster-recs-test", "--region=europe-west1",
        "--experiments=use_runner_v2", "--temp_location=gs://poster-recs-test/tmp",
    ]  # fmt: skip
    if command.beam:
        command.check_flags(beam_own)
    else:
        with pytest.raises(UsageError, match="--direct_num_workers"):
            command.check_flags(beam_own)


def test_the_stored_help_is_what_argparse_renders():
    from pipelines.reference import HELP_FOLDER
    from pipelines.reference import help_texts

    texts = help_texts()
    assert sorted(p.stem for p in HELP_FOLDER.glob("*.txt")) == sorted(texts)
    for stage, text in texts.items():
        stored = (HELP_FOLDER / f"{stage}.txt").read_text(encoding="utf-8")
        assert stored == text, f"run python -m pipelines.reference --write-help ({stage})"


def test_help_answers_before_beam_or_tensorflow_is_imported():
    """``python -m pipelines.STAGE --help`` prints the stored help from the package's __init__:
    ``-X importtime`` lists every module imported, and neither Beam nor TensorFlow is one."""
    from pipelines.reference import HELP_FOLDER

    def ask(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-X", "importtime", "-m", name, *args], capture_output=True,
            text=True, timeout=120, cwd=PIPELINES.parent,
        )  # fmt: skip

    for name in ENTRY_POINTS:
        done = ask(name, "--output=x", "--help")
        assert done.returncode == 0, done.stderr[-2000:]
        stage = name.split(".", 1)[1]
        assert done.stdout == (HELP_FOLDER / f"{stage}.txt").read_text(encoding="utf-8")
        imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
        assert not [m for m in imported if m.split(".")[0] in ("apache_beam", "tensorflow")]
    short = ask(ENTRY_POINTS[0], "-h")
    assert short.returncode == 0 and short.stdout.startswith("usage: python -m ")
