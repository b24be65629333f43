"""Release hygiene: one version, a license, project URLs and classifiers, extras that say what
to install when they are missing (checked in a subprocess whose import machinery refuses the
extra, so nothing is uninstalled), and README links that work on PyPI."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import lbalgo

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
REPO = PROJECT["urls"]["Source"]


def test_version_is_written_once() -> None:
    assert "version" not in PROJECT
    assert PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lbalgo.__version__"}
    assert importlib.metadata.version("lbalgo") == lbalgo.__version__
    # one definition: no other code or config file spells it (generated reports may record it)
    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.toml", "*.cfg", "*.ini"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    holders = [
        f
        for f in sorted(set(files))
        if lbalgo.__version__ in (ROOT / f).read_text(errors="replace")
    ]
    assert holders == ["src/lbalgo/__init__.py"]


def test_license_urls_and_classifiers() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in license_text
    # an SPDX expression (PEP 639), which replaces the license classifiers
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    classifiers = set(PROJECT["classifiers"])
    assert not any(c.startswith("License ::") for c in classifiers)
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    minimum = int(PROJECT["requires-python"].removeprefix(">=3."))
    versions = sorted(
        int(c.rsplit(".", 1)[1])
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert versions[0] == minimum
    assert versions == list(range(minimum, versions[-1] + 1))
    assert set(PROJECT["urls"]) >= {"Homepage", "Documentation", "Source", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in PROJECT["urls"].values())
    metadata = importlib.metadata.metadata("lbalgo")
    assert any(u.startswith("Source, https://") for u in metadata.get_all("Project-URL") or [])


def test_extras_and_dev_includes_them() -> None:
    extras = PROJECT["optional-dependencies"]
    assert extras["testing"] == ["hypothesis>=6.100"]
    assert [d.split(">")[0] for d in extras["httpx"]] == ["httpx"]
    assert "lbalgo[testing,httpx,plot,redis,fast]" in extras["dev"]
    assert [d.split(">")[0] for d in extras["fast"]] == ["numpy"]
    assert any(d.startswith("aiohttp") for d in extras["dev"])


def _run_without(blocked: list[str], code: str) -> subprocess.CompletedProcess[str]:
    # None in sys.modules makes any import of that name raise ImportError, as if absent
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("blocked", "code", "message"),
    [
        (
            ["hypothesis"],
            # the checks and reference models work without hypothesis; a strategy does not
            "import lbalgo.testing\nlbalgo.testing.check_weights_respected\n"
            "from lbalgo.testing import groups",
            "lbalgo.testing.strategies needs hypothesis: pip install 'lbalgo[testing]'",
        ),
        (
            ["hypothesis"],
            "import lbalgo.testing.strategies",
            "lbalgo.testing.strategies needs hypothesis: pip install 'lbalgo[testing]'",
        ),
        (["httpx"], "import lbalgo.httpx", "lbalgo.httpx needs httpx: pip install 'lbalgo[httpx]'"),
        (
            ["matplotlib", "matplotlib.figure"],
            "from lbalgo.simulate import Scenario, save_plot, simulate\n"
            "save_plot(simulate(Scenario(requests=10)), 'x.png')",
            "save_plot needs matplotlib: pip install 'lbalgo[plot]'",
        ),
    ],
)
def test_a_missing_extra_is_one_clear_line(blocked: list[str], code: str, message: str) -> None:
    done = _run_without(blocked, code)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"ModuleNotFoundError: {message}"


def test_importing_lbalgo_leaves_numpy_unimported() -> None:
    # numpy is installed here (the fast extra), but only a table or ring built with it
    # imports it: programs that never build one pay nothing at start-up
    code = (
        "import sys, lbalgo\n"
        "print('numpy' in sys.modules)\n"
        "lbalgo.SourceIPHash(lbalgo.BackendGroup([lbalgo.Backend('10.0.0.1', 80)]))\n"
        "print('numpy' in sys.modules)"
    )
    done = _run_without([], code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_the_c_accelerators_are_built_where_required() -> None:
    # CI (LBALGO_REQUIRE_ACCELERATORS=1) has a C compiler: a build that silently skipped an
    # accelerator would leave every test running the pure-Python code only
    if not os.environ.get("LBALGO_REQUIRE_ACCELERATORS"):
        pytest.skip("LBALGO_REQUIRE_ACCELERATORS is not set")
    from lbalgo import _accel

    if _accel.PURE_PYTHON:
        pytest.skip("LBALGO_PURE_PYTHON turns the accelerators off")
    missing = [name for name in _accel.COMPILED if _accel.compiled(name) is None]
    assert missing == []


def test_compiled_refuses_a_name_that_is_no_accelerator() -> None:
    from lbalgo import _accel

    with pytest.raises(ValueError, match=r"name must be one of .*, got '_table'"):
        _accel.compiled("_table")
    assert _accel.COMPILED == ("_hotpath", "_wf2q_c")


def test_the_package_and_the_cli_need_no_extra(tmp_path: Path) -> None:
    # neither an extra nor the C accelerators (a machine without a compiler builds none)
    blocked = ["hypothesis", "httpx", "matplotlib", "redis", "aiohttp", "numpy"]
    blocked += [f"lbalgo.{name}" for name in ("_hotpath", "_wf2q_c")]
    done = _run_without(blocked, "import lbalgo, lbalgo.health; print(lbalgo.__version__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == lbalgo.__version__
    # without numpy (the fast extra) SourceIPHash builds its table in pure Python
    code = (
        "from lbalgo import Backend, BackendGroup, SourceIPHash\n"
        "from lbalgo._accel import numpy_in_use\n"
        "sched = SourceIPHash(BackendGroup([Backend('10.0.0.1', 80), Backend('10.0.0.2', 80)]))\n"
        "print(numpy_in_use(), sched.pick('192.0.2.1').key)"
    )
    done = _run_without(blocked, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False"
    plot = tmp_path / "shares.png"
    done = _run_without(
        blocked,
        f"from lbalgo.cli import main\nsys.exit(main(['simulate', '--plot', {str(plot)!r}]))",
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "lbalgo simulate: error: --plot needs matplotlib: pip install 'lbalgo[plot]'"
    )
    assert not plot.exists()


def test_readme_links_are_absolute_and_point_at_files_of_this_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links
    for link in links:
        assert link.startswith("https://"), f"relative link breaks on PyPI: {link}"
        if link.startswith((f"{REPO}/blob/main/", f"{REPO}/tree/main/")):
            path = link.split("/main/", 1)[1].split("#", 1)[0]
            assert (ROOT / path).exists(), f"README links to a missing file: {link}"
