"""The files of the repository itself: a merge left half-done once broke the Makefile, and with it
both README commands, while every Python test still passed."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFLICT = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def _tracked_text_files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing lists the tracked files")
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = []
    for name in names:
        path = ROOT / name
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def test_no_merge_conflict_markers():
    marked = [str(p.relative_to(ROOT)) for p in _tracked_text_files() if CONFLICT.search(p.read_text(errors="replace"))]
    assert not marked, f"merge conflict markers left in: {marked}"


def test_conflict_pattern_finds_a_marker():
    assert CONFLICT.search("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> other\n")
    assert not CONFLICT.search("a ======= heading\n# ========\n")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["test", "demo", "install-gpu"])
def test_makefile_targets_parse(target):
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
