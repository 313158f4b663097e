"""The repository never points outside itself.

A user has only the clone: a link to a document that lives next to the repository on a
developer's machine is dead for them. Every file git tracks (or would track: new files not
ignored) is searched for the names of such documents. The names are built by concatenation
so that this file does not trip on itself. Relative links in the documentation must lead to
files of the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_MD = "." + "md"
FORBIDDEN = ("../" + "shared", "DESIGN" + _MD, "INTEROP" + _MD, "STYLE" + _MD)
_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", "build", "dist",
              "esl-data", "esl-demo"}


def repository_files() -> list[Path]:
    """Tracked and not-ignored files, by git; without git, the tree minus build output."""
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        out = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]
    return [p for p in ROOT.rglob("*") if p.is_file()
            and not any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)]


def test_no_file_points_outside_the_repository() -> None:
    files = repository_files()
    assert any(p.name == "README.md" for p in files), "the file list is empty or wrong"
    found = []
    for path in files:
        data = path.read_bytes()
        for name in FORBIDDEN:
            if name.encode() in data:
                line = data[: data.index(name.encode())].count(b"\n") + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not found, "files that point outside the repository:\n" + "\n".join(found)


def test_relative_links_in_the_documentation_lead_to_files_of_the_repository() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 1, "docs/ has no pages"
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor in the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links that lead nowhere in the repository:\n" + "\n".join(broken)
