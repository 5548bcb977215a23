"""Guest I/O reaches the driver: the request ring joined to the emulated framework.

A program in the guest reads, writes and issues IOCTLs on ``/dev/wdfioN``;
the host's :class:`~device_model.request_ring.RequestEndpoint` validates each
entry and hands a :class:`~device_model.request_ring.GuestIoRequest` to its
handler. :class:`GuestIoRuntime` is that handler: it owns one
:class:`~framework_emu.IoManager` over the guest's own RAM (the pools in the
config's pool window), loads the drivers into it, adds their devices to one
stack, and turns every request into the framework's call:

==========================  ==============================================================
request                     IoManager
==========================  ==============================================================
CREATE                      ``open(name)`` (the file's status is the completion's)
CLEANUP / CLOSE             ``cleanup(file)`` / ``close(file)``
READ / WRITE                ``submit`` with ``UserPages`` (direct) or ``SystemBuffer``
DEVICE_CONTROL / INTERNAL   ``submit`` with the buffers of the IOCTL's transfer method
CANCEL (and a guest gone)   ``cancel(op)``
``IoOperation`` done        ``request.complete(status, information)``
==========================  ==============================================================

Threading: the endpoint calls its handler on the device thread, under the
device lock, and the handler must not block; IoManager is single-threaded.
So exactly one thread at a time *owns* the IoManager (the ``_busy`` flag,
taken and dropped under ``_cond``). A request (or cancel) that finds the
runtime idle -- nothing queued, no owner -- is run *inline*, on the device
thread, at once: no thread handoff, which was half of the framework's
latency. Otherwise it is queued, and the *runtime thread* takes the queue
in order (requests, cancels, calls from the test through
:meth:`GuestIoRuntime.call`, interrupts through :meth:`GuestIoRuntime.post`);
an inline run never overtakes a queued item, and the device thread never
waits for the runtime thread (it queues instead). Running inline holds the
device lock for as long as the drivers run: emulated waits do not block
(time jumps), and the drivers' hardware is another device core with its own
thread and lock, so nothing a driver does waits on this device's thread.
``inline=False`` queues everything (hardware whose work needed the request
ring's own device thread would). Completions are posted from whichever
thread owns the IoManager (``complete`` takes the device lock, re-entrantly
on the device thread). Emulated time follows the wall clock (``time_rate``
emulated ms per wall ms; 0 freezes it, :meth:`GuestIoRuntime.advance_time`
moves it): the runtime thread sleeps until the next timer is due, so
timer-driven drivers complete.

:meth:`GuestIoRuntime.close` hands the endpoint back, closes the files the
guest left open, removes the devices and unloads the drivers, and returns a
:class:`GuestIoReport`: requests the drivers never completed (where they were
presented; the guest gets STATUS_DEVICE_REMOVED for them so it can go on),
the drivers' leak reports, the verifier's findings, a bug check if one
stopped the emulated machine, and internal errors.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from device_model.abi import NTSTATUS, IoMajor, IoType
from device_model.request_ring import GuestIoRequest, RequestEndpoint, RequestStateError
from framework_emu import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                           KPROCESSOR_MODE, PAGE_SHIFT, PAGE_SIZE, BugCheck, Finding, IoManager, IoOperation,
                           LeakReport, OpenFile, PhysicalMemory, SystemBuffer, TICKS_PER_MS, UserPages)
from wdfhil.errors import WdfhilError

log = logging.getLogger(__name__)

U32 = 0xFFFFFFFF
STATUS_SUCCESS = NTSTATUS["STATUS_SUCCESS"]
STATUS_INVALID_PARAMETER = NTSTATUS["STATUS_INVALID_PARAMETER"]
STATUS_INVALID_HANDLE = NTSTATUS["STATUS_INVALID_HANDLE"]
STATUS_NO_SUCH_DEVICE = NTSTATUS["STATUS_NO_SUCH_DEVICE"]
STATUS_DEVICE_REMOVED = NTSTATUS["STATUS_DEVICE_REMOVED"]
DEFAULT_STACK = "wdfio0"
CALL_TIMEOUT_S = 120.0

_MAJORS = {
    IoMajor.READ: IRP_MJ_READ,
    IoMajor.WRITE: IRP_MJ_WRITE,
    IoMajor.DEVICE_CONTROL: IRP_MJ_DEVICE_CONTROL,
    IoMajor.INTERNAL_DEVICE_CONTROL: IRP_MJ_INTERNAL_DEVICE_CONTROL,
}


class GuestIoRuntimeError(WdfhilError):
    """The runtime could not start (a driver's DriverEntry or EvtDriverDeviceAdd failed) or a
    call into its thread failed or timed out."""


def no_driver(request: GuestIoRequest) -> None:
    """The endpoint's handler while no driver is attached: opening fails with
    STATUS_NO_SUCH_DEVICE (ENODEV), a file's CLEANUP/CLOSE succeed (nothing to undo)."""
    if request.major in (IoMajor.CLEANUP, IoMajor.CLOSE):
        request.complete(STATUS_SUCCESS, 0)
    else:
        request.complete(STATUS_NO_SUCH_DEVICE, 0)


@dataclass(frozen=True)
class NeverCompleted:
    """A guest request a driver still held when the runtime closed."""

    request_id: int
    file_id: int
    major: str
    presented_in: str       # the callback (and its file:line) that was given the request

    def __str__(self) -> str:
        return (f"{self.major} request {self.request_id:#x} (file {self.file_id:#x}) was never completed;"
                f" presented in {self.presented_in}")


@dataclass
class GuestIoReport:
    """What closing a :class:`GuestIoRuntime` found."""

    never_completed: list[NeverCompleted] = field(default_factory=list)
    leaks: list[LeakReport] = field(default_factory=list)          # only drivers that leaked
    findings: list[Finding] = field(default_factory=list)
    files_left_open: int = 0          # guest files still open at close (closed by the runtime)
    bugcheck: BugCheck | None = None
    errors: list[str] = field(default_factory=list)                 # runtime-internal tracebacks

    @property
    def clean(self) -> bool:
        return not (self.never_completed or self.leaks or self.findings or self.bugcheck or self.errors)

    def __str__(self) -> str:
        if self.clean:
            return "guest I/O runtime closed clean: every request completed, no leak, no finding"
        lines = [str(n) for n in self.never_completed]
        lines += [str(leak) for leak in self.leaks]
        lines += [str(f) for f in self.findings]
        if self.bugcheck is not None:
            lines.append(f"bug check: {self.bugcheck}")
        lines += [f"runtime error: {e}" for e in self.errors]
        return "\n".join(lines)


@dataclass
class _Pending:
    request: GuestIoRequest
    op: IoOperation


class GuestIoRuntime:
    """The request endpoint's handler, running ``drivers`` in an IoManager on their own thread.

    ``endpoint``: the device's RequestEndpoint (its handlers are swapped in by :meth:`start`
    and restored by :meth:`close`). ``memory``: guest RAM (``GuestRam``); ``pool_window``:
    ``(base, size)``, the config's ``pool.window``. ``drivers``: driver class instances,
    function driver first, then filters above it, all added to the stack ``stack``.
    ``open_name``: what CREATE opens (default: the stack's name; a symbolic link or an
    interface GUID work too). ``time_rate``: emulated ms per wall-clock ms (0: time moves
    only with :meth:`advance_time`). ``framework_options``: for every ``load_driver``.
    ``hardware``: the function driver's device hardware (a ``DeviceHardware``, e.g. a
    :class:`~orchestrator.busmaster_runtime.BusMasterHardware`'s), given to its ``add_device``;
    a device's interrupt reaches the runtime thread through :meth:`post`. ``inline``: run a
    request on the device thread when the runtime is idle (see the module docstring).
    """

    def __init__(self, endpoint: RequestEndpoint, memory: PhysicalMemory, pool_window: tuple[int, int],
                 drivers: Sequence[Any], *, stack: str = DEFAULT_STACK, open_name: str | None = None,
                 service_names: Sequence[str] | None = None, time_rate: float = 1.0,
                 framework_options: dict[str, Any] | None = None, hardware: Any = None,
                 inline: bool = True) -> None:
        if not drivers:
            raise ValueError("drivers: at least the function driver")
        self.endpoint = endpoint
        self.memory = memory
        self.pool_window = (int(pool_window[0]), int(pool_window[1]))
        self.drivers = list(drivers)
        self.service_names = list(service_names or [type(d).__name__ for d in self.drivers])
        self.stack = stack
        self.open_name = open_name or stack
        self.time_rate = float(time_rate)
        self.framework_options = dict(framework_options or {})
        self.hardware = hardware
        self.inline = bool(inline)
        self.iom: IoManager | None = None          # touch only as its owner (call())
        self.frameworks: list[Any] = []
        self.report: GuestIoReport | None = None
        self.bugcheck: BugCheck | None = None
        self.errors: list[str] = []
        self.served = 0                            # requests served (queued or inline)
        self.served_inline = 0                     # of which on the device thread
        self.cpu_seconds = 0.0                     # CPU spent on requests (the serving thread's)
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[tuple] = collections.deque()   # under _cond
        self._busy = False                         # under _cond: a thread owns the IoManager
        self._owner: int | None = None             # that thread's ident
        self._waiting_for: int | None = None       # under _cond: the timer due the runtime thread sleeps to
        self._files: dict[int, OpenFile] = {}      # guest file_id -> the IoManager's open file
        self._pending: dict[int, _Pending] = {}    # request_id -> the operation in the framework
        self._previous: tuple[Callable, Callable | None] | None = None
        self._thread: threading.Thread | None = None
        self._wall0 = 0.0
        self._ticks0 = 0

    # ---- life cycle (any thread but the runtime's) ------------------------------------------
    def start(self) -> "GuestIoRuntime":
        self._thread = threading.Thread(target=self._main, name=f"wdfhil-guest-io-{self.stack}", daemon=True)
        self._thread.start()
        try:
            self.call(self._load)
        except BaseException:
            self._stop_thread()
            raise
        self._previous = (self.endpoint.on_request, self.endpoint.on_cancel)
        self.endpoint.set_handler(self._on_request, self._on_cancel)
        return self

    def close(self) -> GuestIoReport:
        """Detach from the endpoint, end the run (see the module docstring); the report (also
        kept in ``self.report``). Idempotent."""
        if self.report is not None:
            return self.report
        if self._previous is not None:
            self.endpoint.set_handler(*self._previous)   # requests queued before still get served
            self._previous = None
        report = GuestIoReport()
        if self._thread is not None and self._thread.is_alive():
            try:
                report = self.call(self._shutdown)
            finally:
                self._stop_thread()
        report.errors = list(self.errors)
        self.report = report
        if not report.clean:
            log.warning("%s", report)
        return report

    def __enter__(self) -> "GuestIoRuntime":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """Run ``fn(*args)`` on the runtime thread (between requests); its result or exception.
        The way to look at a driver's state or the IoManager from a test."""
        if self._thread is None or not self._thread.is_alive():
            raise GuestIoRuntimeError("the guest I/O runtime is not running")
        if threading.get_ident() == self._owner:   # the owner (a driver's callback, a done callback)
            return fn(*args)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._enqueue(("call", fn, args, future))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise GuestIoRuntimeError(f"the runtime thread did not run {fn!r} within {timeout:.0f} s") from None

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the runtime thread without waiting (any thread, never blocks):
        how a device's interrupt reaches the framework. An exception is a runtime error in the
        report (a bug check stops the emulated machine)."""
        self._enqueue(("call", fn, args, None))

    def advance_time(self, milliseconds: float) -> None:
        """Move the emulated clock on (firing the timers that fall due)."""
        self.call(lambda: self.iom.advance_time(milliseconds))

    def findings(self) -> list[Finding]:
        """The verifier's findings so far, of every driver and of the I/O manager."""
        if self.report is not None:
            return list(self.report.findings)
        return self.call(self._findings)

    def in_flight(self) -> int:
        """Guest requests the framework has not completed yet."""
        return self.call(lambda: len(self._pending))

    # ---- the endpoint's callbacks (device thread, under the device lock: never block) --------
    def _on_request(self, request: GuestIoRequest) -> None:
        self._inline_or_enqueue(("request", request))

    def _on_cancel(self, request: GuestIoRequest) -> None:
        self._inline_or_enqueue(("cancel", request))

    def _inline_or_enqueue(self, item: tuple) -> None:
        with self._cond:
            inline = self.inline and not self._busy and not self._items
            if inline:
                self._busy, self._owner = True, threading.get_ident()
            else:
                self._items.append(item)
                self._cond.notify()
                return
        try:
            self._run(item, inline=True)
        finally:
            self._release(inline=True)

    def _enqueue(self, item: tuple) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def _release(self, inline: bool = False) -> None:
        """Give up the IoManager. After an inline run the runtime thread is woken only when it has
        something new to do (items queued meanwhile, a timer the run started or stopped): waking
        it for nothing cost a context switch and a GIL handoff per request."""
        with self._cond:
            wake = not inline or bool(self._items) or self._timer_due() != self._waiting_for
            self._busy, self._owner = False, None
            if wake:
                self._cond.notify()

    # ---- the runtime thread ---------------------------------------------------------------------
    def _main(self) -> None:
        while True:
            item = self._next_item()
            try:
                if item is not None and item[0] == "stop":
                    return
                self._run(item)
            finally:
                self._release()

    def _next_item(self) -> tuple | None:
        """Wait until an item is queued and nobody owns the IoManager (then own it and return
        the item), or until the next timer is due (own it, None)."""
        with self._cond:
            while True:
                if not self._busy:
                    if self._items:
                        self._busy, self._owner = True, threading.get_ident()
                        return self._items.popleft()
                    timeout = self._sleep_for()   # nobody owns the IoManager: reading it is safe
                    if timeout is not None and timeout <= 0:
                        self._busy, self._owner = True, threading.get_ident()
                        return None
                else:
                    timeout = None                # the owner notifies when it lets go:
                    self._waiting_for = -1        # a due no run leaves, so it does
                self._cond.wait(timeout)

    def _run(self, item: tuple | None, inline: bool = False) -> None:
        """One queued item, or a due timer (None), as the IoManager's owner: a bug check stops
        the emulated machine, any other failure is a runtime error."""
        try:
            self._follow_wall_clock()
            if item is None:
                return
            kind = item[0]
            if kind == "call":
                _, fn, args, future = item
                if future is None:             # post(): nobody waits, failures are reported
                    fn(*args)
                    return
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:   # handed to the caller
                    future.set_exception(exc)
            elif kind == "request":
                self.served += 1
                self.served_inline += inline
                started = time.thread_time()
                try:
                    self._serve(item[1])
                finally:
                    self.cpu_seconds += time.thread_time() - started
            elif kind == "cancel":
                self._cancel(item[1])
        except BugCheck as exc:
            self._crashed(exc)
        except Exception:
            self._error(traceback.format_exc())

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._enqueue(("stop",))
            self._thread.join(CALL_TIMEOUT_S)
            if self._thread.is_alive():
                log.error("the guest I/O runtime thread did not stop")

    def _timer_due(self) -> int | None:
        """The emulated time the runtime thread must wake at (None: none, or time does not
        follow the wall clock). Only as the IoManager's owner, or with nobody owning it."""
        iom = self.iom
        if iom is None or self.time_rate <= 0 or self.bugcheck is not None:
            return None
        return iom.next_timer_due()

    def _sleep_for(self) -> float | None:
        """Wall seconds until the next emulated timer is due (None: nothing is due); remembers
        that due time (``_waiting_for``) so an inline run wakes the thread only if it changed."""
        due = self._waiting_for = self._timer_due()
        if due is None:
            return None
        wall_due = self._wall0 + (due - self._ticks0) / TICKS_PER_MS / 1000.0 / self.time_rate
        return max(0.0, wall_due - time.monotonic())

    def _follow_wall_clock(self) -> None:
        iom = self.iom
        if iom is None or self.time_rate <= 0 or self.bugcheck is not None:
            return
        target = self._ticks0 + int((time.monotonic() - self._wall0) * 1000.0 * self.time_rate * TICKS_PER_MS)
        if target > iom.now:
            iom.advance_to(target)

    def _load(self) -> None:
        iom = IoManager(self.memory, pool_window=self.pool_window)
        for driver, name in zip(self.drivers, self.service_names):
            fx = iom.load_driver(driver, service_name=name, **self.framework_options)
            self.frameworks.append(fx)
        for index, fx in enumerate(self.frameworks):
            # the hardware is the function device's (the first of the stack)
            iom.add_device(fx, self.stack, hardware=self.hardware if index == 0 else None)
        self.iom = iom
        self._wall0, self._ticks0 = time.monotonic(), iom.now

    def _serve(self, request: GuestIoRequest) -> None:
        if self.bugcheck is not None:
            self._complete(request, STATUS_DEVICE_REMOVED, 0)
            return
        major = request.major
        if major == IoMajor.CREATE:
            self._create(request)
            return
        file = self._files.get(request.file_id)
        if file is None:     # opened while no driver was attached, or before a reset
            self._complete(request, STATUS_INVALID_HANDLE, 0)
            return
        try:
            if major == IoMajor.CLEANUP:
                self.iom.cleanup(file)
                self._complete(request, STATUS_SUCCESS, 0)
            elif major == IoMajor.CLOSE:
                del self._files[request.file_id]
                self.iom.close(file)
                self._complete(request, STATUS_SUCCESS, 0)
            else:
                self._submit(request, file)
        except BugCheck:
            if not request.completed:
                self._complete(request, STATUS_DEVICE_REMOVED, 0)
            raise
        except Exception:
            self._error(f"request {request.request_id:#x} ({major.name}):\n{traceback.format_exc()}")
            self._pending.pop(request.request_id, None)
            if not request.completed:
                self._complete(request, STATUS_INVALID_PARAMETER, 0)

    def _create(self, request: GuestIoRequest) -> None:
        file = self.iom.open(self.open_name)
        status = file.status & U32
        if not status & 0x80000000:
            self._files[request.file_id] = file
            # READ/WRITE buffers travel as the driver asked (WdfDeviceInitSetIoType); set
            # before the CREATE completes, so this file's first read already sees it.
            direct = self.iom.transfer_type(file, IRP_MJ_READ) == "direct"
            io_type = IoType.DIRECT if direct else IoType.BUFFERED
            if self.endpoint.io_type != io_type:
                self.endpoint.set_io_type(io_type)
        self._complete(request, status, 0)

    def _submit(self, request: GuestIoRequest, file: OpenFile) -> None:
        major = _MAJORS[request.major]
        code = request.ioctl_code
        method = self.iom.transfer_type(file, major, code)
        system = SystemBuffer(request.system_gpa, request.system_length) if request.system_length else None
        # UserPages.user_va is the address of the first *page* (the framework adds the offset);
        # the entry's user_address is that of the first byte (0: the guest did not say).
        user_va = request.user_address - request.page_offset if request.user_address else 0
        pages = (UserPages(tuple(request.pfns), request.page_offset, request.page_length, user_va)
                 if request.page_length else None)
        mode = (KPROCESSOR_MODE.KernelMode if major == IRP_MJ_INTERNAL_DEVICE_CONTROL
                else KPROCESSOR_MODE.UserMode)   # the guest module is an internal IOCTL's kernel-mode client
        if major in (IRP_MJ_READ, IRP_MJ_WRITE):
            length = request.output_length if major == IRP_MJ_READ else request.input_length
            op = self.iom.submit(file, major, length=length, byte_offset=request.file_offset,
                                 system_buffer=system if method != "direct" else None,
                                 user_pages=pages if method == "direct" else None, requestor_mode=mode)
        else:
            input_pages = None
            if method == "neither":
                input_pages = self._neither_input(request) if mode == KPROCESSOR_MODE.UserMode else None
                system = None
                if mode != KPROCESSOR_MODE.UserMode:
                    pages = None
            op = self.iom.submit(file, major, ioctl_code=code, input_length=request.input_length,
                                 output_length=request.output_length, system_buffer=system,
                                 user_pages=pages, input_pages=input_pages, requestor_mode=mode)
        if op.done:
            self._complete(request, op.status, op.information)
            return
        self._pending[request.request_id] = _Pending(request, op)
        op.add_done_callback(lambda done, request=request: self._operation_done(request, done))
        if request.cancel_requested or request.abandoned:   # the CANCEL came in meanwhile
            self.iom.cancel(op)

    @staticmethod
    def _neither_input(request: GuestIoRequest) -> UserPages | None:
        """A METHOD_NEITHER IOCTL's input as the caller's pages: the guest module's copy of it
        (copied back to the caller at completion) sits at the caller's offset in its page, so
        its frames stand for the caller's (docs/device-abi.md). None if there is no input, or
        the copy is not at that offset (then the input cannot be probed and locked)."""
        length, gpa, va = request.input_length, request.system_gpa, request.user_input
        if not length or not va or (gpa ^ va) & (PAGE_SIZE - 1):
            return None
        first, last = gpa >> PAGE_SHIFT, (gpa + length - 1) >> PAGE_SHIFT
        return UserPages(tuple(range(first, last + 1)), gpa & (PAGE_SIZE - 1), length, va & ~(PAGE_SIZE - 1))

    def _operation_done(self, request: GuestIoRequest, op: IoOperation) -> None:
        self._pending.pop(request.request_id, None)
        self._complete(request, op.status, op.information)

    def _cancel(self, request: GuestIoRequest) -> None:
        pending = self._pending.get(request.request_id)
        if pending is not None and self.bugcheck is None:
            self.iom.cancel(pending.op)

    def _complete(self, request: GuestIoRequest, status: int | None, information: int) -> None:
        try:
            request.complete(int(status or 0) & U32, int(information))
        except RequestStateError:
            self._error(f"request {request.request_id:#x} completed twice:\n{traceback.format_exc()}")

    def _crashed(self, exc: BugCheck) -> None:
        """The emulated machine stopped: every request in the framework ends with
        STATUS_DEVICE_REMOVED, later ones too; the bug check is in the report."""
        log.error("guest I/O runtime: bug check: %s", exc)
        if self.bugcheck is None:
            self.bugcheck = exc
        pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            if not p.request.completed:
                self._complete(p.request, STATUS_DEVICE_REMOVED, 0)

    def _error(self, text: str) -> None:
        log.error("guest I/O runtime: %s", text)
        self.errors.append(text)

    def _findings(self) -> list[Finding]:
        seen: dict[int, Finding] = {}
        for fx in self.frameworks:
            for finding in fx.findings:
                seen.setdefault(id(finding), finding)
        if self.iom is not None:
            for finding in self.iom.findings:
                seen.setdefault(id(finding), finding)
        return list(seen.values())

    def _shutdown(self) -> GuestIoReport:
        report = GuestIoReport(files_left_open=len(self._files))
        iom = self.iom
        if iom is None:
            return report
        if self.bugcheck is None:
            try:
                for file in list(self._files.values()):
                    iom.close(file)
                self._files.clear()
                where = {}
                for rid, p in self._pending.items():
                    holder = p.op.holder()
                    where[rid] = (holder.where_presented() if holder is not None
                                  else "no driver (the request was queued)")
                report.leaks = [leak for leak in iom.shutdown() if leak]
                for rid, p in list(self._pending.items()):
                    if not p.op.done:
                        report.never_completed.append(NeverCompleted(rid, p.request.file_id, p.request.major.name,
                                                                     where.get(rid, "unknown")))
            except BugCheck as exc:
                self._crashed(exc)
            except Exception:
                self._error(f"shutdown:\n{traceback.format_exc()}")
        # The guest is still waiting for these: let it go on (its pages are unpinned).
        pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            if not p.request.completed:
                self._complete(p.request, STATUS_DEVICE_REMOVED, 0)
        report.findings = self._findings()
        report.bugcheck = self.bugcheck
        return report
