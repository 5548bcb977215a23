"""Progress of a scenario run on the command line.

On a terminal: one live line (boots, scenarios done / left, elapsed) under the
verdict lines; elsewhere (CI logs, pipes) plain lines, no escape codes. The
live line itself is :class:`guest_images.progress.StatusLine`, whose ticker keeps the
counts and the elapsed clock moving during a long boot.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from guest_images.progress import StatusLine
from orchestrator.scenario_result import ScenarioResult


class RunProgress:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.status = StatusLine(self.stream, ticker=lambda: f"[{self._counts()}] ")
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()

    def _clock(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def _counts(self) -> str:
        return (f"{self.done}/{self.total} done, {self.total - self.done} left"
                + (f", {self.failed} failed" if self.failed else "") + f", {self._clock()}")

    def event(self, text: str) -> None:
        """A boot or another long wait: on the live line, or a plain line."""
        self.status(text)

    def result(self, result: ScenarioResult) -> None:
        self.done += 1
        self.failed += not result.passed
        boot = f" (+ boot {result.boot_seconds:.1f} s)" if result.boot_seconds else ""
        self.status.notice(f"{result.verdict:<5} {result.scenario} on {result.guest} "
                           f"{result.seconds - (result.boot_seconds or 0):.2f} s{boot}")
        if not result.passed:
            self.status.notice(result.explain())
        if self.done < self.total and self.status.live:
            self.status("running")

    def close(self) -> None:
        self.status.clear()
