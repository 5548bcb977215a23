"""The bus-master personality on in-process guest RAM: registers, a descriptor ring in
guest memory, data both ways, completions written back, interrupts, the address
width, faults, trace, reset, DMA remapping."""

from __future__ import annotations

import threading

import pytest

from device_model.abi import (
    DATA_SIZE, MAX_SEGMENTS, MAX_TRANSFER, CompletionStatus, Descriptor, ErrorReason, Opcode,
    Segment, pack_segment,
)
from device_model.busmaster import BusMasterDevice, TranslationFault
from device_model.busmaster_abi import (
    BM_CAPS_ADDRESS_BITS, BM_COMPLETION_OFFSET, BM_DESCRIPTOR_SIZE, BM_DONE, BM_ID, BM_VERSION, BmCaps,
    BmCompletion, BmControl, BmDescriptor, BmDescriptorFlag,
    BmInterrupt, BmOpcode, BmStatus, BusMasterReason, register_offset,
)
from device_model.descriptors import DescriptorValidator, RamWindows
from device_model.device import EchoDevice
from device_model.faults import FaultKind, FaultPlan, FaultRule, FaultTarget, STALE_DMA_POISON
from device_model.personality import RegisterAccessError
from device_model.trace import read_trace
from wdfhil.errors import ConfigError, DeviceProtocolError

from busmaster_helpers import Interrupts, RingDriver
from device_helpers import GIB, HIGH, LOW, holey_memory

RING = 0x10000
TABLE = 0x20000
BUF = 0x40000
U32 = (1 << 32) - 1


def make_device(tmp_path, *, trace=True, **kwargs) -> tuple[BusMasterDevice, Interrupts]:
    interrupts = Interrupts()
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    device = BusMasterDevice(run, on_interrupt=interrupts,
                             trace_path=tmp_path / "trace.jsonl" if trace else None, **kwargs)
    return device.start(), interrupts


@pytest.fixture
def memory():
    return holey_memory()


@pytest.fixture
def bm(tmp_path, memory):
    device, interrupts = make_device(tmp_path)
    device.attach_guest_ram(memory)
    yield device, interrupts
    assert device.errors == []
    device.close()


def to_device(request_id, gpa, n, offset=0):
    return BmDescriptor(BmOpcode.TO_DEVICE, request_id, n, gpa, offset)


def from_device(request_id, gpa, n, offset=0):
    return BmDescriptor(BmOpcode.FROM_DEVICE, request_id, n, gpa, offset)


# ---- registers --------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [32, 64])
def test_registers_after_reset_describe_the_device(tmp_path, bits):
    device, _ = make_device(tmp_path, address_bits=bits, segment_align=16, trace=False)
    with device:
        drv = RingDriver(device, holey_memory(), RING)
        assert drv.read("id") == BM_ID and drv.read("version") == BM_VERSION
        caps = drv.read("caps")
        assert caps & BM_CAPS_ADDRESS_BITS == bits
        assert caps & BmCaps.SEGMENT_TABLE and not caps & BmCaps.REMAPPING
        mask = device.register_read(register_offset("dma_mask_lo"), 8)
        assert mask == (1 << bits) - 1 == device.dma_mask
        assert (drv.read("max_transfer"), drv.read("max_segments"), drv.read("segment_align"),
                drv.read("data_size")) == (MAX_TRANSFER, MAX_SEGMENTS, 16, DATA_SIZE)
        assert drv.read("int_mask") == BmInterrupt.COMPLETION | BmInterrupt.ERROR
        for name in ("control", "status", "error", "ring_base_lo", "ring_base_hi", "ring_size",
                     "ring_head", "ring_tail", "int_status", "completed", "last_error"):
            assert drv.read(name) == 0, name


