"""The package stays typed (mypy --strict) and lint-clean (ruff), as STYLE.md asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          check=False)


def test_ruff_is_clean_on_the_package_and_its_tests() -> None:
    done = run("ruff", "check", "paystream", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean_on_the_package() -> None:
    done = run("mypy", "paystream")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_type_ignore_in_the_package_says_why() -> None:
    """``# type: ignore[code]`` is followed by a comment with its reason."""
    import re

    bare = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?\s*$")
    found = [f"{path.relative_to(ROOT)}:{number}"
             for path in sorted((ROOT / "paystream").rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if bare.search(line)]
    assert found == [], found
