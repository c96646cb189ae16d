"""tests/, bench/ and tools/: tests and bench share code through tools/ only, so either can
change, move or be left out of a checkout without breaking the other (issue 27)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tests", "bench", "tools")


def modules(folder):
    """The module names each `folder/*.py` file stands for when imported bare, with `folder`."""
    return {folder, *(path.stem for path in (ROOT / folder).glob("*.py"))} - {"__init__"}


def imported(path):
    """The top-level names of every module `path` imports, deferred imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder, others", [("tests", ("bench",)), ("bench", ("tests",)),
                                            ("tools", ("tests", "bench"))])
def test_tests_and_bench_share_code_through_tools_only(folder, others):
    own = modules(folder)
    forbidden = set().union(*(modules(other) for other in others)) - own - {"tools"}
    found = {f"{path.relative_to(ROOT)} imports {name}"
             for path in sorted((ROOT / folder).glob("*.py"))
             for name in imported(path) & forbidden}
    assert not found, "; ".join(sorted(found)) + ": what both use belongs in tools/"