def test_register_accesses_the_device_does_not_decode_are_named(bm):
    device, _ = bm
    with pytest.raises(RegisterAccessError, match="read-only"):
        device.register_write(register_offset("ring_head"), 4, 1)
    with pytest.raises(RegisterAccessError, match="no register"):
        device.register_read(0x3C, 4)
    with pytest.raises(RegisterAccessError, match="32 bits"):
        device.register_read(register_offset("ring_size"), 2)
    with pytest.raises(RegisterAccessError, match="_lo offset"):
        device.register_read(register_offset("ring_size"), 8)
    with pytest.raises(RegisterAccessError, match="does not fit"):
        device.register_write(register_offset("ring_size"), 4, 1 << 32)
    with pytest.raises(RegisterAccessError, match="read-only") as info:
        device.register_write(register_offset("dma_mask_lo"), 8, 0)
    assert info.value.offset == register_offset("dma_mask_lo") and info.value.width == 8
    # A 64-bit register pair in one access, and as halves.
    device.register_write(register_offset("ring_base_lo"), 8, 0x1_2345_6780)
    assert device.register_read(register_offset("ring_base_hi"), 4) == 1
    assert device.register_read(register_offset("ring_base_lo"), 4) == 0x2345_6780


def test_the_echo_device_has_no_registers(tmp_path):
    with EchoDevice(None) as echo:
        with pytest.raises(RegisterAccessError, match="no registers"):
            echo.register_read(0, 4)


@pytest.mark.parametrize("bits", [10, 65, True, "32"])
def test_address_width_is_checked(tmp_path, bits):
    with pytest.raises(ConfigError, match="address_bits"):
        BusMasterDevice(None, address_bits=bits)


def test_a_doorbell_needs_a_running_device(tmp_path, memory):
    device = BusMasterDevice(None)
    try:
        drv = RingDriver(device, memory, RING)
        drv.write("ring_tail", 1)                        # not enabled: nothing to do yet
        with pytest.raises(DeviceProtocolError, match="start"):
            drv.start()                                  # ENABLE starts a pass
    finally:
        device.close()


def test_drain_from_the_device_thread_is_refused(bm, memory):
    device, _ = bm
    failures: list[str] = []

    def isr(pending: int) -> None:
        try:
            device.drain()
        except DeviceProtocolError as exc:
            failures.append(str(exc))
    device.set_interrupt_handler(isr)
    RingDriver(device, memory, RING).start().submit(to_device(1, BUF, 16))
    device.drain()
    assert failures and "itself" in failures[0]


# ---- data both ways ---------------------------------------------------------------------

def test_data_moves_both_ways_and_completions_are_written_back(bm, memory, tmp_path):
    device, interrupts = bm
    drv = RingDriver(device, memory, RING).start()
    memory.write(BUF, bytes(range(256)) * 16)                     # 4 KiB
    # A READ back through a segment table: two pieces, one of them above 4 GiB.
    table = pack_segment(Segment(HIGH[0] + 0x1000, 1000)) + pack_segment(Segment(0x30000, 3096))
    memory.write(TABLE, table)
    slots = drv.submit(
        to_device(1, BUF, 4096, offset=0x100),
        BmDescriptor(BmOpcode.FROM_DEVICE, 2, 4096, TABLE, 0x100,
                     flags=BmDescriptorFlag.SEGMENT_TABLE, nseg=2),
        BmDescriptor(BmOpcode.NOP, 3, 0, 0, nseg=0))
    assert device.read_data(0x100, 4096) == memory.read(BUF, 4096)
    assert memory.read(HIGH[0] + 0x1000, 1000) + memory.read(0x30000, 3096) == memory.read(BUF, 4096)
    for slot, n in zip(slots, (4096, 4096, 0)):
        done = drv.completion(slot)
        assert (done.done, done.status, done.reason, done.transferred) == (1, CompletionStatus.OK, 0, n)
    assert (drv.read("ring_head"), drv.read("completed")) == (3, 3)
    assert interrupts.wait(1)[0] == BmInterrupt.COMPLETION
    assert drv.read("int_status") == BmInterrupt.COMPLETION
    drv.write("int_status", BmInterrupt.COMPLETION)                # write 1 to clear
    assert drv.read("int_status") == 0
    # The ring wraps: the next doorbells reuse slot 0 after slot 7.
    for i in range(10):
        memory.write(BUF, bytes([i]) * 64)
        (slot,) = drv.submit(to_device(10 + i, BUF, 64, offset=0x8000 + 64 * i))
        assert drv.completion(slot).done == 1
        memory.write(drv.slot_gpa(slot) + 48, bytes(16))             # the driver recycles it
    assert device.read_data(0x8000 + 64 * 9, 64) == bytes([9]) * 64
    assert drv.read("ring_head") == 13 % 8
    device.close()
    records = list(read_trace(tmp_path / "trace.jsonl"))
    dma = [r for r in records if r["type"] == "dma"]
    assert [(r["request_id"], r["direction"]) for r in dma[:2]] == [(1, "to_device"), (2, "to_guest")]
    assert dma[1]["ranges"] == [[HIGH[0] + 0x1000, 1000], [0x30000, 3096]]
    completions = [r for r in records if r["type"] == "completion"]
    assert completions[0] == {**completions[0], "request_id": 1, "slot": 0, "gpa": RING + 48,
                              "status": "OK", "transferred": 4096}


