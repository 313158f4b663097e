"""What a fresh install needs is declared: every package the shipped code imports is a runtime
dependency in pyproject.toml (a dev-only package once hid a missing `click`), and
requirements/gateway.txt repeats pyproject's requirements exactly. `esl --version` too.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
GATEWAY_TXT = REPO / "requirements" / "gateway.txt"

OPTIONAL_IMPORTS: dict[str, str] = {}
"""Top-level modules the shipped code may import without declaring them: module → why. Each
must be imported inside ``try: … except ImportError`` (the code works without it)."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> dict[str, Requirement]:
    """pyproject's ``[project] dependencies`` by normalised distribution name."""
    reqs = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]
    return {_norm(r.name): r for r in reqs}


def shipped_packages() -> dict[str, Path]:
    """Top-level import name → source directory, from pyproject's setuptools settings."""
    tool = PYPROJECT["tool"]["setuptools"]
    dirs = tool.get("package-dir", {})
    return {pkg: REPO / dirs.get(pkg, pkg) for pkg in tool["packages"] if "." not in pkg}


@dataclass(frozen=True)
class Import:
    module: str  # the top-level name
    where: str  # file:line
    guarded: bool  # inside try/except ImportError


def _catches_import_error(node: ast.Try) -> bool:
    names: set[str] = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {k.id for k in kinds if isinstance(k, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def imports_in(source: str, filename: str) -> Iterator[Import]:
    """Absolute imports in `source`: ``import x``, ``from x import y`` and
    ``importlib.import_module("x")`` with a literal name."""

    def visit(node: ast.AST, guarded: bool) -> Iterator[Import]:
        if isinstance(node, ast.Try):
            inner = guarded or _catches_import_error(node)
            for stmt in node.body:
                yield from visit(stmt, inner)
            for other in [*node.handlers, *node.orelse, *node.finalbody]:
                yield from visit(other, guarded)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            yield Import(name.split(".")[0], f"{filename}:{getattr(node, 'lineno', 0)}", guarded)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, guarded)

    yield from visit(ast.parse(source, filename), False)


def undeclared(found: list[Import]) -> list[str]:
    """Each import that is neither stdlib, ours, a declared runtime dependency, nor an allowed
    guarded optional import, as ``file:line: module (distribution)``."""
    ours = set(shipped_packages())
    declared = set(runtime_requirements())
    dists = importlib.metadata.packages_distributions()
    problems = []
    for imp in found:
        if imp.module in sys.stdlib_module_names or imp.module in ours or imp.module == "__future__":
            continue
        providers = {_norm(d) for d in dists.get(imp.module, [])}
        if providers & declared:
            continue
        if imp.module in OPTIONAL_IMPORTS and imp.guarded:
            continue
        who = ", ".join(sorted(providers)) or "not installed here"
        problems.append(f"{imp.where}: {imp.module} ({who})")
    return problems


def shipped_imports() -> list[Import]:
    found: list[Import] = []
    for directory in shipped_packages().values():
        for path in sorted(directory.rglob("*.py")):
            found += imports_in(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    return found


def test_every_import_of_the_shipped_packages_is_a_declared_runtime_dependency() -> None:
    found = shipped_imports()
    assert {"aiomqtt", "numpy", "numba", "typer"} <= {i.module for i in found}  # the scan sees imports
    problems = undeclared(found)
    assert not problems, ("imported by the shipped packages but not in pyproject.toml's [project] "
                          "dependencies (dev extras do not count):\n" + "\n".join(problems))


def test_the_scan_flags_an_undeclared_import_even_when_a_dev_package_installed_it() -> None:
    # click is installed here (by bumble, a dev extra) but is no runtime dependency: the bug
    source = "import sys\nimport click\nfrom eslserver import config\n"
    assert undeclared(list(imports_in(source, "x.py"))) == ["x.py:2: click (click)"]
    guarded = "try:\n    import click\nexcept ImportError:\n    click = None\n"
    assert [i.guarded for i in imports_in(guarded, "y.py")] == [True]
    assert undeclared(list(imports_in(guarded, "y.py"))) == ["y.py:2: click (click)"]  # not allowed
    dynamic = "import importlib\nimportlib.import_module('click')\n"
    assert undeclared(list(imports_in(dynamic, "z.py"))) == ["z.py:2: click (click)"]


def test_optional_imports_are_guarded() -> None:
    for imp in shipped_imports():
        if imp.module in OPTIONAL_IMPORTS and imp.module not in runtime_requirements():
            assert imp.guarded, f"{imp.where}: optional {imp.module} imported without except ImportError"


def gateway_requirements() -> list[Requirement]:
    lines = [line.strip() for line in GATEWAY_TXT.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def test_gateway_requirements_repeat_pyproject_exactly() -> None:
    runtime = runtime_requirements()
    reqs = gateway_requirements()
    assert reqs, f"{GATEWAY_TXT} lists nothing"
    for req in reqs:
        assert _norm(req.name) in runtime, f"{GATEWAY_TXT}: {req} is not a runtime dependency in pyproject.toml"
        ours = runtime[_norm(req.name)]
        assert (req.name, req.specifier, req.marker, req.extras) == (ours.name, ours.specifier, ours.marker,
                                                                      ours.extras), \
            f"{GATEWAY_TXT}: {req} differs from pyproject.toml's {ours}"
    names = {_norm(r.name) for r in reqs}
    assert len(names) == len(reqs), f"{GATEWAY_TXT} names a package twice"
    # what keeps it light: none of the renderer's packages
    assert not names & {"numpy", "numba", "pillow", "jinja2", "qrcode", "zxing-cpp"}, names


def test_esl_version_prints_the_installed_version() -> None:
    done = subprocess.run([sys.executable, "-c", "from eslserver.cli import main; main()", "--version"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    installed = importlib.metadata.version("eslserver")
    assert done.stdout.strip() == f"esl (eslserver) {installed}"
    assert installed == PYPROJECT["project"]["version"]
