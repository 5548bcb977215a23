"""Build progress: a live line on a terminal, plain lines (no escape codes) in logs."""

from __future__ import annotations

import io
import re

from guest_images.progress import StatusLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_one_plain_line_per_step() -> None:
    out = io.StringIO()
    status = StatusLine(out)
    status("downloading linux-image-6.1.0-57-cloud-amd64 6.1.192-3 (25.5 MiB)")
    status.notice("lock debian12-cloud.lock is stale: ...")
    status("unpacking busybox-static")
    status.clear()
    assert out.getvalue() == ("downloading linux-image-6.1.0-57-cloud-amd64 6.1.192-3 "
                              "(25.5 MiB)\nlock debian12-cloud.lock is stale: ...\n"
                              "unpacking busybox-static\n")


def test_terminal_gets_a_live_line_and_notices_that_stay(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "40")
    out = Terminal()
    status = StatusLine(out)
    assert status.live
    status("compiling the guest agent")
    status("a step whose description is far longer than the terminal is wide")
    status.notice("lock x.lock is stale")
    status("writing the initramfs")
    status.clear()
    text = out.getvalue()
    assert "\x1b[" in text                       # drawn in place, with escape codes
    assert "lock x.lock is stale\n" in text      # the notice stays as a line
    assert "writing the initramfs" in text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert all(len(part) <= 40 for part in plain.replace("\n", "\r").split("\r"))
    assert "far longer than the terminal is wide" not in plain   # cut to the width


def test_ticker_leads_each_line_live_or_plain(monkeypatch) -> None:
    ticks = iter(range(100))
    out = io.StringIO()
    status = StatusLine(out, ticker=lambda: f"[{next(ticks)}] ")
    status("booting pc-256m")
    status.notice("PASS  echo-roundtrip")
    assert out.getvalue() == "[0] booting pc-256m\nPASS  echo-roundtrip\n"
    monkeypatch.setenv("TERM", "xterm")
    live_out = Terminal()
    live = StatusLine(live_out, ticker=lambda: "[1/2 done] ")
    live("booting q35-1g")
    live.clear()
    assert "[1/2 done] booting q35-1g" in live_out.getvalue()


def test_dumb_terminal_is_treated_as_a_log(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    out = Terminal()
    StatusLine(out)("step")
    assert out.getvalue() == "step\n"
