"""Print the configuration reference: every entry point's flags, as Markdown (kept in
docs/configuration.md); with ``--write-help``, store each entry point's ``--help`` text under
pipelines/help/.

python -m pipelines.reference [--write-help]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from pipelines import cowatch
from pipelines import embed
from pipelines import evaluate
from pipelines import index
from pipelines import neighbors
from pipelines import nightly
from pipelines import scrape
from pipelines import similar
from pipelines import train
from pipelines.common import CommonOptions
from pipelines.common import flag_names


def commands() -> list:
    """The Command of every entry point, in the order the docs present the stages."""
    modules = (scrape, cowatch, train, embed, index, neighbors, evaluate, similar, nightly)
    return [module.COMMAND for module in modules]


def _table(rows: list[tuple[argparse.Action, str]]) -> str:
    """Markdown rows of (flag, where it is declared when not here)."""
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for action, source in rows:
        flag = ", ".join(f"`{f}`" for f in action.option_strings)
        default = (
            "" if action.default is None or action.default is False else f"`{action.default}`"
        )
        meaning = " ".join((action.help or "").split()).replace("|", "\\|")
        if source:
            meaning = f"({source}) {meaning}"
        note = getattr(action, "required_note", None)
        if note:
            head, _, other = note.partition(", or ")
            meaning += f" **{head}, or `{other}`**" if other else f" **{head}**"
        lines.append(f"| {flag} | {default} | {meaning} |")
    return "\n".join(lines)


def _flags(names) -> str:
    return ", ".join(f"`--{name}`" for name in names)


def reference_markdown() -> str:
    """The flags every entry point shares, then per entry point: its usage and every flag it
    reads (default, meaning, required ones marked); the flags of other stages it hands on in
    bulk (the nightly job) are summarised."""
    shared = flag_names(CommonOptions)
    common = _table([(action, "") for action in _own_actions(CommonOptions)])
    sections = ["**every entry point**\n\n" + common]
    for command in commands():
        parser = command.parser()
        by_dest = {a.dest: a for a in parser._actions if a.option_strings}
        rows = [(by_dest[name], "") for name in flag_names(command.options_class)]
        summaries = []
        for options_class, names in command.reads:
            every = flag_names(options_class)
            chosen = every if names is None else names
            left_out = [name for name in every if name not in chosen]
            if len(chosen) > 8 and len(left_out) < len(chosen):
                but = f" but {_flags(left_out)}" if left_out else ""
                summaries.append(f"every flag of {options_class.__module__}{but}")
            else:
                rows += [(by_dest[name], options_class.__module__) for name in chosen]
        if "output" in by_dest:
            rows.append((by_dest["output"], ""))
        text = f"**{command.name}**: `{parser.usage}`\n\n" + _table(rows)
        ignored = [name for name in shared if name not in by_dest]
        notes = [f"Also reads {'; '.join(summaries)}."] if summaries else []
        if ignored:
            notes.append(f"Does not read {_flags(ignored)} (passing it is a usage error).")
        if command.beam:
            notes.append("Runs a Beam pipeline: `--runner`, `--dry_run` and Beam's other options "
                         "apply.")  # fmt: skip
        sections.append(text + "".join(f"\n\n{note}" for note in notes))
    return "\n\n".join(sections) + "\n"


def _own_actions(options_class: type) -> list[argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    options_class._add_argparse_args(parser)
    return [a for a in parser._actions if a.option_strings]


HELP_FOLDER = pathlib.Path(__file__).resolve().parent / "help"


def help_texts() -> dict[str, str]:
    """stage -> the ``--help`` text argparse renders for it (width fixed at 100 columns)."""
    return {command.name.split(".", 1)[1]: command.parser().format_help() for command in commands()}


def write_help() -> None:
    """Store every entry point's help under pipelines/help/ (``--help`` prints it from there)."""
    HELP_FOLDER.mkdir(exist_ok=True)
    for stage, text in help_texts().items():
        (HELP_FOLDER / f"{stage}.txt").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-help"]:
        write_help()
    else:
        sys.stdout.write(reference_markdown())
