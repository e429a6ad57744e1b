"""Packaging facts that a fresh machine and a Dataflow worker depend on."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def pins() -> dict[str, str]:
    text = (REPO_ROOT / "constraints.txt").read_text()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([\w.-]+)==(\S+)$", text, re.M)}


def test_constraints_pin_the_stack():
    pinned = pins()
    assert pinned["tensorflow"].startswith("2.21")
    assert pinned["tensorflow-transform"].startswith("1.21")
    assert pinned["apache-beam"].startswith("2.77")
    assert pinned["scann"] == "1.4.2"


def test_gpu_image_matches_the_pinned_beam_and_python():
    dockerfile = (REPO_ROOT / "docker" / "embed-gpu.Dockerfile").read_text()
    base = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\S+)$", dockerfile, re.M)
    assert base, "the GPU image must start from Beam's Python SDK image"
    assert base.group(1) == "3.11"
    assert base.group(2) == pins()["apache-beam"]
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in dockerfile


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "```\nmake test\n```" in readme
    assert [
        line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))
    ] == ["make test"]


def test_configuration_reference_is_current():
    from pipelines.reference import reference_markdown

    readme = (REPO_ROOT / "docs" / "configuration.md").read_text()
    start = readme.index("<!-- reference:start -->\n") + len("<!-- reference:start -->\n")
    end = readme.index("<!-- reference:end -->")
    assert readme[start:end] == reference_markdown(), "run python -m pipelines.reference"