def test_refused_descriptors_complete_with_the_reason_and_the_ring_goes_on(bm, memory, tmp_path):
    device, _ = bm
    drv = RingDriver(device, memory, RING).start()
    slots = drv.submit(
        to_device(1, 2 * GIB, 16),                                # the PCI hole
        BmDescriptor(7, 2, 16, BUF),                              # unknown opcode
        BmDescriptor(BmOpcode.TO_DEVICE, 3, 16, BUF, nseg=2),      # inline holds one segment
        BmDescriptor(BmOpcode.TO_DEVICE, 4, 16, BUF, reserved1=1),
        to_device(5, BUF, 16, offset=DATA_SIZE - 8),
        BmDescriptor(BmOpcode.TO_DEVICE, 6, 16, TABLE + 8, flags=BmDescriptorFlag.SEGMENT_TABLE),
        to_device(7, BUF, 16))
    reasons = [drv.completion(s).reason for s in slots]
    assert reasons == [ErrorReason.SEGMENT_NOT_IN_RAM, ErrorReason.BAD_OPCODE,
                       ErrorReason.BAD_SEGMENT_COUNT, ErrorReason.RESERVED_FIELD,
                       ErrorReason.DEVICE_RANGE, ErrorReason.INDIRECT_TABLE, ErrorReason.NONE]
    assert [drv.completion(s).status for s in slots] == [CompletionStatus.ERROR] * 6 + [CompletionStatus.OK]
    assert drv.read("last_error") == ErrorReason.INDIRECT_TABLE
    assert drv.read("status") == BmStatus.ENABLED
    device.close()
    refused = [(r["request_id"], r["field"]) for r in read_trace(tmp_path / "trace.jsonl")
               if r["type"] == "refused"]
    assert refused == [(1, "address"), (2, "opcode"), (3, "nseg"), (4, "reserved"),
                       (5, "device_offset"), (6, "address")]


# ---- the address width ------------------------------------------------------------------

def echo_reason(memory, dma_mask, sqe: bytes) -> ErrorReason:
    ram = RamWindows(memory)
    try:
        result = DescriptorValidator(ram, dma_mask=dma_mask).validate(sqe)
        return getattr(result, "reason", ErrorReason.NONE)
    finally:
        ram.release()


def test_a_32_bit_device_refuses_a_buffer_above_4_gib_as_the_echo_device_does(tmp_path, memory):
    device, _ = make_device(tmp_path, address_bits=32)
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, RING).start()
        table = pack_segment(Segment(BUF, 16)) + pack_segment(Segment(HIGH[0], 16))
        memory.write(TABLE, table)
        slots = drv.submit(
            from_device(1, HIGH[0], 16),
            BmDescriptor(BmOpcode.FROM_DEVICE, 2, 32, TABLE, flags=BmDescriptorFlag.SEGMENT_TABLE,
                         nseg=2),
            from_device(3, U32 - 15, 16))                            # ends at 4 GiB - 1: the hole
        assert [drv.completion(s).reason for s in slots] == [
            ErrorReason.SEGMENT_ABOVE_DMA_MASK, ErrorReason.SEGMENT_ABOVE_DMA_MASK,
            ErrorReason.SEGMENT_NOT_IN_RAM]
        assert echo_reason(memory, U32, Descriptor(Opcode.READ, 0, 1, 1, 0, 16).pack(
            [Segment(HIGH[0], 16)])) == ErrorReason.SEGMENT_ABOVE_DMA_MASK
        assert memory.read(HIGH[0], 16) == bytes(16)
        assert device.errors == []
    fields = [r["field"] for r in read_trace(tmp_path / "trace.jsonl") if r["type"] == "refused"]
    assert fields == ["address", "table[1].address", "address"]


