"""Progress of long image work on the command line.

On a terminal the current step is one live line, rewritten in place; when
stdout is not a terminal (CI logs, pipes) each step is a plain line of its
own and no escape code is written. Notices (a stale lock) always stay on
screen as lines of their own.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TextIO

_CLEAR_LINE = "\r\x1b[K"


class StatusLine:
    """A progress callback for :func:`guest_images.build_image` (``progress=``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.live = bool(isatty()) and os.environ.get("TERM", "") != "dumb"
        self._showing = False

    def __call__(self, message: str) -> None:
        if not self.live:
            print(message, file=self.stream, flush=True)
            return
        width = shutil.get_terminal_size().columns
        text = message if len(message) < width else message[:max(width - 4, 1)] + "..."
        self.stream.write(_CLEAR_LINE + text)
        self.stream.flush()
        self._showing = True

    def notice(self, message: str) -> None:
        """A line that must stay (and be read), live line or not."""
        self.clear()
        print(message, file=self.stream, flush=True)

    def clear(self) -> None:
        """Take the live line away (before other output, and when done)."""
        if self._showing:
            self.stream.write(_CLEAR_LINE)
            self.stream.flush()
            self._showing = False
