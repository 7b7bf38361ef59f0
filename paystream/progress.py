"""Progress for people waiting at a terminal; plain lines for pipes, files and CI logs.

    with progress(rows, "verifying the ledger", stream=sys.stdout) as bar:
        for row in bar:                      # advances once per item
            if bad(row):
                bar.echo(f"bad row {row}")   # a line of output, above the bar

    with progress(None, "re-driving") as bar:   # total unknown yet (or an int)
        bar.set_total(n)
        bar.advance()

On a terminal (the stream's ``isatty()``) a rich progress bar is drawn on that stream and
``echo`` prints above it; otherwise nothing is drawn, ``echo`` writes the line as it is, and
the output stays one record per line, safe to pipe to grep or a log collector.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from types import TracebackType
from typing import Any, Generic, TextIO, TypeVar, overload

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

__all__ = ["Progress", "is_terminal", "progress"]

T = TypeVar("T")

# The live displays drawn now, innermost last (one per stream at most).
_open: list[RichProgress] = []


def is_terminal(stream: TextIO) -> bool:
    """Whether a person is probably watching ``stream`` (a closed or odd stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class Progress(Generic[T]):
    """A progress display over ``items`` (or a count), drawn only when ``live``."""

    def __init__(self, items: Iterable[T] | None, total: int | None, description: str,
                 stream: TextIO, *, live: bool) -> None:
        self._items = items
        self._stream = stream
        self._bar: RichProgress | None = None
        self._task = TaskID(0)
        self._owner = False
        if not live:
            return
        if _open and _open[-1].console.file is stream:
            # rich draws one live display at a time: a bar opened inside another (a drain
            # inside a bench scenario) is one more line of the display already drawn.
            self._bar = _open[-1]
        else:
            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(file=stream, force_terminal=True),
                # Plain prints to the bar's own stream (the bench's log lines) go above the
                # bar instead of through it.
                redirect_stdout=stream is sys.stdout, redirect_stderr=stream is sys.stderr,
            )
            self._owner = True
            self._bar.start()
            _open.append(self._bar)
        self._task = self._bar.add_task(description, total=total)

    @property
    def live(self) -> bool:
        """True while a bar is drawn (on a terminal, until closed)."""
        return self._bar is not None

    def __iter__(self) -> Iterator[T]:
        if self._items is None:
            raise TypeError("this progress counts a total; call advance() instead of iterating")
        try:
            for item in self._items:
                yield item
                self.advance()
        finally:
            self.close()

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more done."""
        if self._bar is not None:
            self._bar.advance(self._task, steps)

    def set_total(self, total: int | None) -> None:
        """The number of steps, once known (None: unknown)."""
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def echo(self, line: str) -> None:
        """Write one line of output: above the bar when live, else to the stream as it is."""
        if self._bar is not None:
            # Not parsed as rich markup: a line may hold brackets (payloads, reasons).
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Draw the final state and stop (idempotent); a bar opened inside another leaves the
        display. A quiet progress has nothing to do."""
        if self._bar is None:
            return
        if self._owner:
            self._bar.stop()
            _open.remove(self._bar)
        else:
            self._bar.remove_task(self._task)
        self._bar = None

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@overload
def progress(items: Iterable[T], description: str, *,
             stream: TextIO | None = None) -> Progress[T]: ...
@overload
def progress(items: int | None, description: str, *,
             stream: TextIO | None = None) -> Progress[Any]: ...
def progress(items: Iterable[T] | int | None, description: str, *,
             stream: TextIO | None = None) -> Progress[T] | Progress[Any]:
    """A progress display for ``items`` (iterate it) or for a count of steps (an int, or None
    while unknown; call ``advance``). Drawn on ``stream`` (default stderr) only when it is a
    terminal; otherwise a no-op whose ``echo`` writes plain lines."""
    out = sys.stderr if stream is None else stream
    live = is_terminal(out)
    if items is None or isinstance(items, int):
        return Progress(None, items, description, out, live=live)
    total = len(items) if isinstance(items, Sized) else None
    return Progress(items, total, description, out, live=live)
