"""Progress of long work (image builds, boots, scenario runs) on the command line.

On a terminal the current step is one live line, redrawn in place by rich's
``Live`` display (which also keeps a ``ticker`` such as an elapsed clock moving
while a boot is silent for seconds); when the stream is not a terminal (CI logs,
pipes) or ``TERM=dumb``, each step is a plain line of its own and no escape
code is written. Notices (a stale lock, a verdict) always stay on screen as
lines of their own.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text


class _Line:
    """The live line's renderable: the ticker's text, then the current step, cut to
    the terminal's width (a wrapped line could not be redrawn in place)."""

    def __init__(self, ticker: Callable[[], str] | None) -> None:
        self.ticker = ticker
        self.message = ""

    def __rich__(self) -> Text:
        prefix = self.ticker() if self.ticker else ""
        return Text(prefix + self.message, no_wrap=True, overflow="ellipsis")


class StatusLine:
    """A progress callback (``progress=`` of :func:`guest_images.build_image`, of a
    VM's start, of a scenario run): ``status(message)`` shows a step, ``notice``
    prints a line that stays, ``clear`` takes the live line away (call it when done:
    it also stops rich's refresh thread)."""

    def __init__(self, stream: TextIO | None = None, *,
                 ticker: Callable[[], str] | None = None) -> None:
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.live = bool(isatty()) and os.environ.get("TERM", "") != "dumb"
        self._line = _Line(ticker)
        self._display: Live | None = None
        self._console = (Console(file=self.stream, force_terminal=True, highlight=False)
                         if self.live else None)

    def __call__(self, message: str) -> None:
        self._line.message = message
        if not self.live:
            print(self._line.__rich__().plain, file=self.stream, flush=True)
            return
        if self._display is None:
            self._display = Live(self._line, console=self._console, transient=True,
                                 auto_refresh=True, refresh_per_second=4)
            self._display.start()
        else:
            self._display.refresh()

    def notice(self, message: str) -> None:
        """A line that must stay (and be read), live line or not."""
        if self._console is None:
            print(message, file=self.stream, flush=True)
        else:   # printed above the live line, which stays where it is
            self._console.print(Text(message), soft_wrap=True)

    def clear(self) -> None:
        """Take the live line away (when done, or before output of another kind)."""
        if self._display is not None:
            self._display.stop()
            self._display = None
