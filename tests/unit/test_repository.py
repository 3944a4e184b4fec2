"""The files of the repository itself: a merge left half-done once broke the Makefile, and with it
both README commands, while every Python test still passed."""

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
