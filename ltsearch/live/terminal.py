"""A block of lines kept redrawn at the bottom of a terminal while other output scrolls
above it (the live progress of ``ltsearch run`` and ``ltsearch status --watch``).

While a :class:`LiveBlock` is open, ``sys.stdout`` and ``sys.stderr`` go through it: a
whole line written by anyone (the per-trial lines, Ray's forwarded worker output, warnings)
clears the block, is printed, and the block is drawn again below it, so nothing is
overwritten. Lines are cut to the terminal's width: a wrapped line would make the cursor
arithmetic wrong. Not for output that is not a terminal: callers print plain lines there.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

CLEAR_UP = "\x1b[{n}F\x1b[J"  # cursor to the start of the line n up, clear to the end


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Through:
    """A text stream that writes whole lines above the block."""

    def __init__(self, block: LiveBlock, stream: TextIO) -> None:
        self._block, self._stream, self._partial = block, stream, ""

    def write(self, text: str) -> int:
        head, sep, tail = (self._partial + text).rpartition("\n")
        self._partial = tail
        if sep:
            self._block.above(self._stream, head + sep)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


class LiveBlock:
    """Redraws ``lines()`` every ``interval`` seconds (and after each line printed above it)
    until closed; closing draws it a last time and leaves it on the screen."""

    def __init__(self, lines: Callable[[], list[str]], *, interval: float = 1.0) -> None:
        self._lines, self._interval = lines, interval
        self._lock = threading.RLock()
        self._drawn = 0
        self._last: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-block", daemon=True)
        self._out = sys.stdout

    def __enter__(self) -> LiveBlock:
        self._out = sys.stdout
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Through(self, sys.stdout)  # type: ignore[assignment]
        sys.stderr = _Through(self, sys.stderr)  # type: ignore[assignment]
        self.refresh()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for through in (sys.stdout, sys.stderr):
                if isinstance(through, _Through) and through._partial:
                    through._stream.write(through._partial)
            sys.stdout, sys.stderr = self._saved
            if kind is None:
                self.refresh()
            self._drawn = 0  # the last drawing stays

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

    def refresh(self) -> None:
        """Compute the lines again and redraw them."""
        try:
            lines = self._lines()
        except Exception as exc:  # a display error never stops the study
            lines = [*self._last, f"  (progress display: {type(exc).__name__}: {exc})"][-8:]
        with self._lock:
            self._last = lines
            self._draw()

    def above(self, stream: TextIO, text: str) -> None:
        """Print ``text`` (whole lines) on ``stream`` above the block."""
        with self._lock:
            self._clear()
            self._out.flush()
            stream.write(text)
            stream.flush()
            self._draw()

    def _clear(self) -> None:
        if self._drawn:
            self._out.write(CLEAR_UP.format(n=self._drawn))
            self._drawn = 0

    def _draw(self) -> None:
        self._clear()
        self._out.write("".join(f"{line}\n" for line in self._last))
        self._out.flush()
        self._drawn = len(self._last)


__all__ = ["CLEAR_UP", "LiveBlock", "is_terminal"]
