"""Host CPU of one 4 KiB direct read through the framework, with no guest.

The framework's share of ``bench/io_path.py``'s ``framework overhead ratio``
is its host CPU per request: this runs the same path host-only so a change
can be measured without booting a guest. An IoManager over InProcessMemory
loads the echo sample (``samples/echo.py``, direct I/O, default options as
the guest I/O runtime loads it), one write fills the echo buffer, then
``--reads`` back-to-back 4 KiB reads into the same caller pages (as the
guest program does). Prints CPU microseconds per read (best of ``--rounds``,
``time.process_time``) and, as the reference, microseconds per 4 KiB
``bytes`` copy through a ``memoryview`` measured in the same run (it absorbs
how fast and how loaded the machine is).

Instruction counts are steadier than times on a shared host: run it under
callgrind with two read counts and take the difference, e.g.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python3 bench/io_cpu.py --reads 2000 --rounds 1
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python3 bench/io_cpu.py --reads 500 --rounds 1

(instructions per read = (I_2000 - I_500) / 1500; measured: docs/writing-a-driver.md).
Prints only; it never fails on timing.
"""

from __future__ import annotations

import argparse
import mmap
import time

from framework_emu import IRP_MJ_READ, NT_SUCCESS
from samples.echo import EchoDriver
from samples.guest import InProcessGuest
from wdfhil.guest_ram import GuestRam, RamLayout

SIZE = 4096
MEMORY_SIZE = 64 << 20
POOL_SIZE = 32 << 20
REFERENCE_COPIES = 20_000     # fixed, so that it cancels out of a callgrind difference


def reference_us(count: int) -> float:
    """CPU microseconds per 4 KiB copy through a memoryview slice (the machine's speed)."""
    source, target = bytes(SIZE), bytearray(2 * SIZE)
    view = memoryview(target)
    start = time.process_time()
    for _ in range(count):
        view[SIZE:2 * SIZE] = source
    return (time.process_time() - start) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    # the guest's RAM as the runtime sees it: GuestRam over a shared mapping (here anonymous)
    ram = GuestRam(mmap.mmap(-1, MEMORY_SIZE), RamLayout.single(MEMORY_SIZE))
    guest = InProcessGuest(MEMORY_SIZE, POOL_SIZE, memory=ram)
    fx = guest.iom.load_driver(EchoDriver(direct_io=True), service_name="echo")
    guest.iom.add_device(fx, "echo")
    file = guest.open("echo")
    done = guest.write_file(file, bytes(range(256)) * (SIZE // 256))
    assert done.done and NT_SUCCESS(done.status), done
    pages = guest.user_buffer(SIZE)
    submit, iom = guest.iom.submit, guest.iom

    def reads(count: int) -> None:
        for _ in range(count):
            op = submit(file, IRP_MJ_READ, length=SIZE, user_pages=pages)
            if not op.done or op.information != SIZE:
                raise RuntimeError(f"read not completed inline: {op}")

    best = float("inf")
    for _ in range(args.rounds):
        start = time.process_time()
        reads(args.reads)
        best = min(best, time.process_time() - start)
    per_read = best / args.reads * 1e6
    reference = min(reference_us(REFERENCE_COPIES) for _ in range(args.rounds))
    print(f"4 KiB direct read through the framework: {per_read:.1f} us CPU "
          f"(reference 4 KiB copy: {reference:.2f} us; ratio {per_read / reference:.0f})")
    iom.close(file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