def test_a_32_bit_device_refuses_a_ring_above_4_gib_and_halts(tmp_path, memory):
    device, interrupts = make_device(tmp_path, address_bits=32)
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, HIGH[0]).start()
        drv.submit(to_device(1, BUF, 16))
        assert drv.read("status") == BmStatus.ENABLED | BmStatus.HALTED
        assert drv.read("error") == ErrorReason.SEGMENT_ABOVE_DMA_MASK
        refusal = device.bus_master.last_refusal
        assert (refusal.field, refusal.value) == ("ring_base", HIGH[0])
        assert interrupts.wait(1)[-1] & BmInterrupt.ERROR
        assert drv.read("ring_head") == 0 and drv.completion(0).done == 0
        # Halted: doorbells do nothing until RESET.
        drv.ring()
        device.drain()
        assert drv.read("completed") == 0
        drv.write("control", BmControl.RESET)
        assert drv.read("status") == 0 and drv.read("error") == 0
        # The same ring on a 64-bit device works.
    device, _ = make_device(tmp_path, address_bits=64)
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, HIGH[0]).start()
        (slot,) = drv.submit(to_device(1, BUF, 16))
        assert drv.completion(slot).status == CompletionStatus.OK
        assert device.errors == []


@pytest.mark.parametrize("base, size, tail, reason, field", [
    (RING + 32, 8, 1, BusMasterReason.RING_CONFIG, "ring_base"),
    (RING, 6, 1, BusMasterReason.RING_CONFIG, "ring_size"),
    (RING, 0, 1, BusMasterReason.RING_CONFIG, "ring_size"),
    (RING, 8192, 1, BusMasterReason.RING_CONFIG, "ring_size"),
    (RING, 8, 8, ErrorReason.RING_INDEX, "ring_tail"),
    (LOW[1] - 64 * 4, 8, 1, ErrorReason.SEGMENT_NOT_IN_RAM, "ring_base"),
    (2 * GIB, 8, 1, ErrorReason.SEGMENT_NOT_IN_RAM, "ring_base"),
    ((1 << 64) - 64, 2, 1, ErrorReason.SEGMENT_NOT_IN_RAM, "ring_base"),
])
def test_ring_errors_halt_the_device_naming_the_register(bm, memory, base, size, tail, reason, field):
    device, interrupts = bm
    drv = RingDriver(device, memory, base, ring_size=size)
    drv.start()
    drv.write("ring_tail", tail)
    device.drain()
    assert drv.read("status") & BmStatus.HALTED
    assert drv.read("error") == reason
    assert device.bus_master.last_refusal.field == field
    assert interrupts.wait(1)[-1] == BmInterrupt.ERROR


def test_reprogramming_the_ring_while_enabled_halts(bm, memory):
    device, _ = bm
    drv = RingDriver(device, memory, RING).start()
    drv.write("ring_base_lo", RING + 0x1000)
    assert drv.read("error") == BusMasterReason.RING_CONFIG
    assert device.bus_master.last_refusal.field == "ring_base_lo"


def test_without_guest_ram_the_ring_halts_not_ready(tmp_path, memory):
    device, _ = make_device(tmp_path)
    with device:
        drv = RingDriver(device, memory, RING).start()
        drv.submit(to_device(1, BUF, 16))
        assert drv.read("error") == ErrorReason.DEVICE_NOT_READY


# ---- interrupts -------------------------------------------------------------------------

def test_masked_causes_are_delivered_when_unmasked(bm, memory):
    device, interrupts = bm
    drv = RingDriver(device, memory, RING).start(unmask=False)
    (slot,) = drv.submit(to_device(1, BUF, 16))
    assert drv.completion(slot).done == 1
    device.drain()
    assert interrupts.calls == [] and drv.read("int_status") == BmInterrupt.COMPLETION
    drv.write("int_mask", BmInterrupt.ERROR)                      # COMPLETION unmasked
    assert interrupts.wait(1) == [BmInterrupt.COMPLETION]


def test_the_interrupt_routine_may_use_registers(bm, memory):
    """on_interrupt runs without the device lock: an ISR that reads and acknowledges
    the status from its own thread does not deadlock the device."""
    device, _ = bm
    seen: list[int] = []
    acked = threading.Event()

    def isr(pending: int) -> None:
        def body() -> None:
            status = device.register_read(register_offset("int_status"), 4)
            device.register_write(register_offset("int_status"), 4, status)
            seen.append(status)
            acked.set()
        worker = threading.Thread(target=body)
        worker.start()
        worker.join(10)

    device.set_interrupt_handler(isr)
    drv = RingDriver(device, memory, RING).start()
    drv.submit(to_device(1, BUF, 16))
    assert acked.wait(10)
    assert seen == [BmInterrupt.COMPLETION] and drv.read("int_status") == 0


