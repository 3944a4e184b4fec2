"""The files of the repository itself: a merge left half-done once broke the Makefile, and with it
both README commands, while every Python test still passed."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFLICT = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def _tracked_text_files() -> list[Path]:
    """The files git tracks; outside a git checkout (an unpacked archive), every file but
    hidden folders and what runs write."""
    if (ROOT / ".git").exists():
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        paths = [ROOT / name for name in names]
    else:
        paths = [p for p in ROOT.rglob("*") if not any(part.startswith(".") or part == "runs" for part in p.relative_to(ROOT).parts)]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:4096]]


def test_no_merge_conflict_markers():
    marked = [str(p.relative_to(ROOT)) for p in _tracked_text_files() if CONFLICT.search(p.read_text(errors="replace"))]
    assert not marked, f"merge conflict markers left in: {marked}"


def test_conflict_pattern_finds_a_marker():
    assert CONFLICT.search("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> other\n")
    assert not CONFLICT.search("a ======= heading\n# ========\n")


# No skip without make: the README's two commands are make targets.
@pytest.mark.parametrize("target", ["test", "demo", "install-gpu"])
def test_makefile_targets_parse(target):
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------------
# The user documents: every relative link goes to a file that exists, and an anchor to a heading.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "cluster" / "README.md"]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def _broken_links(path: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no file {os.path.relpath(resolved, root)}")
        elif anchor and (resolved.suffix != ".md" or anchor not in _anchors(resolved)):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(resolved, root)}")
    return broken


def test_every_relative_link_in_the_documents_resolves():
    broken = {str(p.relative_to(ROOT)): b for p in _documents() if (b := _broken_links(p))}
    assert not broken, f"links to nothing (fix the path or the heading): {broken}"


def test_link_check_finds_a_broken_link_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n## Sweeps: `repirl sweep`\n")
    page.write_text("[a](other.md#sweeps-repirl-sweep) [b](missing.md) [c](other.md#nowhere) [d](https://x.org)\n"
                    "```\n[e](in-a-code-block.md)\n```\n")
    assert [b.split(":")[0] for b in _broken_links(page, tmp_path)] == ["missing.md", "other.md#nowhere"]
    assert _anchor("The demo on the built-in world") == "the-demo-on-the-built-in-world"
