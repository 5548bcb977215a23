"""A short, readable tour of the emulated framework on in-process memory.

``wdfhil demo`` runs :func:`main` until the VM parts take over. Each step
is a few WDF calls a driver would make, and what the emulator shows about
them: addresses and page frames, stale data from a lookaside list, an MDL,
a verifier finding with the driver's file:line and the object's history, a
bug check, poolmon and the leak report at unload.
"""

from __future__ import annotations

from framework_emu import (CTL_CODE, FILE_ANY_ACCESS, IRP_MJ_DEVICE_CONTROL, METHOD_BUFFERED, NTSTATUS, PAGE_SIZE,
                           BugCheck, Framework, InProcessMemory, PoolType, WDF_OBJECT_ATTRIBUTES)
from framework_emu.ntstatus import status_name

IOCTL_ECHO = CTL_CODE(0x22, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)


def _say(text: str = "") -> None:
    print(text)


def _step(title: str) -> None:
    _say()
    _say(f"== {title}")


def main() -> int:
    memory = InProcessMemory(size=64 << 20)
    fx = Framework(memory, service_name="WDFEcho", verifier_mode="record")
    _say("wdfhil framework emulator: WDF memory objects over guest-physical memory (in-process RAM here)")
    _say(f"driver WDFEcho, default pool tag {fx.default_pool_tag!r} (from the service name, 'WDF' skipped)")

    _step("WdfMemoryCreate: a page-aligned buffer with real page frames")
    status, parent = fx.WdfObjectCreate(None)
    attributes = WDF_OBJECT_ATTRIBUTES()
    attributes.ParentObject = parent
    status, memory_handle, va = fx.WdfMemoryCreate(attributes, PoolType.NonPagedPool, 0, 8192)
    gpa = fx.va_to_gpa(va)
    _say(f"{status_name(status)}: WDFMEMORY 0x{memory_handle:x}, buffer at 0x{va:x}"
         f" = guest-physical 0x{gpa:x}, frames {gpa >> 12:#x} and {(gpa >> 12) + 1:#x}")
    fx.WdfMemoryCopyFromBuffer(memory_handle, 0, b"hello, device", 13)
    out = bytearray(13)
    fx.WdfMemoryCopyToBuffer(memory_handle, 0, out, 13)
    _say(f"copied in and out: {bytes(out)!r}")
    status = fx.WdfMemoryCopyFromBuffer(memory_handle, 8190, b"abcd", 4)
    _say(f"4 bytes at offset 8190 of 8192: {status_name(status)}"
         " (the real framework's status; its documentation says STATUS_BUFFER_TOO_SMALL)")

    _step("A 4092-byte buffer crosses a page in production, not under the verifier")
    production = Framework(InProcessMemory(size=16 << 20), service_name="WDFEcho", verifier=False)
    for name, framework in (("verifier off", production), ("verifier on ", fx)):
        _status, _handle, small = framework.WdfMemoryCreate(attributes if framework is fx else None,
                                                           PoolType.NonPagedPool, 0, 4092)
        first, last = small >> 12, (small + 4091) >> 12
        _say(f"{name}: buffer at page offset 0x{small % PAGE_SIZE:03x},"
             f" {'crosses into the next page' if last != first else 'stays in one page'}")

    _step("Lookaside list of PAGE_SIZE buffers: the buffer freed last comes back, with its old contents"
          " (lists below PAGE_SIZE zero each block)")
    status, lookaside = fx.WdfLookasideListCreate(None, PAGE_SIZE, PoolType.NonPagedPool, attributes, b"Look")
    status, first_memory = fx.WdfMemoryCreateFromLookaside(lookaside)
    fx.WdfMemoryCopyFromBuffer(first_memory, 0, b"card=4111-1111", 14)
    fx.WdfObjectDelete(first_memory)
    status, second_memory = fx.WdfMemoryCreateFromLookaside(lookaside)
    buffer, _size = fx.WdfMemoryGetBuffer(second_memory)
    _say(f"new WDFMEMORY 0x{second_memory:x} at 0x{buffer:x} already holds {fx.read(buffer, 14)!r}")

    _step("An MDL for 9000 bytes at offset 100 of the 8 KiB buffer: three page frames")
    mdl = fx.IoAllocateMdl(va + 100, 9000)
    fx.MmBuildMdlForNonPagedPool(mdl)
    pfns = ", ".join(f"{pfn:#x}" for pfn in fx.MmGetMdlPfnArray(mdl))
    _say(f"{mdl!r}\nByteOffset {fx.MmGetMdlByteOffset(mdl):#x}, ByteCount {fx.MmGetMdlByteCount(mdl):#x},"
         f" PFNs [{pfns}]")
    fx.IoFreeMdl(mdl)

    _step("A request's buffer touched after the request completed")
    request = fx.present_request(IRP_MJ_DEVICE_CONTROL, input_data=b"ping", output_length=16,
                                 ioctl_code=IOCTL_ECHO)
    status, input_buffer, length = fx.WdfRequestRetrieveInputBuffer(request.handle, 4)
    status, output_memory = fx.WdfRequestRetrieveOutputMemory(request.handle)
    fx.WdfMemoryCopyFromBuffer(output_memory, 0, b"pong", 4)
    fx.WdfRequestCompleteWithInformation(request.handle, NTSTATUS.STATUS_SUCCESS, 4)
    _say(f"the caller got {status_name(request.status)} and {request.output_data!r}")
    stale = bytearray(4)
    fx.WdfMemoryCopyToBuffer(output_memory, 0, stale, 4)                  # the bug, once
    fx.WdfMemoryCreatePreallocated(None, input_buffer, length)            # and once more
    for finding in fx.findings:
        if finding.severity == "error":
            _say(str(finding))

    _step("A bug check: WdfMemoryAssignBuffer on memory that is not preallocated")
    strict = Framework(InProcessMemory(size=16 << 20), service_name="WDFEcho")
    _status, handle, buffer = strict.WdfMemoryCreate(None, PoolType.NonPagedPool, 0, 64)
    try:
        strict.WdfMemoryAssignBuffer(handle, buffer, 16)
    except BugCheck as bugcheck:
        _say(f"caught: {bugcheck}")

    _step("A stale handle is caught deterministically")
    strict.WdfObjectDelete(handle)
    try:
        strict.WdfMemoryGetBuffer(handle)
    except BugCheck as bugcheck:
        _say(f"caught: {bugcheck}")

    _step("poolmon, then unload with a leak")
    fx.WdfObjectDelete(parent)      # its children (the memory from the lookaside list) go with it
    fx.WdfObjectDelete(lookaside)
    fx.ExAllocatePoolWithTag(PoolType.NonPagedPoolNx, 256, b"Leak")
    _say(fx.pool.format_poolmon())
    report = fx.unload_driver()
    _say(str(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
