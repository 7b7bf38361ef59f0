"""``paystream dlq redrive`` shows a progress bar on a terminal and plain lines when piped.

The re-drive itself is replaced by a stand-in that reports two letters (the real one is
tested against the broker in tests/integration/test_dlq_redrive.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import paystream.progress
import paystream.worker.redrive
from paystream.cli import main
from paystream.worker.redrive import DeadLetter, RedriveReport

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ENV = {"PAYSTREAM_DB__PRIMARY_URL": "postgresql+asyncpg://unused/x",
       "PAYSTREAM_REDIS__URL": "redis://unused", "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS": "unused:9092"}


async def two_letters(settings: object, *, dry_run: bool, limit: int | None, from_beginning: bool,
                      on_letter: Callable[[DeadLetter], None],
                      on_total: Callable[[int], None]) -> RedriveReport:
    on_total(2)
    for offset, problem in ((7, None), (8, "not JSON")):
        on_letter(DeadLetter(0, offset, "database refused: X", b"{}", problem, None))
    return RedriveReport(examined=2, redriven=0, kept=1)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.setattr(paystream.worker.redrive, "redrive", two_letters)
    monkeypatch.chdir(tmp_path)  # no dev stack directory here: the settings come from ENV
    return CliRunner()


def run(runner: CliRunner) -> str:
    done = runner.invoke(main, ["dlq", "redrive", "--dry-run"], env=ENV)
    assert done.exit_code == 0, done.output
    return done.output


def test_piped_output_is_one_line_per_letter(runner: CliRunner) -> None:
    assert run(runner).splitlines() == [
        "0:7  would redrive  reason: database refused: X",
        "0:8  kept           reason: database refused: X  (still refused: not JSON)",
        "examined 2, would redrive 1, still refused 1",
    ]


def test_a_terminal_also_gets_a_bar(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paystream.progress, "is_terminal", lambda stream: True)
    text = ANSI.sub("", run(runner))
    assert "dead letters" in text and "2/2" in text
    assert "0:8  kept" in text
    assert text.rstrip().endswith("examined 2, would redrive 1, still refused 1")
