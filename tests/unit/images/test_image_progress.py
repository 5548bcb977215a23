"""Build progress: a live line on a terminal, plain lines (no escape codes) in logs."""

from __future__ import annotations

import io

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
    status("compiling the guest agent")
    status("a step whose description is far longer than the terminal is wide")
    status.notice("lock x.lock is stale")
    status("writing the initramfs")
    status.clear()
    text = out.getvalue()
    assert text.startswith("\r\x1b[Kcompiling the guest agent\r\x1b[K")
    assert "\r\x1b[Klock x.lock is stale\n" in text
    assert text.endswith("\r\x1b[Kwriting the initramfs\r\x1b[K")
    visible = text.replace("\x1b[K", "").replace("\n", "\r").split("\r")
    assert all(len(part) < 40 for part in visible)


def test_dumb_terminal_is_treated_as_a_log(monkeypatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    out = Terminal()
    StatusLine(out)("step")
    assert out.getvalue() == "step\n"
