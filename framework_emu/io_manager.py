"""The I/O manager: the seam through which a guest's I/O reaches the drivers.

One :class:`IoManager` is one emulated kernel: its processor (IRQL and the
dispatcher of posted work, io_dispatch.py), its system-PTE space, its
device namespace, and the drivers loaded into it, each with its own
:class:`Framework` (its own driver globals, verifier and pool window, as
every KMDF driver has its own FxDriverGlobals).

The runtime calls, for each guest request::

    op = iom.submit(file, IRP_MJ_READ, length=n, user_pages=UserPages(pfns, offset, n))
    op.add_done_callback(post_completion_to_ring)   # or: status, information = op.result()

``submit`` builds the IRP over the guest's memory (a system buffer by
guest-physical address for buffered I/O, the caller's page frames for
direct I/O), hands it to the top of the device stack and runs the drivers
until nothing more can run; the operation completes when the driver that
ends up holding the request completes it (now or later: a timer, another
request, a cancel). See docs/writing-a-driver.md for the whole contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from wdfhil.physical_memory import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory

from .api.driver_api import DRIVER_OBJECT
from .callsite import CallSite, caller_site, driver_site, format_site
from .core import default_pool_window
from .device import Device, DeviceStack, FileObject, WDFDEVICE_INIT
from .driver import WDF_DRIVER_CONFIG
from .errors import ArgumentError, FrameworkStateError
from .handles import HANDLE_BASE
from .hw_resources import IoSpace
from .io_dispatch import TICKS_PER_MS, Dispatcher
from .io_request import (IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, STATUS_CANCELLED, STATUS_NO_SUCH_DEVICE,
                         STATUS_OBJECT_NAME_NOT_FOUND, CallbackOf, DeviceRequest, Irp, Presentation, SystemBuffer,
                         UserPages, describe_callback, transfer_method)
from .irql import PASSIVE_LEVEL, ProcessorIrql
from .ntstatus import NTSTATUS, status_name
from .objects import DESTROYED
from .request import (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL, IRP_MJ_READ, IRP_MJ_WRITE,
                      METHOD_BUFFERED, METHOD_OUT_DIRECT, KPROCESSOR_MODE, IoRequest)
from .system_ptes import SystemPteSpace
from .verifier import Finding, finding_for

DEFAULT_DRIVER_POOL = 8 << 20
DRIVER_HANDLE_RANGE_SHIFT = 32  # each driver's handles in their own 4 GiB range
_IO_MAJORS = (IRP_MJ_READ, IRP_MJ_WRITE, IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL)


class IoOperation:
    """A request the runtime submitted: pending until ``done``; then ``status`` and ``information``."""

    def __init__(self, major: int, file: "OpenFile | None", site: CallSite | None) -> None:
        self.major = major
        self.file = file
        self.submitted_at = site
        self.done = False
        self.status: int | None = None
        self.information = 0
        self.irp: Irp | None = None
        self._manager: "IoManager | None" = None
        self._callbacks: list[Callable[["IoOperation"], Any]] = []

    def add_done_callback(self, callback: Callable[["IoOperation"], Any]) -> None:
        """``callback(op)`` when the operation completes (at once if it already has)."""
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def _complete(self, status: int, information: int) -> None:
        self.done = True
        self.status = int(status)
        self.information = int(information)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def holder(self) -> DeviceRequest | None:
        """The WDFREQUEST holding the operation now (the lowest one), if any."""
        if self.irp is None or not self.irp.stack:
            return None
        return self.irp.stack[-1]

    def result(self) -> tuple[int, int]:
        """(status, information), running posted work and due timers first; an operation that
        nothing can complete any more raises FrameworkStateError saying who holds it."""
        if not self.done and self._manager is not None:
            try:
                self._manager.dispatcher.wait_until(lambda: self.done, None, "the operation")
            except FrameworkStateError:
                holder = self.holder()
                where = holder.format_presented() if holder is not None else "no request holds it"
                raise FrameworkStateError(f"{self.describe()} never completes: {where}") from None
        return self.status, self.information  # type: ignore[return-value]

    def describe(self) -> str:
        from .io_request import MAJOR_NAMES
        return f"{MAJOR_NAMES.get(self.major, hex(self.major))} submitted at {format_site(self.submitted_at)}"

    def __repr__(self) -> str:
        state = f"{status_name(self.status)} info={self.information}" if self.done else "pending"
        return f"<IoOperation {self.describe()}: {state}>"


@dataclass
class OpenFile:
    """One open of a device stack (the guest's file descriptor on /dev/wdfioN)."""

    name: str
    stack: DeviceStack
    status: int = 0
    file_objects: dict[Device, FileObject] = field(default_factory=dict)
    closed: bool = False
    cleaned_up: bool = False


@dataclass
class RemovalReport:
    """What removing a device (or ending the run) found: requests the drivers never completed."""

    stack: str
    never_completed: list[str]

    def __bool__(self) -> bool:
        return bool(self.never_completed)


class IoManager:
    """One emulated kernel's I/O manager and PnP manager (see the module docstring)."""

    def __init__(self, memory: PhysicalMemory, *, pool_window: tuple[int, int] | None = None,
                 driver_pool_size: int = DEFAULT_DRIVER_POOL) -> None:
        self.memory = memory
        self.irql = ProcessorIrql()
        self.system_ptes = SystemPteSpace(memory)
        self.dispatcher = Dispatcher(self.irql)
        self.stacks: dict[str, DeviceStack] = {}
        self.names: dict[str, DeviceStack] = {}
        self.drivers: list[Any] = []
        window = pool_window if pool_window is not None else default_pool_window(memory)
        self._next_pool = int(window[0])
        self._pool_end = int(window[0]) + int(window[1])
        self._driver_pool_size = driver_pool_size
        self.live_requests: dict[DeviceRequest, None] = {}
        self.findings: list[Finding] = []
        self.io_space = IoSpace()  # MmMapIoSpace mappings of every device's registers

    # -- drivers and devices -------------------------------------------------------------------

    def load_driver(self, driver: Any, *, service_name: str, pool_size: int | None = None,
                    **framework_options: Any) -> Any:
        """Load a driver class instance: make its Framework (in the next slice of the pool window),
        set ``driver.fx``, and call ``driver.DriverEntry(DriverObject, RegistryPath)`` at
        PASSIVE_LEVEL (without one: WdfDriverCreate with its EvtDriverDeviceAdd / EvtDriverUnload).
        Returns the Framework."""
        from .framework import Framework

        size = pool_size or self._driver_pool_size
        if self._next_pool + size > self._pool_end:
            raise ArgumentError(f"the pool window has no room for another {size >> 20} MiB driver pool",
                                field="pool_window", value=(self._next_pool, self._pool_end))
        fx = Framework(self.memory, service_name=service_name, create_driver=False,
                       pool_window=(self._next_pool, size), **framework_options)
        self._next_pool += size
        fx._handles.start_at(HANDLE_BASE + (len(self.drivers) << DRIVER_HANDLE_RANGE_SHIFT))
        self.attach(fx)
        driver.fx = fx
        fx.driver_instance = driver
        with self.dispatcher.at(PASSIVE_LEVEL):
            entry = getattr(driver, "DriverEntry", None)
            if entry is not None:
                status = entry(DRIVER_OBJECT, fx.registry_path)
            else:
                config = WDF_DRIVER_CONFIG(EvtDriverDeviceAdd=getattr(driver, "EvtDriverDeviceAdd", None),
                                           EvtDriverUnload=getattr(driver, "EvtDriverUnload", None))
                status = fx.WdfDriverCreate(DRIVER_OBJECT, fx.registry_path, None, config)[0]
        if int(status or 0) & 0x80000000:
            raise FrameworkStateError(f"DriverEntry of {service_name} failed: {status_name(status)}")
        self.drivers.append(fx)
        return fx

    def attach(self, fx: Any) -> None:
        """Make ``fx`` a driver of this kernel: one processor, one system-PTE space."""
        fx._irql = self.irql
        fx._system_ptes = self.system_ptes
        fx.io_manager = self

    def add_device(self, fx: Any, stack: str, *, hardware: Any = None) -> int:
        """Play the PnP manager: EvtDriverDeviceAdd with a WDFDEVICE_INIT for ``stack`` (a filter
        attaches above the devices already there), then start the device. Returns the WDFDEVICE.
        ``hardware`` (a hw_resources.DeviceHardware) is what the bus enumerated for a new stack:
        its resources, registers, interrupt line and DMA arrangement."""
        device_stack = self.stacks.get(stack)
        if device_stack is None:
            device_stack = self.stacks[stack] = DeviceStack(stack, hardware=hardware)
            self._add_name(stack, device_stack)
        elif hardware is not None:
            raise ArgumentError("hardware belongs to the stack's first (function) device", field="hardware",
                                value=stack)
        driver = fx._require_driver()
        add = driver.config.EvtDriverDeviceAdd
        if add is None:
            raise FrameworkStateError(f"driver {driver.name} has no EvtDriverDeviceAdd")
        init = WDFDEVICE_INIT(fx, device_stack)
        before = len(device_stack.devices)
        status = int(self.dispatcher.invoke(fx, add, (driver.handle, init), PASSIVE_LEVEL,
                                            f"EvtDriverDeviceAdd of driver {driver.name}") or 0)
        if status & 0x80000000 or len(device_stack.devices) == before:
            if len(device_stack.devices) > before:
                device_stack.devices.pop().remove()
            raise FrameworkStateError(f"EvtDriverDeviceAdd of {driver.name} for {stack!r} failed:"
                                      f" {status_name(status)}" + ("" if status else " (no WdfDeviceCreate)"))
        device = device_stack.top
        status = device.start()
        self.dispatcher.run()
        if status & 0x80000000:
            raise FrameworkStateError(f"{device.describe()} failed to start: {status_name(status)}")
        return device.handle

    def _add_name(self, name: str, stack: DeviceStack) -> None:
        self.names[name] = stack

    def remove_device(self, stack: str) -> RemovalReport:
        """The graceful removal of every device in the stack, top first; requests the drivers
        still hold afterwards are reported (a finding per request, naming where it was presented)."""
        device_stack = self.stacks.pop(stack, None)
        if device_stack is None:
            raise ArgumentError(f"no device stack named {stack!r}", field="stack", value=stack)
        for name in [n for n, s in self.names.items() if s is device_stack]:
            del self.names[name]
        for device in reversed(device_stack.devices):
            device.remove()
            self.dispatcher.run()
        held = [r for r in self.live_requests if r.device in device_stack.devices]
        report = RemovalReport(stack, [self._never_completed(r, "its device was removed") for r in held])
        for request in held:
            self._abandon(request)
        return report

    def _abandon(self, request: DeviceRequest) -> None:
        """A request its driver never completed, reported already: the framework object goes (so
        the unload's leak report does not list it again); its operation stays pending."""
        self.live_requests.pop(request, None)
        for va in [request.mapping_va] + [m.buffer for m in request.locked_memories]:
            if va:
                self.system_ptes.unmap(va)
        request.free_buffers()
        if request.state is not DESTROYED:
            request.refcount = 0
            with self.dispatcher.at(PASSIVE_LEVEL):
                request.destroy()

    def _never_completed(self, request: DeviceRequest, when: str) -> str:
        message = (f"{request.describe()} ({request.irp.describe()}) was never completed: {when} while the driver"
                   f" held it; presented in {request.where_presented()}")
        finding = finding_for("RequestNeverCompleted", "error", message, request.created_at, request)
        self.findings.append(finding)
        fx = request.fx
        if fx._verifier_on:
            fx._verifier.report(finding, fatal=False)
        return message

    def shutdown(self) -> list[Any]:
        """End the run: remove every stack, report requests never completed, unload every driver
        (their LeakReports are returned)."""
        for name in list(self.stacks):
            self.remove_device(name)
        for request in list(self.live_requests):
            self._never_completed(request, "the run ended")
            self._abandon(request)
        reports = []
        for fx in self.drivers:
            with self.dispatcher.at(PASSIVE_LEVEL):
                reports.append(fx.unload_driver())
        self.drivers.clear()
        return reports

    # -- files -----------------------------------------------------------------------------------

    def open(self, name: str, *, requestor_mode: int = KPROCESSOR_MODE.UserMode) -> OpenFile:
        """IRP_MJ_CREATE down the stack named ``name`` (a stack name, symbolic link or interface
        GUID): EvtDeviceFileCreate of each device that has one. ``.status`` says how it went."""
        stack = self.names.get(name)
        if stack is None:
            return OpenFile(name, DeviceStack(name), status=STATUS_OBJECT_NAME_NOT_FOUND, closed=True)
        file = OpenFile(name, stack)
        site = driver_site()
        for device in stack.devices:
            fx = device.fx
            obj = FileObject(fx, site, device, name)
            fx._commit_new(obj, device.init.file_attributes, device, site)
            file.file_objects[device] = obj
        op = IoOperation(IRP_MJ_CREATE, file, site)
        irp = Irp(IRP_MJ_CREATE, originator=op)
        irp.spec = ("none",)
        irp.template = IoRequest(IRP_MJ_CREATE, requestor_mode=int(requestor_mode))
        op.irp, op._manager = irp, self
        self._deliver(irp, stack.top)
        file.status, _ = op.result()
        if file.status & 0x80000000:
            self._drop_file_objects(file)
            file.closed = True
        return file

    def _drop_file_objects(self, file: OpenFile) -> None:
        for device, obj in file.file_objects.items():
            with self.dispatcher.at(PASSIVE_LEVEL):
                obj.delete(("<I/O manager: file closed>", 0))
        file.file_objects.clear()

    def _file_callback(self, file: OpenFile, name: str) -> None:
        for device in reversed(file.stack.devices):
            obj = file.file_objects.get(device)
            config = device.file_config
            callback = getattr(config, name) if config is not None else None
            if obj is not None and callback is not None and not device.removed:
                self.dispatcher.invoke(device.fx, callback, (obj.handle,), PASSIVE_LEVEL,
                                       describe_callback(name, callback, device.describe()),
                                       device.file_callback_lock())
        self.dispatcher.run()

    def cleanup(self, file: OpenFile) -> None:
        """IRP_MJ_CLEANUP (the last handle closed): EvtFileCleanup, top device first."""
        if file.cleaned_up or file.closed:
            return
        file.cleaned_up = True
        self._file_callback(file, "EvtFileCleanup")

    def close(self, file: OpenFile) -> None:
        """Cleanup if not done, then IRP_MJ_CLOSE: EvtFileClose, and the file objects go."""
        if file.closed:
            return
        self.cleanup(file)
        file.closed = True
        self._file_callback(file, "EvtFileClose")
        self._drop_file_objects(file)

    # -- I/O -------------------------------------------------------------------------------------

    def transfer_type(self, file: OpenFile, major: int, ioctl_code: int = 0) -> str:
        """How the guest must hand over the buffers of such a request: "buffered" (a system
        buffer), "direct" (the caller's pages; IOCTLs: the input in a system buffer) or "neither"."""
        return transfer_method(major, ioctl_code, file.stack.direct_io)

    def submit(self, file: OpenFile, major: int, *, length: int = 0, byte_offset: int = 0, ioctl_code: int = 0,
               input_length: int = 0, output_length: int = 0, system_buffer: SystemBuffer | None = None,
               user_pages: UserPages | None = None, input_pages: UserPages | None = None,
               requestor_mode: int = KPROCESSOR_MODE.UserMode) -> IoOperation:
        """Submit one request (see the module docstring); returns its pending IoOperation.

        Reads and writes give ``length``; IOCTLs ``input_length``/``output_length``. Buffers by
        transfer type (:meth:`transfer_type`): buffered reads/writes a ``system_buffer`` of at
        least ``length`` bytes; direct reads/writes ``user_pages`` of ``length`` bytes;
        METHOD_BUFFERED IOCTLs one ``system_buffer`` of max(input, output) bytes holding the input;
        METHOD_IN/OUT_DIRECT the input in ``system_buffer`` and the output as ``user_pages``;
        METHOD_NEITHER no system buffer: the caller's input (``input_pages``) and output
        (``user_pages``) pages with their user addresses, both optional (without them the driver
        sees NULL pointers), which only EvtIoInCallerContext can reach (neither_api.py)."""
        if not isinstance(file, OpenFile) or file.closed:
            raise ArgumentError("submit needs an open file (IoManager.open)", field="file", value=file)
        major = int(major)
        if major not in _IO_MAJORS:
            raise ArgumentError("major is IRP_MJ_READ, IRP_MJ_WRITE, IRP_MJ_DEVICE_CONTROL or"
                                " IRP_MJ_INTERNAL_DEVICE_CONTROL", field="major", value=major)
        if major == IRP_MJ_INTERNAL_DEVICE_CONTROL and requestor_mode != KPROCESSOR_MODE.KernelMode:
            raise ArgumentError("internal IOCTLs come from kernel mode only", field="requestor_mode",
                                value=requestor_mode)
        method = self.transfer_type(file, major, ioctl_code)
        ioctl = major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL)
        if major == IRP_MJ_READ:
            input_length, output_length = 0, length
        elif major == IRP_MJ_WRITE:
            input_length, output_length = length, 0
        self._check_buffers(major, method, ioctl_code, input_length, output_length, system_buffer, user_pages,
                            input_pages)
        site = caller_site()   # the submitter's frame: one probe, no walk through this one
        op = IoOperation(major, file, site)
        irp = Irp(major, originator=op)
        irp.template = IoRequest(major, input_length, output_length, ioctl_code if ioctl else 0,
                                 (ioctl_code & 3) if ioctl else METHOD_BUFFERED,
                                 method == "direct" and not ioctl, int(requestor_mode))
        irp.spec = ("guest", system_buffer, user_pages, input_pages)
        irp.byte_offset = byte_offset
        irp.file = file
        if system_buffer is not None:
            irp.guest_system_range = (system_buffer.gpa + file.stack.top.fx.kva_base, system_buffer.size)
            for fx in self.drivers:  # the guest reuses its kernel buffers: a new request owns this one now
                fx._verifier.release_range(*irp.guest_system_range)
        op.irp, op._manager = irp, self
        self._deliver(irp, file.stack.top, site=site)
        self._drain()
        return op

    def _drain(self) -> None:
        """Run what is posted, unless called from inside a callback (a done callback submitting
        the guest's next request): the outer drain runs it then, in order."""
        if self.dispatcher.depth == 0:
            self.dispatcher.advance_to(self.dispatcher.now)

    def _check_buffers(self, major: int, method: str, ioctl_code: int, input_length: int, output_length: int,
                       system_buffer: SystemBuffer | None, user_pages: UserPages | None,
                       input_pages: UserPages | None = None) -> None:
        # the checks are methods, not closures made on every call: this runs for every request
        need_system, need_pages, none_of = self._need_system, self._need_pages, self._none_of
        if major in (IRP_MJ_READ, IRP_MJ_WRITE):
            size = output_length if major == IRP_MJ_READ else input_length
            if method == "direct":
                need_pages(size, user_pages)
                none_of(method, system_buffer, "system_buffer")
            else:
                need_system(method, system_buffer, size)
                none_of(method, user_pages, "user_pages")
        elif method == "buffered":
            need_system(method, system_buffer, max(input_length, output_length))
            none_of(method, user_pages, "user_pages")
        elif method == "direct":
            need_system(method, system_buffer, input_length)
            need_pages(output_length, user_pages)
        else:
            none_of(method, system_buffer, "system_buffer")
            need_pages(output_length, user_pages, optional=True)
            need_pages(input_length, input_pages, "input_pages", optional=True)
        if method != "neither":
            none_of(method, input_pages, "input_pages")

    def _need_system(self, method: str, system_buffer: SystemBuffer | None, size: int) -> None:
        if size and system_buffer is None:
            raise ArgumentError(f"a {method} request of {size} bytes needs system_buffer", field="system_buffer",
                                value=None)
        if system_buffer is not None:
            if system_buffer.size < size:
                raise ArgumentError(f"system_buffer holds {system_buffer.size} bytes, the request {size}",
                                    field="system_buffer.size", value=system_buffer.size)
            if not self.memory.contains(system_buffer.gpa, system_buffer.size):
                raise ArgumentError("system_buffer is not guest RAM", field="system_buffer.gpa",
                                    value=system_buffer.gpa)

    def _need_pages(self, size: int, user_pages: UserPages | None, name: str = "user_pages",
                    optional: bool = False) -> None:
        if size and user_pages is None and not optional:
            raise ArgumentError(f"a direct request of {size} bytes needs {name}", field=name, value=None)
        if user_pages is not None:
            if user_pages.length != size:
                raise ArgumentError(f"{name} describes {user_pages.length} bytes, the request {size}",
                                    field=f"{name}.length", value=user_pages.length)
            if not 0 <= user_pages.offset < PAGE_SIZE:
                raise ArgumentError(f"{name}.offset is an offset into the first page",
                                    field=f"{name}.offset", value=user_pages.offset)
            pages = (user_pages.offset + size + PAGE_SIZE - 1) >> PAGE_SHIFT
            if len(user_pages.pfns) < pages:
                raise ArgumentError(f"{size} bytes at offset {user_pages.offset} span {pages} pages;"
                                    f" {name} lists {len(user_pages.pfns)} frames", field=f"{name}.pfns",
                                    value=len(user_pages.pfns))
            bad = self.system_ptes.first_not_ram(user_pages.pfns[:pages])
            if bad is not None:
                raise ArgumentError(f"frame 0x{bad:x} is not guest RAM", field=f"{name}.pfns", value=bad)

    @staticmethod
    def _none_of(method: str, what: Any, name: str) -> None:
        if what is not None:
            raise ArgumentError(f"a {method} request takes no {name}", field=name, value=what)

    def cancel(self, op: IoOperation) -> None:
        """IoCancelIrp: the request is cancelled wherever it is (queued: completed with
        STATUS_CANCELLED; held cancelable: EvtRequestCancel; held otherwise: the flag is set)."""
        irp = op.irp
        if irp is None or op.done:
            return
        irp.cancel = True
        holder = op.holder()
        if holder is not None and holder.queue is not None:
            holder.queue.cancel(holder)
        self._drain()

    def run(self) -> None:
        """Run posted work (deferred presentations, cancel notifications, DPCs) and the timers
        already due."""
        self.dispatcher.advance_to(self.dispatcher.now)

    def advance_time(self, milliseconds: float) -> None:
        """Move the emulated clock, firing the timers that fall due (in order)."""
        self.dispatcher.advance_to(self.dispatcher.now + int(milliseconds * TICKS_PER_MS))

    # -- the emulated clock, for a runtime that makes it follow the wall clock -------------------

    @property
    def now(self) -> int:
        """The emulated clock: 100-ns ticks (``TICKS_PER_MS`` a millisecond) since this kernel
        started, the unit of KeQueryInterruptTime and of the timers' due times."""
        return self.dispatcher.now

    def next_timer_due(self) -> int | None:
        """When (in ticks, see :attr:`now`) the next timer falls due; None when none is set. A
        runtime sleeps until then, then calls :meth:`advance_to` with it."""
        return self.dispatcher.next_due()

    def advance_to(self, ticks: int) -> None:
        """Move the emulated clock to ``ticks`` (never back), firing the timers that fall due on
        the way. In ticks, not milliseconds, so that a due time read from :meth:`next_timer_due`
        is reached exactly (no float rounding one tick short)."""
        ticks = int(ticks)
        if ticks < 0:
            raise ArgumentError("the clock starts at 0", field="ticks", value=ticks)
        self.dispatcher.advance_to(max(ticks, self.dispatcher.now))

    def outstanding(self) -> list[DeviceRequest]:
        return list(self.live_requests)

    # -- moving IRPs between devices -------------------------------------------------------------

    def _deliver(self, irp: Irp, device: Device, sender: Any = None, site: CallSite | None = None) -> None:
        """The IRP arrives at ``device`` (IoCallDriver): FxPkgIo picks a queue, or a filter with no
        queue for it passes it down, or it is completed STATUS_INVALID_DEVICE_REQUEST. ``site``:
        the caller's, when the caller found it already (else looked up here)."""
        if device is None:  # below the bottom device: the bus driver knows no such request
            self._irp_done(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, 0)
            return
        if device.removed:
            self._irp_done(irp, STATUS_NO_SUCH_DEVICE, 0)
            return
        major = irp.major
        queue = None
        in_caller = None
        if major in _IO_MAJORS:
            queue = device.dispatching.get(major) or device.default_queue
            in_caller = device.io_in_caller_context
            if (queue is not None and device.filter and queue is device.default_queue and in_caller is None
                    and not queue.handles(major)):
                queue = None  # FxPkgIo::Dispatch: a filter's default queue without a handler forwards
            if queue is None and in_caller is None:
                if device.filter:
                    self._deliver(irp, device.lower, sender, site)
                else:
                    self._irp_done(irp, NTSTATUS.STATUS_INVALID_DEVICE_REQUEST, 0)
                return
        elif major == IRP_MJ_CREATE:
            config = device.file_config
            if config is None or config.EvtDeviceFileCreate is None:
                if device.lower is not None:
                    self._deliver(irp, device.lower, sender, site)
                else:
                    self._irp_done(irp, NTSTATUS.STATUS_SUCCESS, 0)
                return
        request = self._make_request(irp, device, site)
        if request is None:
            self._irp_done(irp, NTSTATUS.STATUS_INSUFFICIENT_RESOURCES, 0)
            return
        request.sender = sender
        irp.stack.append(request)
        self.live_requests[request] = None
        if in_caller is not None:
            self._in_caller_context(request, device, queue, in_caller)
            return
        if queue is not None:
            queue.queue_request(request)
            return
        # IRP_MJ_CREATE with EvtDeviceFileCreate (FxPkgGeneral, PASSIVE_LEVEL)
        callback = device.file_config.EvtDeviceFileCreate
        file_object = request.file
        request.owner = "driver"
        request.presented_in = describe_callback("EvtDeviceFileCreate", callback, device.describe())
        request.create_passes_down = device.lower is not None
        self.dispatcher.invoke(device.fx, callback, (device.handle, request.handle,
                                                     file_object.handle if file_object else None),
                               PASSIVE_LEVEL, f"EvtDeviceFileCreate of {device.describe()}",
                               device.file_callback_lock())

    def _in_caller_context(self, request: DeviceRequest, device: Device, queue: Any, callback: Any) -> None:
        """FxPkgIo::DispatchToInCallerContextCallback: the driver gets the request in the caller's
        thread, at the caller's IRQL (PASSIVE_LEVEL for the guest's calls), under no lock, and
        owns it: it completes it or puts it back with WdfDeviceEnqueueRequest (to ``queue``)."""
        request.owner = "driver"
        request.in_caller_queue = queue
        request.in_caller_context = bool(device.fx._verifier_on)
        request.presented_in = Presentation("EvtIoInCallerContext", callback, device)
        request.presentations += 1
        request.in_caller_thread = True
        try:
            self.dispatcher.invoke(device.fx, callback, (device.handle, request.handle), self.irql.current,
                                   CallbackOf("EvtIoInCallerContext", device))
        finally:
            request.in_caller_thread = False

    def _make_request(self, irp: Irp, device: Device, site: CallSite | None = None) -> DeviceRequest | None:
        fx = device.fx
        template = getattr(irp, "template", None) or IoRequest(irp.major)
        io = IoRequest(template.major, template.input_length, template.output_length, template.ioctl_code,
                       template.method, template.direct, template.requestor_mode)
        if irp.major in (IRP_MJ_READ, IRP_MJ_WRITE):
            io.direct = device.stack.direct_io
        file = getattr(irp, "file", None)
        file_object = file.file_objects.get(device) if isinstance(file, OpenFile) else None
        site = site or driver_site()
        request = DeviceRequest(fx, site, io, irp, device, file_object)
        request.tag = fx._driver_tag
        request.byte_offset = getattr(irp, "byte_offset", 0)
        if not self._attach_buffers(request, irp, site):
            return None
        attributes = device.request_attributes
        if attributes is not None and attributes.ContextTypeInfo is not None:
            from .attributes import context_size
            from .memory import allocate_object_storage
            if not allocate_object_storage(fx, request, context_size(attributes), site):
                request.free_buffers()
                return None
        fx._commit(request, attributes, None, default_parent=False)
        io.handle = request.handle
        return request

    def _attach_buffers(self, request: DeviceRequest, irp: Irp, site: CallSite | None) -> bool:
        spec = irp.spec
        io = request.io
        device_writes = io.major == IRP_MJ_READ or (request.is_ioctl and io.method == METHOD_OUT_DIRECT)
        if spec[0] == "guest":
            return request.attach_guest_buffers(spec[1], spec[2], site, device_writes, spec[3])
        if spec[0] == "va":
            from .iotarget import attach_sent_buffers
            return attach_sent_buffers(request, spec, site, device_writes)
        return True

    def _request_completed(self, request: DeviceRequest, site: CallSite | None) -> None:
        """A device's WDFREQUEST completed: its queue may present the next; the IRP goes back up."""
        self.live_requests.pop(request, None)
        if request.queue is not None:
            request.queue.request_left(request)
        irp = request.irp
        if request in irp.stack:
            irp.stack.remove(request)
        if getattr(request, "forgotten", False):
            return
        status, information = request.io.status, request.io.information
        if irp.major == IRP_MJ_CREATE and getattr(request, "create_passes_down", False) and not status & 0x80000000:
            self._deliver(irp, request.device.lower)  # the filter's create goes on down (emulator's shortcut)
            return
        self._irp_done(irp, status, information, request)

    def _irp_done(self, irp: Irp, status: int, information: int, by: DeviceRequest | None = None) -> None:
        """The IRP comes back to the next holder above (a sender's completion routine) or to its
        originator (the guest's operation), whose buffers the verifier then quarantines."""
        if irp.stack:
            holder = irp.stack[-1]
            from .iotarget import sent_request_completed
            sent_request_completed(holder, status, information)
            return
        if irp.originator is not None:
            guest_range = getattr(irp, "guest_system_range", None)
            if guest_range is not None and by is not None:
                for fx in self.drivers:  # every driver may have been lent the buffer
                    if fx._verifier_on:
                        fx._verifier.quarantine(by, [guest_range], lambda _va: None)
            irp.originator._complete(status, information)