def test_a_driver_thread_and_an_isr_thread_keep_the_ring_full(bm, memory):
    """Register access from two threads while the device thread walks the ring: a
    producer that waits for free slots by reading ring_head, an ISR that
    acknowledges and consumes records. Every request completes exactly once."""
    device, _ = bm
    drv = RingDriver(device, memory, RING, ring_size=16)
    total = 300
    consumed: list[int] = []
    consumer_head = [0]
    lock = threading.Lock()
    finished = threading.Event()

    def isr(pending: int) -> None:
        device.register_write(register_offset("int_status"), 4, pending)
        with lock:
            while True:
                done = drv.completion(consumer_head[0])
                if not done.done:
                    break
                assert (done.status, done.transferred) == (CompletionStatus.OK, 64)
                consumed.append(consumer_head[0])
                memory.write(drv.slot_gpa(consumer_head[0]) + 48, bytes(16))
                consumer_head[0] = (consumer_head[0] + 1) % drv.ring_size
            if len(consumed) == total:
                finished.set()

    device.set_interrupt_handler(isr)
    drv.start()

    def produce() -> None:
        for i in range(total):
            while (drv.tail + 1) % drv.ring_size == drv.read("ring_head") or \
                    drv.completion(drv.tail).done:
                threading.Event().wait(0.0005)    # full, or the ISR has not consumed it yet
            memory.write(BUF + 64 * i, bytes([i & 0xFF]) * 64)
            drv.put(to_device(i, BUF + 64 * i, 64, offset=64 * i))
            drv.ring()

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(60)
    assert finished.wait(60), f"{len(consumed)} of {total} consumed"
    assert drv.read("completed") == total
    assert all(device.read_data(64 * i, 64) == bytes([i & 0xFF]) * 64 for i in range(total))


# ---- reset ----------------------------------------------------------------------------------

def test_reset_clears_the_state_and_drops_delayed_completions(tmp_path, memory):
    plan = FaultPlan([FaultRule(FaultKind.DELAY_COMPLETION, delay_us=200_000)])
    device, interrupts = make_device(tmp_path, fault_plan=plan)
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, RING).start()
        (slot,) = drv.submit(to_device(1, BUF, 16))
        assert drv.read("ring_head") == 1 and drv.completion(slot).done == 0
        drv.write("control", BmControl.RESET)
        for name in ("control", "status", "ring_base_lo", "ring_size", "ring_head", "ring_tail",
                     "int_status", "completed"):
            assert drv.read(name) == 0, name
        assert drv.read("int_mask") == BmInterrupt.COMPLETION | BmInterrupt.ERROR
        device.disarm_faults()
        # After the delay would have passed, the slot is still untouched.
        drv2 = RingDriver(device, memory, RING + 0x1000).start()
        (slot2,) = drv2.submit(to_device(2, BUF, 16))
        assert drv2.completion(slot2).done == 1
        threading.Event().wait(0.4)
        device.drain()
        assert drv.completion(slot).done == 0
        assert device.errors == []


# ---- faults and trace ----------------------------------------------------------------------

