"""paystream.progress draws a bar only on a terminal and is a plain-lines no-op otherwise."""

from __future__ import annotations

import io
import re

import pytest

from paystream.progress import is_terminal, progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, keeping what is written to it."""

    def isatty(self) -> bool:
        return True


def test_piped_output_is_only_the_lines_and_items_pass_through() -> None:
    out = io.StringIO()
    seen = []
    with progress(["a", "b", "c"], "checking", stream=out) as bar:
        assert not bar.live
        for item in bar:
            seen.append(item)
            bar.echo(f"row {item} [ok]")
    assert seen == ["a", "b", "c"]
    assert out.getvalue() == "row a [ok]\nrow b [ok]\nrow c [ok]\n"


def test_piped_count_progress_writes_nothing_of_its_own() -> None:
    out = io.StringIO()
    with progress(None, "re-driving", stream=out) as bar:
        bar.set_total(2)
        bar.advance()
        bar.advance()
    assert out.getvalue() == ""


def test_terminal_gets_a_bar_with_the_count_and_the_lines_above_it() -> None:
    out = Terminal()
    seen = []
    bar = progress(range(3), "verifying", stream=out)
    assert bar.live
    for item in bar:  # iterating to the end closes the bar
        seen.append(item)
        bar.echo(f"checked {item} [x]")
    assert seen == [0, 1, 2]
    assert not bar.live
    text = ANSI.sub("", out.getvalue())
    assert "verifying" in text and "3/3" in text
    # Echoed lines reach the terminal verbatim (brackets are not rich markup).
    for item in range(3):
        assert f"checked {item} [x]" in text


def test_terminal_count_progress_shows_the_total_set_later() -> None:
    out = Terminal()
    with progress(None, "re-driving", stream=out) as bar:
        assert bar.live
        bar.set_total(4)
        bar.advance(4)
    assert not bar.live
    assert "4/4" in ANSI.sub("", out.getvalue())


def test_a_count_cannot_be_iterated() -> None:
    with progress(5, "steps", stream=io.StringIO()) as bar, pytest.raises(TypeError):
        list(bar)


def test_streams_without_a_terminal() -> None:
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)
    assert not is_terminal(io.StringIO())
    assert is_terminal(Terminal())


def test_a_bar_opened_inside_another_joins_its_display() -> None:
    out = Terminal()
    with progress(["drain"], "scenarios", stream=out) as outer:
        for _ in outer:
            # rich allows one live display at a time; the inner bar must not start a second.
            with progress(2, "worker draining", stream=out) as inner:
                assert inner.live
                inner.advance(2)
            assert not inner.live and outer.live
    text = ANSI.sub("", out.getvalue())
    assert "scenarios" in text and "1/1" in text
    assert not outer.live
    # A new bar afterwards starts a display of its own again.
    with progress(1, "again", stream=out) as again:
        again.advance()
    assert "again" in ANSI.sub("", out.getvalue())
