"""QMP for synchronous callers: qemu.qmp's asyncio client on a private loop.

qemu.qmp is asyncio-first; its own synchronous wrapper (``legacy``) drives
the event loop of whichever thread calls it, which clashes with any other
asyncio user in the process and with calls from several threads. Here one
private event loop runs in a daemon thread per session, every call is
submitted to it with ``run_coroutine_threadsafe``, and callers (the VM, the
device model, tests) stay plain synchronous code. Events are collected by a
task on that loop into a list that callers can wait on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any, Callable, Coroutine, TypeVar

from qemu.qmp import ExecuteError, QMPClient

from wdfhil.errors import WdfhilError

log = logging.getLogger(__name__)
# qemu.qmp logs each failed connection (an interrupted boot, a QEMU that died)
# with a traceback at ERROR; QmpError already says what failed. Quiet unless
# the application set a level for it.
if logging.getLogger("qemu.qmp").level == logging.NOTSET:
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
T = TypeVar("T")
DEFAULT_TIMEOUT = 60.0


class QmpError(WdfhilError):
    """A QMP command failed or QEMU stopped answering; says which command."""

    def __init__(self, message: str, *, command: str | None = None,
                 arguments: dict[str, Any] | None = None, error_class: str | None = None) -> None:
        self.command = command
        self.arguments = arguments or {}
        self.error_class = error_class
        text = message
        if command is not None:
            text = f"QMP {command}{' ' + repr(self.arguments) if self.arguments else ''}: {message}"
        if error_class:
            text += f" ({error_class})"
        super().__init__(text)


class QmpSession:
    """One QMP connection to one QEMU, usable from any thread."""

    def __init__(self, name: str = "wdfhil") -> None:
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"wdfhil-qmp-{name}", daemon=True)
        self._thread.start()
        self._client: QMPClient = self._submit(self._make_client(), 10.0)
        self._events: list[dict[str, Any]] = []
        self._events_changed = threading.Condition()
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def _make_client(self) -> QMPClient:
        return QMPClient(self.name)

    def _submit(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:  # timeout, or Ctrl-C in the caller: the loop drops it too
            future.cancel()
            raise

    # -- connection ---------------------------------------------------------
    def connect(self, sock: socket.socket, timeout: float = 30.0) -> None:
        """Greet QEMU over ``sock`` (our end of a socket pair) and negotiate."""
        try:
            self._submit(self._client.connect(sock), timeout)
        except TimeoutError:
            raise QmpError(f"QEMU did not answer the QMP greeting within {timeout:g} s") from None
        except Exception as exc:
            raise QmpError(f"QMP connection failed: {exc}") from exc
        self._listener = self._submit(self._start_listener(), 10.0)

    async def _start_listener(self) -> "asyncio.Task[None]":
        return asyncio.ensure_future(self._collect_events())

    async def _collect_events(self) -> None:
        async for event in self._client.events:
            record = dict(event)
            with self._events_changed:
                self._events.append(record)
                self._events_changed.notify_all()

    # -- commands -----------------------------------------------------------
    def command(self, name: str, *, timeout: float = DEFAULT_TIMEOUT, **arguments: Any) -> Any:
        """Execute QMP command ``name`` with ``arguments`` as given; its return value.
        Names with dashes go through a dict: ``command("x", **{"max-bandwidth": n})``."""
        return self.execute(name, arguments, timeout=timeout)

    def execute(self, name: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Execute ``name`` with an ``arguments`` mapping; its return value."""
        if self._closed:
            raise QmpError("the QMP session is closed", command=name, arguments=arguments)
        try:
            return self._submit(self._client.execute(name, arguments or None), timeout)
        except ExecuteError as exc:
            raise QmpError(str(exc), command=name, arguments=arguments,
                           error_class=exc.error_class) from None
        except TimeoutError:
            raise QmpError(f"no answer within {timeout:g} s", command=name,
                           arguments=arguments) from None
        except Exception as exc:
            raise QmpError(f"{type(exc).__name__}: {exc}", command=name,
                           arguments=arguments) from exc

    def hmp(self, command_line: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run a human-monitor command (``info mtree``, ``xp /4x 0x1000``); its text."""
        result = self.execute("human-monitor-command", {"command-line": command_line},
                              timeout=timeout)
        return str(result)

    def pass_fd(self, fd: int, fdname: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Hand QEMU a file descriptor under ``fdname`` (SCM_RIGHTS + ``getfd``)."""
        async def send() -> None:
            self._client.send_fd_scm(fd)
            await self._client.execute("getfd", {"fdname": fdname})
        try:
            self._submit(send(), timeout)
        except ExecuteError as exc:
            raise QmpError(str(exc), command="getfd", arguments={"fdname": fdname},
                           error_class=exc.error_class) from None

    # -- events -------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        """All events received so far (oldest first)."""
        with self._events_changed:
            return list(self._events)

    def events_since(self, start: int) -> list[dict[str, Any]]:
        """The events at index >= ``start`` (a cheap poll for new ones)."""
        with self._events_changed:
            return self._events[start:]

    def wait_event(self, name: str, timeout: float, *,
                   match: Callable[[dict[str, Any]], bool] | None = None,
                   start: int = 0) -> dict[str, Any] | None:
        """The first event ``name`` at index >= ``start`` (see ``len(events())``)
        that satisfies ``match``; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            index = start
            while True:
                while index < len(self._events):
                    event = self._events[index]
                    index += 1
                    if event.get("event") == name and (match is None or match(event)):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._events_changed.wait(remaining)

    # -- end ----------------------------------------------------------------
    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):  # cancelled, or ended on EOF
                pass
        try:
            await self._client.disconnect()
        except Exception as exc:  # QEMU is usually gone already: EOF is expected
            log.debug("QMP disconnect: %s", exc)

    def close(self) -> None:
        """Disconnect and stop the private loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._submit(self._shutdown(), 10.0)
        except Exception as exc:
            log.debug("QMP shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self._loop.close()