def test_faults_apply_to_bus_master_transfers(tmp_path, memory):
    plan = FaultPlan([
        FaultRule(FaultKind.SHORT_TRANSFER, request_ids=frozenset({1}), fraction=0.25),
        FaultRule(FaultKind.BIT_FLIP, request_ids=frozenset({2})),
        FaultRule(FaultKind.DROP_INTERRUPT, request_ids=frozenset({3})),
        FaultRule(FaultKind.DUPLICATE_COMPLETION, request_ids=frozenset({4})),
        FaultRule(FaultKind.DELAY_COMPLETION, request_ids=frozenset({5}), delay_us=1000),
        FaultRule(FaultKind.STALE_DMA, request_ids=frozenset({6}), delay_us=1000),
    ], seed=3)
    device, interrupts = make_device(tmp_path, fault_plan=plan)
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, RING, ring_size=16).start()
        memory.write(BUF, b"\x11" * 4096)
        short, flipped = drv.submit(to_device(1, BUF, 4096), to_device(2, BUF, 4096, 0x1000))
        assert (drv.completion(short).status, drv.completion(short).transferred) == (
            CompletionStatus.SHORT, 1024)
        assert device.read_data(0, 4096) == b"\x11" * 1024 + bytes(3072)
        assert drv.completion(flipped).status == CompletionStatus.OK
        different = [b for b in device.read_data(0x1000, 4096) if b != 0x11]
        assert len(different) == 1
        interrupts.wait(1)
        drv.write("int_status", BmInterrupt.COMPLETION)
        calls = len(interrupts.calls)
        (dropped,) = drv.submit(to_device(3, BUF, 16))
        device.drain()
        assert drv.completion(dropped).done == 1 and drv.read("int_status") == 0
        assert len(interrupts.calls) == calls
        before = drv.read("completed")
        drv.submit(to_device(4, BUF, 16))
        assert drv.read("completed") == before + 2
        (delayed,) = drv.submit(to_device(5, BUF, 16))
        assert drv.wait_done(delayed).status == CompletionStatus.OK
        (stale,) = drv.submit(from_device(6, 0x50000, 64, 0x2000))
        drv.wait_done(stale)
        deadline_bytes = bytes([STALE_DMA_POISON]) * 64
        for _ in range(1000):
            device.drain()
            if memory.read(0x50000, 64) == deadline_bytes:
                break
            threading.Event().wait(0.005)
        assert memory.read(0x50000, 64) == deadline_bytes
        kinds = [f.kind for f in device.fault_plan.injected]
        assert set(kinds) == set(FaultKind)
        assert device.errors == []
    records = list(read_trace(tmp_path / "trace.jsonl"))
    assert {r["kind"] for r in records if r["type"] == "fault"} == {k.value for k in FaultKind}
    assert [r["length"] for r in records if r["type"] == "dma" and r["request_id"] == 1] == [1024]


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit >> 3] ^= 1 << (bit & 7)
    return bytes(out)


@pytest.mark.parametrize("seed", [2, 5, 7], ids=["flags", "reserved0", "length"])
def test_a_bit_flipped_in_the_descriptor_fetch_acts_as_if_the_driver_had_written_it(tmp_path, memory, seed):
    """A descriptor rule (target=descriptor) flips one bit of the device's fetched copy: the
    device then does exactly what a fault-free device does with the flipped descriptor (the
    seeds flip a bit of flags, reserved0 and length: none of them is served as written)."""
    descriptor = to_device(7, BUF, 4096, 0x800)
    plan = FaultPlan([FaultRule(FaultKind.BIT_FLIP, request_ids=frozenset({7}), target="descriptor")], seed=seed)
    memory.write(BUF, bytes(range(256)) * 16)
    outcomes = []
    for name, faults, raw in (("faulted", plan, descriptor.pack()), ("clean", None, None)):
        if raw is None:
            (fault,) = plan.injected
            raw = flipped(descriptor.pack()[:BM_COMPLETION_OFFSET], fault.detail["bit"])
        folder = tmp_path / name
        folder.mkdir()
        device, _interrupts = make_device(folder, fault_plan=faults)
        with device:
            device.attach_guest_ram(memory)
            drv = RingDriver(device, memory, RING).start()
            memory.write(RING, bytes(BM_DESCRIPTOR_SIZE * 8))
            (slot,) = drv.submit(raw)
            outcomes.append((drv.wait_done(slot), device.read_data(0, 0x3000), drv.read("last_error")))
            assert device.errors == []
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] != BmCompletion(BM_DONE, CompletionStatus.OK, 0, 4096)
    (fault,) = plan.injected
    assert (fault.kind, fault.request_id, fault.detail["target"]) == (FaultKind.BIT_FLIP, 7, "descriptor")
    records = [r for r in read_trace(tmp_path / "faulted" / "trace.jsonl") if r["type"] == "fault"]
    assert [(r["kind"], r["target"]) for r in records] == [("bit_flip", "descriptor")]


