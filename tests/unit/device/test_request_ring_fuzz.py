"""Hostile request-ring entries against an independent reference, whole memory compared.

Each case is one request entry (honest for its major, hostile in a field, an
indirect PFN table aimed at RAM edges, or random bytes) posted to the real device
thread through the ivshmem protocol. The endpoint's handler scribbles over every
byte of an accepted request's writable buffers and reads its inputs. A reference
written apart from ``device_model/request_descriptors.py`` (the checks of
docs/device-abi.md, "Request validation order", fields sliced one by one) says
what the completion must be and which bytes the scribble may change; after every
case all of guest RAM is compared byte for byte with the reference's image.

Plus a hypothesis property on the validator alone: whatever the entry, a plan
never reaches outside guest RAM or above the address limit, and a refusal names
a field of the entry.

``WDFHIL_FUZZ_CASES`` / ``WDFHIL_FUZZ_SEED`` as for the DMA ring's fuzzing.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from device_model.abi import IoType, RequestEntry
from device_model.descriptors import RamWindows, Refusal
from device_model.device import EchoDevice
from device_model.ivshmem_client import IvshmemClient
from device_model.request_descriptors import RequestValidator
from device_model.request_ring import GuestIoRequest, RequestEndpoint
from wdfhil.physical_memory import InProcessMemory

from request_ring_helpers import RequestRingDriver

DEFAULT_CASES = 800
CASES = int(os.environ.get("WDFHIL_FUZZ_CASES", DEFAULT_CASES))
SEED = int(os.environ.get("WDFHIL_FUZZ_SEED", 20261206))

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
RANGES = [(0, 0xA0000), (0x100000, 0x200000), (4 * GIB, 4 * GIB + MIB)]
U64 = (1 << 64) - 1
FILE = 7

# ---- the reference (from docs/device-abi.md; no code shared with the device) ------------
CREATE, CLOSE, READ, WRITE, IOCTL, INTERNAL, CLEANUP, CANCEL = 0, 2, 3, 4, 14, 15, 18, 0x80
MAJORS = (CREATE, CLOSE, READ, WRITE, IOCTL, INTERNAL, CLEANUP, CANCEL)
MAX_SYSTEM, MAX_PAGES_BYTES = 4 * MIB, 64 * MIB
R = dict(NONE=0, BAD_OPCODE=1, BAD_FLAGS=2, BAD_SEGMENT_COUNT=3, LENGTH_MISMATCH=4,
         TRANSFER_TOO_LARGE=5, SEGMENT_NOT_IN_RAM=7, SEGMENT_ABOVE_DMA_MASK=8,
         INDIRECT_TABLE=9, SEGMENT_ALIGNMENT=12, RESERVED_FIELD=14, BAD_FILE=16,
         DUPLICATE_REQUEST=17, UNKNOWN_REQUEST=18)
NT_INVALID_PARAMETER, NT_INVALID_HANDLE = 0xC000000D, 0xC0000008


def u(raw: bytes, offset: int, size: int) -> int:
    return int.from_bytes(raw[offset:offset + size], "little")


class Reference:
    def __init__(self, ram: dict[int, bytearray], io_type: int, limit: int) -> None:
        self.ram, self.io_type, self.limit = ram, io_type, limit
        self.files = {FILE}

    def start_of(self, gpa: int, length: int) -> int | None:
        for start, end in RANGES:
            if start <= gpa and gpa + length <= end:
                return start
        return None

    def fits(self, gpa: int, length: int) -> str | None:
        """None if [gpa, gpa+length) is RAM under the limit, else the reason."""
        if gpa + length > 1 << 64 or self.start_of(gpa, length) is None:
            return "SEGMENT_NOT_IN_RAM"
        if gpa + length - 1 > self.limit:
            return "SEGMENT_ABOVE_DMA_MASK"
        return None

    def decide(self, raw: bytes):
        """(reason name, buffers) where buffers = (system (gpa, n) | None, [(gpa, n)] page runs)."""
        rid, fid, major, flags = u(raw, 0, 8), u(raw, 8, 8), u(raw, 16, 2), u(raw, 18, 2)
        code, inp, out, foff = u(raw, 20, 4), u(raw, 24, 4), u(raw, 28, 4), u(raw, 32, 8)
        target, sgpa, slen = u(raw, 40, 8), u(raw, 48, 8), u(raw, 56, 4)
        poff, plen, pcount, tgpa = u(raw, 60, 4), u(raw, 64, 4), u(raw, 68, 4), u(raw, 72, 8)
        uin, uout = u(raw, 80, 8), u(raw, 88, 8)
        reserved = [u(raw, 96 + 8 * i, 8) for i in range(4)]
        inline = [u(raw, 128 + 8 * i, 8) for i in range(16)]
        if major not in MAJORS:
            return "BAD_OPCODE", None
        if flags not in (0, 1):
            return "BAD_FLAGS", None
        if any(reserved):
            return "RESERVED_FIELD", None
        if major in (CREATE, CLOSE, CLEANUP, CANCEL):
            if flags:
                return "BAD_FLAGS", None
            if any((code, inp, out, foff, sgpa, slen, poff, plen, pcount, tgpa, uin, uout)):
                return "RESERVED_FIELD", None
            if any(inline):
                return "RESERVED_FIELD", None
            if major == CANCEL:
                return ("UNKNOWN_REQUEST", None) if target == 0 else ("CANCEL", None)
            if target:
                return "RESERVED_FIELD", None
            return self.state(rid, fid, major), (None, [])
        if target:
            return "RESERVED_FIELD", None
        method = None
        if major in (READ, WRITE):
            if code:
                return "RESERVED_FIELD", None
            if (major == READ and inp) or (major == WRITE and out):
                return "LENGTH_MISMATCH", None
            n = out if major == READ else inp
            want_sys, want_pages = (n, 0) if self.io_type == 0 else (0, n)
        else:
            method = code & 3
            want_sys, want_pages = (max(inp, out), 0) if method == 0 else (inp, out)
        if uin and method != 3:
            return "RESERVED_FIELD", None
        if slen != want_sys:
            return "LENGTH_MISMATCH", None
        if want_sys > MAX_SYSTEM:
            return "TRANSFER_TOO_LARGE", None
        if plen != want_pages:
            return "LENGTH_MISMATCH", None
        if want_pages > MAX_PAGES_BYTES:
            return "TRANSFER_TOO_LARGE", None
        system = None
        if want_sys == 0:
            if sgpa:
                return "RESERVED_FIELD", None
        else:
            bad = self.fits(sgpa, want_sys)
            if bad:
                return bad, None
            system = (sgpa, want_sys)
        runs: list[tuple[int, int]] = []
        if want_pages == 0:
            if flags:
                return "BAD_FLAGS", None
            if poff or pcount or tgpa or uout or any(inline):
                return "RESERVED_FIELD", None
        else:
            if poff >= 4096:
                return "SEGMENT_ALIGNMENT", None
            if uout and uout % 4096 != poff:
                return "SEGMENT_ALIGNMENT", None
            if pcount != -(-(poff + want_pages) // 4096):
                return "BAD_SEGMENT_COUNT", None
            if flags:
                if any(inline):
                    return "RESERVED_FIELD", None
                if tgpa % 8 or self.fits(tgpa, 8 * pcount):
                    return "INDIRECT_TABLE", None
                start = self.start_of(tgpa, 8 * pcount)
                table = bytes(self.ram[start][tgpa - start:tgpa - start + 8 * pcount])
                pfns = [u(table, 8 * i, 8) for i in range(pcount)]
            else:
                if pcount > 16:
                    return "BAD_SEGMENT_COUNT", None
                if tgpa:
                    return "RESERVED_FIELD", None
                if any(inline[pcount:]):
                    return "RESERVED_FIELD", None
                pfns = inline[:pcount]
            for pfn in pfns:
                if pfn >= 1 << 52:
                    return "SEGMENT_NOT_IN_RAM", None
                bad = self.fits(pfn * 4096, 4096)
                if bad:
                    return bad, None
            left, offset = want_pages, poff
            for pfn in pfns:
                n = min(4096 - offset, left)
                runs.append((pfn * 4096 + offset, n))
                left -= n
                offset = 0
        return self.state(rid, fid, major), (system, runs)

    def state(self, rid: int, fid: int, major: int) -> str:
        if rid == U64:
            return "DUPLICATE_REQUEST"
        if major == CREATE:
            if fid == 0 or fid in self.files:
                return "BAD_FILE"
            self.files.add(fid)
            return "NONE"
        if fid not in self.files:
            return "BAD_FILE"
        if major == CLOSE:
            self.files.discard(fid)
        return "NONE"

    def scribble(self, raw: bytes, buffers) -> int:
        """What the fuzz handler does, on the image; its information."""
        major, code = u(raw, 16, 2), u(raw, 20, 4)
        inp, out, rid = u(raw, 24, 4), u(raw, 28, 4), u(raw, 0, 8)
        system, runs = buffers
        byte = rid & 0xFF
        if major == READ:
            targets = [system] if system else runs
            total = out
        elif major in (IOCTL, INTERNAL):
            method = code & 3
            if method == 0:
                targets, total = ([system] if system else []), out
            elif method == 1:
                targets, total = [], 0
            else:
                targets, total = runs, out
        else:
            return inp if major == WRITE else 0
        left = total
        for gpa, n in targets:
            n = min(n, left)
            start = self.start_of(gpa, n)
            self.ram[start][gpa - start:gpa - start + n] = bytes([byte]) * n
            left -= n
        return total


class Scribbler:
    """The endpoint's handler in the fuzz: reads every input, fills every output."""

    def on_request(self, request: GuestIoRequest) -> None:
        byte = bytes([request.request_id & 0xFF])
        info = 0
        if request.major in (WRITE, IOCTL, INTERNAL):
            info = len(request.input_bytes()) if request.major == WRITE else 0
            if request.major != WRITE and request.method != 1:
                info = request.write_output(byte * request.output_length)
            elif request.major != WRITE and request.page_length:
                request.read_pages()
        elif request.major == READ:
            info = request.write_output(byte * request.output_length)
        request.complete(0, info)


