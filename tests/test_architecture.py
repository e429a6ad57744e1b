"""The package layering written down in ARCHITECTURE.md, enforced over every product module.

Imports run one way, down the layers: a module imports its own package and packages of lower
layers only. ``synthetic`` (the synthetic poster web) is imported by tests, benchmarks and
the demo wiring in ``pipelines.demo``, never by other product code. An import inside a
function hides the dependency graph, so it is allowed only for a heavy, optional import, with
a comment that says why (on the line above or on the import itself).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO_ROOT

LAYERS = {
    "schemas": 0,
    "monitoring": 0,
    "storage": 1,
    "fetching": 2,
    "imaging": 2,
    "synthetic": 2,
    "models": 3,
    "transforms": 4,
    "reporting": 5,
    "pipelines": 6,
}
"""Package -> layer. Packages of one layer do not import each other."""

DEMO_WIRING = "pipelines.demo"
"""The one product module that may import ``synthetic``."""

NOT_PRODUCT = ("tests", "benchmarks")
"""Packages that product code never imports."""


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement of a product module."""

    module: str  # the importing module, dotted
    file: str  # its path, relative to the repository
    line: int
    target: str  # the imported module, dotted


def product_modules() -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every module of the layered packages."""
    for package in LAYERS:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            yield ".".join(p for p in parts if p != "__init__"), path


def _file(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or node.module is None:
        return [f"{'.' * node.level}{node.module or ''}"]
    if node.module in LAYERS:  # from models import lookup: the submodules are the targets
        return [f"{node.module}.{alias.name}" for alias in node.names]
    return [node.module]


def imports_of(module: str, source: str, file: str) -> list[Import]:
    """Every import of a module's source, at module level or inside functions alike."""
    nodes = ast.walk(ast.parse(source, file))
    statements = sorted((n for n in nodes if isinstance(n, ast.Import | ast.ImportFrom)),
                        key=lambda n: n.lineno)  # fmt: skip
    return [Import(module, file, n.lineno, target) for n in statements for target in _targets(n)]


def all_imports() -> list[Import]:
    return [
        i for module, path in product_modules()
        for i in imports_of(module, path.read_text(), _file(path))
    ]  # fmt: skip


def layering_offences(imports: list[Import]) -> list[str]:
    """Each import that runs sideways or up the layers, or reaches code that is not product."""
    offences = []
    for imp in imports:
        source = imp.module.split(".")[0]
        target = imp.target.split(".")[0]
        where = f"{imp.file}:{imp.line}: {imp.module}"
        if target.startswith(".") or target in NOT_PRODUCT:
            offences.append(f"{where} imports {imp.target}")
        elif target == "synthetic" and source != "synthetic":
            if imp.module != DEMO_WIRING:
                offences.append(
                    f"{where} imports {imp.target} (only {DEMO_WIRING}, tests and benchmarks may "
                    "import synthetic)"
                )
        elif target in LAYERS and target != source and LAYERS[target] >= LAYERS[source]:
            offences.append(
                f"{where} (layer {LAYERS[source]}) imports {imp.target} (layer {LAYERS[target]})"
            )
    return offences


def _import_blocks(tree: ast.AST) -> Iterator[list[ast.stmt]]:
    """Runs of consecutive import statements inside function bodies."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for inner in {id(n): n for f in functions for n in ast.walk(f)}.values():
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(inner, field, None)
            if not isinstance(statements, list):
                continue
            block: list[ast.stmt] = []
            for stmt in [*statements, None]:
                if isinstance(stmt, ast.Import | ast.ImportFrom):
                    block.append(stmt)
                    continue
                if block:
                    yield block
                block = []


def unexplained_function_imports(source: str, file: str) -> list[str]:
    """Function-level import runs with no comment on them or on the line above the first."""
    lines = source.splitlines()
    tree = ast.parse(source, file)
    found = set()
    for block in _import_blocks(tree):
        first, last = block[0].lineno, block[-1].end_lineno or block[-1].lineno
        above = lines[first - 2].strip() if first >= 2 else ""
        trailing = any("#" in lines[i - 1] for i in range(first, last + 1))
        if not (above.startswith("#") or trailing):
            names = ", ".join(t for stmt in block for t in _targets(stmt))
            found.add(f"{file}:{first}: {names}")
    return sorted(found)


def test_every_package_is_in_a_layer():
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - set(NOT_PRODUCT)
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS"


def test_imports_run_down_the_layers():
    offences = layering_offences(all_imports())
    assert not offences, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(offences)


def test_the_rule_catches_upward_sideways_and_synthetic_imports():
    source = (
        "from schemas import PosterRecord\n"
        "def f():\n    from pipelines.embed import posters_glob\n"
        "from imaging import images\n"
        "import synthetic.web\n"
    )
    offences = layering_offences(imports_of("fetching.http", source, "fetching/http.py"))
    assert offences == [
        "fetching/http.py:3: fetching.http (layer 2) imports pipelines.embed (layer 6)",
        "fetching/http.py:4: fetching.http (layer 2) imports imaging.images (layer 2)",
        "fetching/http.py:5: fetching.http imports synthetic.web (only pipelines.demo, tests and "
        "benchmarks may import synthetic)",
    ]
    assert layering_offences(imports_of("pipelines.demo", source, "pipelines/demo.py")) == []


def test_function_level_imports_say_why():
    missing = [
        entry for _, path in product_modules()
        for entry in unexplained_function_imports(path.read_text(), _file(path))
    ]  # fmt: skip
    assert not missing, (
        "imports inside functions need a reason (heavy and optional: say so in a comment), "
        "else move them to the top of the module:\n" + "\n".join(missing)
    )


def test_an_unexplained_function_import_is_found():
    source = (
        "def f():\n    import json\n    return json\n\n\n"
        "def g():\n    # TensorFlow: seconds to import, only g needs it\n    import tensorflow\n"
        "    import keras\n\n\n"
        "def h():\n    import scann  # loads TensorFlow ops: only when an index is built\n"
    )
    assert unexplained_function_imports(source, "m.py") == ["m.py:2: json"]
