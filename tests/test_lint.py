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


# The package's layers, lowest first (issue 17, DESIGN.md section 1): a module imports only
# from its own subpackage and from lower layers, never from its own layer or above. Every
# import counts, those under TYPE_CHECKING and inside functions too.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("domain",),
    ("config", "metrics", "client", "heap"),
    ("tracing",),
    ("logging", "progress", "events", "cache"),
    ("db",),
    ("retry",),
    ("webhooks",),
    ("services", "worker"),
    ("schema",),
    ("resolvers",),
    ("gateway",),
    ("devstack",),
    ("devrun",),
    ("cli",),
)


def _imports(path: Path) -> set[str]:
    """The ``paystream`` subpackages and modules the file imports (first name after it)."""
    import ast

    module = path.relative_to(ROOT).with_suffix("").parts
    package = module if path.name == "__init__.py" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            names = [".".join([*base, node.module or ""]).strip(".")]
        for name in names:
            parts = name.split(".")
            if parts[0] == "paystream" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_imports_point_down_the_layers_only() -> None:
    rank = {name: level for level, names in enumerate(LAYERS) for name in names}
    wrong = []
    for path in sorted((ROOT / "paystream").rglob("*.py")):
        parts = path.relative_to(ROOT / "paystream").with_suffix("").parts
        if parts[0] in ("__init__", "__main__") or "migrations" in parts:
            continue
        own = parts[0]
        assert own in rank, f"{path.relative_to(ROOT)}: add {own!r} to LAYERS"
        for target in _imports(path) - {own}:
            if target in rank and rank[target] >= rank[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports paystream.{target}")
    assert wrong == [], wrong
