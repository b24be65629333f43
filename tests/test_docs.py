"""The documentation site: every public name in the API reference, a strict build, the
docstring rewriting the build applies (tools/griffe_rst.py), and every ``python`` code block of
the docs and the README run as it is (``pycon`` blocks run as doctests through pytest's
``--doctest-glob``)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import lbalgo

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "tools" / "griffe_rst.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (DOCS / "api.md").read_text()
    entries = set(re.findall(r"^::: lbalgo\.(\w+)", api, flags=re.MULTILINE))
    missing = sorted(set(lbalgo.__all__) - entries)
    assert not missing, f"add '::: lbalgo.NAME' to docs/api.md for: {missing}"
    modules = {"testing", "simulate", "health", "httpx", "nginx"}
    unknown = sorted(entries - set(lbalgo.__all__) - modules)
    assert not unknown, f"docs/api.md documents names lbalgo does not export: {unknown}"


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert pages
    for page in pages:
        assert f" {page}\n" in config, f"{page} is not in mkdocs.yml's nav"


def test_rewrite_fences_examples_and_drops_roles() -> None:
    tool = _load_tool()
    text = "See :class:`~lbalgo.Lease` and :func:`lbalgo.attempts`.\n>>> 1 + 1\n2\n\nAfter."
    assert tool.rewrite(text) == (
        "See `Lease` and `lbalgo.attempts`.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nAfter."
    )
    fenced = "```python\n>>> x\n```"
    assert tool.rewrite(fenced) == fenced  # already fenced: left alone
    assert tool.rewrite(">>> 1\n1") == "```pycon\n>>> 1\n1\n```"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "api" / "index.html").exists()


def test_simulator_page_shows_the_real_output(capsys: pytest.CaptureFixture[str]) -> None:
    from lbalgo.cli import main

    page = (DOCS / "simulator.md").read_text()
    command = "$ lbalgo simulate --algorithm swrr --requests 700\n"
    shown = page.split(command, 1)[1].split("```", 1)[0]
    assert main(["simulate", "--algorithm", "swrr", "--requests", "700"]) == 0
    assert capsys.readouterr().out == shown


NOT_RUN = re.compile(r"<!-- not run: \S.* -->")
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """Each ```python block of a page: (line number, code, whether to run it). A block is a
    fragment, compiled but not run, when the line before its fence is ``<!-- not run: why -->``
    (it needs a Redis server, or your web framework's request object)."""
    blocks = []
    lines = text.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        if lines[index].rstrip() == "```python":
            start = index
            index += 1
            code = []
            while lines[index].rstrip() != "```":
                code.append(lines[index])
                index += 1
            before = lines[start - 1].strip() if start else ""
            blocks.append((start + 1, "".join(code), not NOT_RUN.fullmatch(before)))
        index += 1
    return blocks


def test_python_block_parser() -> None:
    page = "x\n```python\na = 1\n```\n<!-- not run: needs Redis -->\n```python\nb(\n```\n"
    assert python_blocks(page) == [(2, "a = 1\n", True), (6, "b(\n", False)]


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p.read_text())],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # anything a block writes lands in a scratch directory
    namespace: dict[str, object] = {"__name__": "__docs__"}
    name = str(page.relative_to(ROOT))
    ran = 0
    for line, code, run in python_blocks(page.read_text()):
        # the line offset makes a failure point at the page's own line
        compiled = compile("\n" * line + code, f"{name}", "exec")
        if run:
            exec(compiled, namespace)
            ran += 1
    assert ran or name in FRAGMENTS_ONLY, f"{name}: every python block is marked not run"


# pages whose python blocks are all fragments (each marked "not run" with its reason)
FRAGMENTS_ONLY = {"docs/fleet.md"}
