"""A stand-in ``qemu-system-x86_64`` whose guest KVM kills (run state ``internal-error``).

Run as QEMU by a VM (``qemu_binary=[python, this file]`` through a wrapper
script, see :func:`write_fake_qemu`). It finds the console and QMP sockets
in its argv (``-chardev socket,id=...,fd=N``) and behaves as QEMU 7.2 does
when KVM fails a guest: the console shows early boot text, the log says
``KVM internal error. Suberror: 1`` / ``emulation failure``, a ``STOP``
event goes out and ``query-status`` answers ``internal-error``; the process
stays alive until ``quit`` or a signal. When ``FAIL_WHEN`` is ``kvm`` and
the argv asks for TCG it execs the real QEMU with the same argv instead, so
an ``auto`` boot that falls back to TCG really boots.

Settings (environment): ``FAKE_QEMU_FAIL_WHEN`` = ``always`` | ``kvm``;
``FAKE_QEMU_TRIGGER``: a file; the guest runs until it exists (default: it
fails 0.3 s after QMP is up).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

REAL_QEMU = "qemu-system-x86_64"


def main(argv: list[str]) -> None:
    fail_when = os.environ.get("FAKE_QEMU_FAIL_WHEN", "always")
    accel = argv[argv.index("-accel") + 1] if "-accel" in argv else "tcg"
    if fail_when == "kvm" and accel != "kvm":
        os.execvp(REAL_QEMU, [REAL_QEMU, *argv[1:]])
    fds = {}
    for word in argv:
        if word.startswith("socket,id="):
            options = dict(part.split("=", 1) for part in word.split(",")[1:])
            fds[options["id"]] = int(options["fd"])
    console = socket.socket(fileno=fds["wdfhil-console"])
    qmp = socket.socket(fileno=fds["wdfhil-qmp"])
    console.sendall(b"Linux version 6.1.0 (fake)\r\nSMP: bringing up secondary CPUs\r\n")
    state = {"status": "running"}
    lock = threading.Lock()

    def send(message: dict) -> None:
        with lock:
            qmp.sendall(json.dumps(message).encode() + b"\r\n")

    def fail_later() -> None:
        trigger = os.environ.get("FAKE_QEMU_TRIGGER")
        if trigger:
            while not os.path.exists(trigger):
                time.sleep(0.05)
        else:
            time.sleep(0.3)
        sys.stderr.write("KVM internal error. Suberror: 1\nemulation failure\n"
                         "RAX=0000000000000000 RBX=ffff888003c3e000\n")
        sys.stderr.flush()
        state["status"] = "internal-error"
        now = time.time()
        send({"event": "STOP", "data": {},
              "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}})

    send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                  "capabilities": []}})
    started = False
    for request in _messages(qmp):
        name, ident = request.get("execute"), request.get("id")
        answer: object = {}
        if name == "query-status":
            answer = {"status": state["status"], "running": state["status"] == "running",
                      "singlestep": False}
        elif name == "human-monitor-command":
            answer = ("Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port   "
                      "Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]  14       "
                      "127.0.0.1 40123       10.0.2.15    22     0     0\r\n")
        send({"return": answer, **({"id": ident} if ident is not None else {})})
        if name == "quit":
            os._exit(0)
        if not started:
            started = True
            threading.Thread(target=fail_later, daemon=True).start()
    os._exit(0)


def _messages(sock: socket.socket):
    """JSON objects as they arrive (QMP clients need not end them with a newline)."""
    decoder, buffer = json.JSONDecoder(), ""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buffer += data.decode()
        while buffer.strip():
            try:
                message, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break
            buffer = buffer.lstrip()[end:]
            yield message


if __name__ == "__main__":
    main(sys.argv)