def test_a_short_descriptor_fetch_reads_zeros_and_the_descriptor_is_refused(tmp_path, memory):
    plan = FaultPlan([FaultRule(FaultKind.SHORT_TRANSFER, request_ids=frozenset({7}), fraction=0.25,
                                target="descriptor")])
    device, _ = make_device(tmp_path, fault_plan=plan)
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, RING).start()
        memory.write(BUF, b"\x33" * 64)
        refused, served = drv.submit(to_device(7, BUF, 64), to_device(8, BUF, 64, 0x100))
        record = drv.wait_done(refused)          # 12 bytes fetched: length, address, offset read 0
        assert (record.status, record.transferred) == (CompletionStatus.ERROR, 0)
        assert device.read_data(0, 64) == bytes(64)
        assert drv.wait_done(served).status == CompletionStatus.OK     # the next one is clean
        assert device.read_data(0x100, 64) == b"\x33" * 64
        (fault,) = plan.injected
        assert fault.detail == {"target": "descriptor", "asked": BM_COMPLETION_OFFSET, "transferred": 12}


def test_completion_write_back_faults_flip_a_bit_of_the_record_or_cut_it_short(tmp_path, memory):
    plan = FaultPlan([FaultRule(FaultKind.BIT_FLIP, request_ids=frozenset({1}), target="completion"),
                      FaultRule(FaultKind.SHORT_TRANSFER, request_ids=frozenset({2}), fraction=0.5,
                                target="completion")], seed=5)
    device, interrupts = make_device(tmp_path, fault_plan=plan)
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, RING).start()
        memory.write(BUF, b"\x44" * 100)
        flip, short, clean = drv.submit(to_device(1, BUF, 100), to_device(2, BUF, 100, 0x200),
                                        to_device(3, BUF, 100, 0x400))
        interrupts.wait(1)
        assert drv.wait_done(clean) == BmCompletion(BM_DONE, CompletionStatus.OK, 0, 100)
        bit = plan.injected[0].detail["bit"]
        expected = flipped(BmCompletion(BM_DONE, CompletionStatus.OK, 0, 100).pack(), bit)
        assert memory.read(drv.slot_gpa(flip) + BM_COMPLETION_OFFSET, 16) == expected
        # half a record: done and status written, reason and transferred never were
        assert drv.completion(short) == BmCompletion(BM_DONE, CompletionStatus.OK, 0, 0)
        assert device.read_data(0x200, 100) == b"\x44" * 100      # the data itself moved
        assert [(f.kind, f.request_id, f.detail["target"]) for f in plan.injected] == [
            (FaultKind.BIT_FLIP, 1, "completion"), (FaultKind.SHORT_TRANSFER, 2, "completion")]


def test_descriptor_and_completion_rules_are_checked():
    with pytest.raises(ConfigError) as info:
        FaultRule(FaultKind.DROP_INTERRUPT, target="descriptor")
    assert info.value.field == "kind"
    with pytest.raises(ConfigError) as info:
        FaultPlan.from_config([{"kind": "bit_flip", "target": "ring"}])
    assert info.value.field == "faults[0].target"
    rule = FaultPlan.from_config([{"kind": "bit_flip", "target": "completion"}]).rules[0]
    assert rule.target.value == "completion"
    data_only = FaultPlan([FaultRule(FaultKind.BIT_FLIP)])
    assert data_only.corrupt(FaultTarget.DESCRIPTOR, 1, Opcode.WRITE, b"abc") == (b"abc", [])


# ---- DMA remapping ----------------------------------------------------------------------------

class IovaSpace:
    """A DMA adapter's IOVA table in miniature: 4 KiB IOVA pages -> guest-physical pages."""

    def __init__(self) -> None:
        self.pages: dict[int, int] = {}

    def map(self, iova: int, gpa: int, length: int) -> None:
        for i in range(0, length, 4096):
            self.pages[(iova + i) >> 12] = (gpa + i) >> 12

    def __call__(self, address: int, length: int) -> list[tuple[int, int]]:
        pieces: list[tuple[int, int]] = []
        at, end = address, address + length
        while at < end:
            frame = self.pages.get(at >> 12)
            if frame is None:
                raise TranslationFault(at, end - at)
            n = min(end, (at | 4095) + 1) - at
            physical = (frame << 12) | (at & 4095)
            if pieces and pieces[-1][0] + pieces[-1][1] == physical:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + n)
            else:
                pieces.append((physical, n))
            at += n
        return pieces


