"""A griffe extension for the docs build: our docstrings are written for ``pydoc`` and doctest.

Two habits of those docstrings read badly when mkdocstrings renders them as Markdown:
interactive examples (``>>>`` lines, which Markdown takes for nested block quotes) and Sphinx
roles such as ``:class:`Lease```. This rewrites both as the build loads the docstrings; the
source stays as it is, so ``help()`` and the doctests see the same text as before.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`~?([^`]+)`")


def _short(match: re.Match[str]) -> str:
    target = match.group(1)
    shown = target.rsplit(".", 1)[-1] if match.group(0).count("~") else target
    return f"`{shown}`"


def rewrite(text: str) -> str:
    """``>>>`` examples become fenced ``pycon`` blocks; Sphinx roles become code spans."""
    out: list[str] = []
    in_example = False
    in_fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if in_example and not stripped:
            out.append("```")
            in_example = False
        if not in_fence and not in_example and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            if out and out[-1].strip():
                out.append("")  # a fence must not continue a paragraph
            out.append(f"{indent}```pycon")
            in_example = True
        out.append(line if in_example or in_fence else _ROLE.sub(_short, line))
    if in_example:
        out.append("```")
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Applies :func:`rewrite` to every docstring as the API is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
