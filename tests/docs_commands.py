"""The commands and queries that README.md and docs/ print, read out of them as a reader copies
them, so that a test can run them against a nightly run (tests/pipelines/test_nightly.py)."""

from __future__ import annotations

import dataclasses
import pathlib
import re

from tests.conftest import REPO_ROOT

DEMO = "out/demo"
"""Where `make demo` writes: a command that names it reads the demo's outputs."""

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    source: str  # the file, relative to the repository
    language: str  # the fence's info string: '' (shell), 'sh', 'python', 'sql', ...
    text: str

    @property
    def commands(self) -> list[str]:
        """A shell block's commands, a backslash-continued command joined into one line."""
        joined = self.text.replace("\\\n", " ")
        return [line.strip() for line in joined.splitlines() if line.strip()
                and not line.lstrip().startswith("#")]  # fmt: skip

    @property
    def duckdb_statements(self) -> list[str]:
        """A sql block's DuckDB statements (the part before its ``-- BigQuery`` line)."""
        duck = self.text.split("-- BigQuery", 1)[0]
        lines = [line for line in duck.splitlines() if not line.lstrip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def documents() -> list[pathlib.Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def blocks() -> list[Block]:
    found = []
    for path in documents():
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            found.append(Block(str(path.relative_to(REPO_ROOT)), match.group(1), match.group(2)))
    return found


def demo_shell_commands() -> list[tuple[str, str]]:
    """(document, command) for every shell command that reads the demo's outputs."""
    return [(b.source, command) for b in blocks() if b.language in ("", "sh", "bash")
            for command in b.commands if DEMO in command]  # fmt: skip


def demo_python_snippets() -> list[tuple[str, str]]:
    """(document, code) for every Python block that reads the demo's outputs."""
    return [(b.source, b.text) for b in blocks() if b.language == "python" and DEMO in b.text]


def duckdb_queries() -> list[tuple[str, str]]:
    """(document, statement) for every DuckDB query the docs print for the warehouse."""
    return [(b.source, s) for b in blocks() if b.language == "sql" for s in b.duckdb_statements]