def test_remapping_translates_ring_tables_and_data(tmp_path, memory):
    """A 32-bit device behind remapping reaches RAM above 4 GiB through low IOVAs; an
    IOVA without a translation is a TRANSLATION_FAULT naming the field."""
    iova = IovaSpace()
    iova.map(0x1000_0000, HIGH[0], 0x1000)              # the ring: physical above 4 GiB
    iova.map(0x2000_0000, HIGH[0] + 0x3000, 0x1000)     # a data page, above 4 GiB
    iova.map(0x2000_1000, 0x60000, 0x1000)              # the next IOVA page: low RAM
    iova.map(0x3000_0000, TABLE, 0x1000)                # a segment table
    iova.map(0x4000_0000, 2 * GIB, 0x1000)              # maps into the PCI hole
    device, _ = make_device(tmp_path, address_bits=32, translate=iova)
    with device:
        device.attach_guest_ram(memory)
        assert device.register_read(register_offset("caps"), 4) & BmCaps.REMAPPING
        drv = RingDriver(device, memory, 0x1000_0000, ring_gpa=HIGH[0]).start()
        memory.write(HIGH[0] + 0x3800, b"A" * 0x800)
        memory.write(0x60000, b"B" * 0x800)
        memory.write(TABLE, pack_segment(Segment(0x2000_0800, 0x1000))
                     + pack_segment(Segment(0x5000_0000, 16)))
        slots = drv.submit(
            to_device(1, 0x2000_0800, 0x1000),                           # crosses IOVA pages
            from_device(2, 0x2000_1000, 0x800, offset=0),                  # back, low page
            to_device(3, 0x5000_0000, 16),                                # not mapped
            BmDescriptor(BmOpcode.TO_DEVICE, 4, 0x1000, 0x3000_0000, 0x2000,
                         flags=BmDescriptorFlag.SEGMENT_TABLE, nseg=1),
            BmDescriptor(BmOpcode.TO_DEVICE, 5, 0x1010, 0x3000_0000,
                         flags=BmDescriptorFlag.SEGMENT_TABLE, nseg=2),   # entry 1 not mapped
            to_device(6, 0x4000_0000, 16),                                # maps into the hole
            to_device(7, 1 << 32, 16))                                    # above the mask
        assert device.read_data(0, 0x1000) == b"A" * 0x800 + b"B" * 0x800
        assert memory.read(0x60000, 0x800) == b"A" * 0x800
        assert device.read_data(0x2000, 0x1000) == b"A" * 0x1000     # through the table
        got = [(drv.completion(s).status, drv.completion(s).reason) for s in slots]
        assert got == [(CompletionStatus.OK, 0), (CompletionStatus.OK, 0),
                       (CompletionStatus.ERROR, BusMasterReason.TRANSLATION_FAULT),
                       (CompletionStatus.OK, 0),
                       (CompletionStatus.ERROR, BusMasterReason.TRANSLATION_FAULT),
                       (CompletionStatus.ERROR, ErrorReason.SEGMENT_NOT_IN_RAM),
                       (CompletionStatus.ERROR, ErrorReason.SEGMENT_ABOVE_DMA_MASK)]
        # The ring itself unmapped: the device halts with a translation fault.
        iova.pages.pop(0x1000_0000 >> 12)
        drv.submit(to_device(8, 0x2000_0800, 16))
        assert drv.read("error") == BusMasterReason.TRANSLATION_FAULT
        assert device.bus_master.last_refusal.field == f"ring[{slots[-1] + 1}]"
        assert device.errors == []
    fields = [r["field"] for r in read_trace(tmp_path / "trace.jsonl") if r["type"] == "refused"]
    assert fields == ["address", "table[1].address", "address", "address", "ring[7]"]


def test_a_translation_that_does_not_add_up_is_a_device_error(tmp_path, memory):
    device, _ = make_device(tmp_path, translate=lambda a, n: [(a, n - 1)] if n > 64 else [(a, n)])
    with device:
        device.attach_guest_ram(memory)
        drv = RingDriver(device, memory, RING).start()
        (slot,) = drv.submit(to_device(1, BUF, 4096))
        assert (drv.completion(slot).status, drv.completion(slot).reason) == (
            CompletionStatus.ERROR, ErrorReason.INTERNAL)
        assert len(device.errors) == 1 and "add up" in device.errors[0]