# ---- the cases ---------------------------------------------------------------------------
EDGE_PAGES = sorted({p // 4096 for a, b in RANGES for p in (a, a - 4096, b, b - 4096) if p >= 0}
                    | {0xFFFFFFFFFFFFF, 1 << 52, (1 << 32) // 4096, (1 << 32) // 4096 - 1})


class CaseMaker:
    def __init__(self, rng: random.Random, io_type: int) -> None:
        self.rng, self.io_type = rng, io_type

    def chance(self, percent: float) -> bool:
        return self.rng.random() * 100 < percent

    def place(self, n: int) -> int:
        r = self.rng
        start, end = r.choice(RANGES)
        return r.randrange(start, max(start + 1, end - n + 1))

    def make(self) -> tuple[bytes, tuple[int, bytes] | None]:
        r = self.rng
        if self.chance(3):
            return bytes(r.randrange(256) for _ in range(256)), None
        major = r.choice([READ, READ, WRITE, WRITE, IOCTL, IOCTL, INTERNAL, CREATE, CREATE, CLOSE,
                          CLEANUP, CANCEL])
        rid = r.randrange(1, 1 << 64) if self.chance(98) else U64
        fid = FILE if self.chance(85) else r.choice([0, 8, r.randrange(1 << 64)])
        fields = dict(request_id=rid, file_id=fid, major=major)
        table = None
        if major == CANCEL:
            fields["target_id"] = r.randrange(1 << 64)
        elif major in (READ, WRITE, IOCTL, INTERNAL):
            code = 0
            if major in (IOCTL, INTERNAL):
                code = r.randrange(1 << 32) & ~3 | r.randrange(4)
                inp, out = r.choice([0, 1, r.randrange(1, 20 * KIB)]), r.choice([0, 1, r.randrange(1, 90 * KIB)])
                sys_n, page_n = (max(inp, out), 0) if code & 3 == 0 else (inp, out)
            else:
                n = r.choice([1, r.randrange(1, 8 * KIB), r.randrange(1, 90 * KIB)])
                inp, out = (0, n) if major == READ else (n, 0)
                sys_n, page_n = (n, 0) if self.io_type == 0 else (0, n)
            fields.update(ioctl_code=code, input_length=inp, output_length=out,
                          file_offset=r.randrange(1 << 20))
            if sys_n:
                fields.update(system_gpa=self.place(sys_n), system_length=sys_n)
            if page_n:
                offset = r.randrange(4096)
                count = -(-(offset + page_n) // 4096)
                pfns = [self.place(4096) // 4096 for _ in range(count)]
                if self.chance(25):
                    pfns[r.randrange(count)] = r.choice(EDGE_PAGES)
                fields.update(page_offset=offset, page_length=page_n, page_count=count,
                              user_address=(r.randrange(1 << 35) << 12) + offset
                              if self.chance(70) else 0)
                if count > 16 or self.chance(30):
                    tgpa = self.place(8 * count) & ~7
                    if self.chance(10):
                        tgpa = r.choice([RANGES[0][1] - 8, RANGES[2][1] - 4, tgpa + 4])
                    fields.update(flags=1, table_gpa=tgpa)
                    table = (tgpa, struct.pack(f"<{count}Q", *pfns))
                else:
                    fields["pfns"] = tuple(pfns)
            if code & 3 == 3 and self.chance(50):
                fields["user_input"] = r.randrange(1 << 47)
        raw = bytearray(RequestEntry(**fields).pack())
        if self.chance(25):   # one hostile field
            offset, size = r.choice([(16, 2), (18, 2), (20, 4), (24, 4), (28, 4), (32, 8), (40, 8),
                                     (48, 8), (56, 4), (60, 4), (64, 4), (68, 4), (72, 8), (80, 8),
                                     (96 + 8 * r.randrange(4), 8), (128 + 8 * r.randrange(16), 8)])
            value = r.choice([0, 1, 4095, 4096, r.randrange(1 << (8 * size)), (1 << (8 * size)) - 1])
            raw[offset:offset + size] = value.to_bytes(size, "little")
        return bytes(raw), table


@pytest.mark.parametrize("io_type,limit", [(1, U64), (0, U64), (1, (1 << 32) - 1), (0, (1 << 20) - 1)])
def test_hostile_entries_match_the_reference(tmp_path, io_type, limit):
    rng = random.Random(f"{SEED}-{io_type}-{limit}")
    memory = InProcessMemory(ranges=RANGES)
    image = {start: bytearray(end - start) for start, end in RANGES}
    for start, end in RANGES:
        noise = rng.randbytes(end - start)
        memory.write(start, noise)
        image[start][:] = noise
    reference = Reference(image, io_type, limit)
    maker = CaseMaker(rng, io_type)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    with EchoDevice(run_dir) as device:
        device.attach_guest_ram(memory)
        endpoint = RequestEndpoint(device, Scribbler().on_request, io_type=IoType(io_type),
                                   address_limit=limit)
        client = IvshmemClient.connect(device.socket_path)
        driver = RequestRingDriver(client)
        endpoint.wait_for(lambda: True)
        driver.request(RequestEntry(1, FILE, CREATE))
        try:
            for case in range(CASES):
                raw, table = maker.make()
                if table is not None:
                    gpa, data = table
                    start = reference.start_of(gpa, len(data))
                    if start is not None:
                        memory.write(gpa, data)
                        image[start][gpa - start:gpa - start + len(data)] = data
                where = f"seed {SEED} io_type {io_type} limit {limit:#x} case {case}"
                reason, buffers = reference.decide(raw)
                entries = endpoint.stats.entries
                driver.post_raw(raw)
                driver.ring()
                endpoint.wait_for(lambda: endpoint.stats.entries == entries + 1, 10, where)
                if reason in ("CANCEL", "UNKNOWN_REQUEST") or (
                        reason != "BAD_OPCODE" and u(raw, 16, 2) == CANCEL):
                    assert driver.take() == [], where
                else:
                    (c,) = driver.wait(1)
                    assert c.request_id == u(raw, 0, 8), where
                    assert c.reason == R[reason], (where, reason, c)
                    if reason == "NONE":
                        info = reference.scribble(raw, buffers)
                        assert (c.status, c.information) == (0, info), where
                    else:
                        want = NT_INVALID_HANDLE if reason == "BAD_FILE" else NT_INVALID_PARAMETER
                        assert c.status == want, where
                for start, end in RANGES:
                    if memory.read(start, end - start) != bytes(image[start]):
                        got = memory.read(start, end - start)
                        first = next(i for i in range(end - start) if got[i] != image[start][i])
                        pytest.fail(f"{where}: guest RAM differs from the reference at "
                                    f"{start + first:#x} ({reason})")
        finally:
            driver.close()
            client.close()
        assert device.errors == []
        assert endpoint.in_flight == []


# ---- the validator alone, under hypothesis --------------------------------------------------
FIELD_NAMES = {"major", "flags", "target_id", "ioctl_code", "input_length", "output_length",
               "file_offset", "system_gpa", "system_length", "page_offset", "page_length",
               "page_count", "table_gpa", "user_input", "user_address"}
_EDGES = st.sampled_from([0, 1, 7, 8, 0xFFF, 0x1000, 0x9F000, 0xA0000, 0x100000, 0x1FF000,
                          0x200000, 4 * GIB, 4 * GIB + MIB - 4096, 4 * GIB + MIB, U64 - 4095, U64])


def _u(bits: int):
    return st.one_of(st.integers(0, (1 << bits) - 1), _EDGES.map(lambda v: v & ((1 << bits) - 1)))


@settings(max_examples=400, deadline=None)
@given(major=st.sampled_from(MAJORS + (1, 0xFFFF)), flags=st.sampled_from([0, 0, 1, 2]),
       code=_u(32), inp=st.sampled_from([0, 1, 100, 5000, 5 * MIB]),
       out=st.sampled_from([0, 1, 100, 5000, 70000, 5 * MIB]), sgpa=_u(64),
       poff=st.sampled_from([0, 1, 4095, 4096]), pcount=st.integers(0, 40), tgpa=_u(64),
       pfns=st.lists(st.one_of(st.integers(0, 0x300), st.sampled_from(EDGE_PAGES)), max_size=16),
       table=st.lists(st.one_of(st.integers(0, 0x300), st.sampled_from(EDGE_PAGES)), max_size=40),
       io_type=st.sampled_from([0, 1]), limit=st.sampled_from([U64, (1 << 32) - 1, 0x17FFFF]))
def test_a_plan_never_escapes_ram_and_a_refusal_names_its_field(major, flags, code, inp, out, sgpa,
                                                                poff, pcount, tgpa, pfns, table,
                                                                io_type, limit):
    memory = InProcessMemory(ranges=RANGES)
    if table and tgpa % 8 == 0 and memory.contains(tgpa, 8 * len(table)):
        memory.write(tgpa, struct.pack(f"<{len(table)}Q", *table))
    ram = RamWindows(memory)
    try:
        validator = RequestValidator(ram, io_type=IoType(io_type), address_limit=limit)
        want = max(inp, out)
        raw = RequestEntry(5, FILE, major, flags=flags, ioctl_code=code, input_length=inp,
                           output_length=out, system_gpa=sgpa, system_length=want,
                           page_offset=poff, page_length=out, page_count=pcount, table_gpa=tgpa,
                           pfns=tuple(pfns)).pack()
        plan = validator.validate(raw)
        if isinstance(plan, Refusal):
            assert (plan.field in FIELD_NAMES or plan.field.startswith(("reserved[", "pfn[", "table["))), plan
            return
        if plan.system_length:
            assert memory.contains(plan.system_gpa, plan.system_length)
            assert plan.system_gpa + plan.system_length - 1 <= limit
        assert sum(run.length for run in plan.runs) == plan.page_length
        for run in plan.runs:
            assert memory.contains(run.pfn * 4096, 4096)
            assert (run.pfn + 1) * 4096 - 1 <= limit
            assert 0 <= run.offset and run.offset + run.length <= 4096
    finally:
        ram.release()

