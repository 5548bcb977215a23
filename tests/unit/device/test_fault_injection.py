"""Each injected fault as the driver sees it, determinism by seed, and the config form."""

from __future__ import annotations

import contextlib
import time

import pytest

from device_model.abi import CompletionStatus, Descriptor, Feature, Opcode, Segment
from device_model.device import EchoDevice
from device_model.faults import STALE_DMA_POISON, FaultKind, FaultPlan, FaultRule
from device_model.host_driver import HostDriver
from device_model.ivshmem_client import IvshmemClient
from device_model.trace import read_trace
from wdfhil.errors import ConfigError

from device_helpers import holey_memory


@pytest.fixture
def rig(tmp_path):
    """make(rules) -> (device, driver, memory, plan): a device with those fault rules."""
    with contextlib.ExitStack() as stack:
        def make(*rules: FaultRule):
            plan = FaultPlan(rules, seed=7)
            memory = holey_memory()
            dev = stack.enter_context(EchoDevice(tmp_path, fault_plan=plan,
                                                 trace_path=tmp_path / "trace.jsonl"))
            client = stack.enter_context(IvshmemClient.connect(dev.socket_path))
            dev.attach_guest_ram(memory)
            drv = HostDriver(client)
            stack.callback(drv.close)
            stack.callback(lambda: dev.errors == [] or pytest.fail(f"device errors: {dev.errors}"))
            return dev, drv, memory, plan
        yield make


def nop(rid):
    return Descriptor(Opcode.NOP, 0, 0, rid, 0, 0)


def write(rid, gpa, n):
    return Descriptor(Opcode.WRITE, 0, 1, rid, 0, n), [Segment(gpa, n)]


def read(rid, gpa, n):
    return Descriptor(Opcode.READ, 0, 1, rid, 0, n), [Segment(gpa, n)]


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_delayed_completion_arrives_after_a_later_request(rig):
    dev, drv, _memory, plan = rig(FaultRule(FaultKind.DELAY_COMPLETION, request_ids=frozenset({1}),
                               delay_us=200_000))
    assert dev.header()["features"] & Feature.FAULT_INJECTION
    drv.submit(nop(1))
    drv.submit(nop(2))
    drv.ring()
    done = drv.wait_completions(2)
    assert [c.request_id for c in done] == [2, 1]
    assert [f.kind for f in plan.injected] == [FaultKind.DELAY_COMPLETION]


def test_dropped_interrupt_still_posts_the_completion(rig):
    dev, drv, _memory, plan = rig(FaultRule(FaultKind.DROP_INTERRUPT, request_ids=frozenset({1})))
    drv.submit(nop(1))
    drv.ring()
    wait_until(lambda: drv.header.get("cq_tail") == 1)    # posted, by index only
    assert [c.request_id for c in drv.take_completions()] == [1]
    assert drv.request(nop(2)).request_id == 2
    wait_until(lambda: dev.stats.interrupts >= 1)   # raised just after posting request 2
    assert dev.stats.interrupts == 1 and dev.stats.completions == 2
    assert [(f.kind, f.request_id) for f in plan.injected] == [(FaultKind.DROP_INTERRUPT, 1)]


def test_short_transfer(rig):
    dev, drv, memory, _plan = rig(FaultRule(FaultKind.SHORT_TRANSFER, fraction=0.25))
    memory.write(0x1000, b"\x77" * 4096)
    c = drv.request(*write(1, 0x1000, 4096))
    assert (c.status, c.transferred) == (CompletionStatus.SHORT, 1024)
    assert dev.read_data(0, 2048) == b"\x77" * 1024 + bytes(1024)


def test_bit_flip_corrupts_exactly_one_bit(rig):
    _dev, drv, memory, plan = rig(FaultRule(FaultKind.BIT_FLIP, opcodes=frozenset({Opcode.READ})))
    memory.write(0x1000, bytes(range(256)) * 16)
    assert drv.request(*write(1, 0x1000, 4096)).status == CompletionStatus.OK
    c = drv.request(*read(2, 0x4000, 4096))
    assert c.status == CompletionStatus.OK
    got = memory.read(0x4000, 4096)
    diff = [(i, a ^ b) for i, (a, b) in enumerate(zip(got, bytes(range(256)) * 16)) if a != b]
    (fault,) = plan.injected
    assert fault.request_id == 2
    bit = fault.detail["bit"]
    assert diff == [(bit // 8, 1 << (bit % 8))]


def test_stale_dma_writes_the_buffer_after_completion(rig, tmp_path):
    _dev, drv, memory, plan = rig(
        FaultRule(FaultKind.STALE_DMA, request_ids=frozenset({2}), delay_us=1000))
    memory.write(0x1000, b"\x11" * 512)
    drv.request(*write(1, 0x1000, 512))
    c = drv.request(*read(2, 0x2000, 512))
    assert c.status == CompletionStatus.OK
    wait_until(lambda: memory.read(0x2000, 512) == bytes([STALE_DMA_POISON]) * 512)
    assert memory.read(0x1FF0, 16) == bytes(16) and memory.read(0x2200, 16) == bytes(16)
    (fault,) = plan.injected
    assert fault.kind == FaultKind.STALE_DMA and fault.detail["ranges"] == [[0x2000, 512]]
    # In the trace the stale write comes after the request's completion.
    records = list(read_trace(tmp_path / "trace.jsonl"))
    order = [(r["type"], r.get("fault")) for r in records if r.get("request_id") == 2]
    assert order.index(("completion", None)) < order.index(("dma", "stale_dma"))


def test_duplicate_completion(rig):
    _dev, drv, _memory, _plan = rig(
        FaultRule(FaultKind.DUPLICATE_COMPLETION, request_ids=frozenset({5})))
    drv.submit(nop(5))
    drv.ring()
    first, second = drv.wait_completions(2)
    assert first.request_id == second.request_id == 5
    assert second.sequence == first.sequence + 1


def decisions(seed):
    plan = FaultPlan([FaultRule(FaultKind.BIT_FLIP, probability=0.3),
                      FaultRule(FaultKind.DELAY_COMPLETION, probability=0.5, max_count=10)],
                     seed=seed)
    out = []
    for rid in range(200):
        chosen = plan.decide(rid, Opcode.READ if rid % 2 else Opcode.WRITE)
        out.append((rid, sorted(k.value for k in chosen),
                    plan.random_below(4096) if FaultKind.BIT_FLIP in chosen else None))
    return out


def test_same_seed_same_faults():
    a, b, c = decisions(1), decisions(1), decisions(2)
    assert a == b and a != c
    assert sum(1 for _r, kinds, _b in a if "delay_completion" in kinds) == 10
    assert 20 < sum(1 for _r, kinds, _b in a if "bit_flip" in kinds) < 100


def test_data_faults_skip_nop_unless_asked():
    plan = FaultPlan([FaultRule(FaultKind.SHORT_TRANSFER), FaultRule(FaultKind.DUPLICATE_COMPLETION)])
    assert set(plan.decide(1, Opcode.NOP)) == {FaultKind.DUPLICATE_COMPLETION}


def test_from_config():
    plan = FaultPlan.from_config([
        {"kind": "bit_flip", "request_ids": [3, 4], "opcodes": ["read"]},
        {"kind": "delay_completion", "probability": 0.5, "delay_us": 50},
    ], seed=3)
    assert plan.rules[0] == FaultRule(FaultKind.BIT_FLIP, request_ids=frozenset({3, 4}),
                                      opcodes=frozenset({Opcode.READ}))
    assert plan.rules[1].delay_us == 50 and plan.seed == 3


@pytest.mark.parametrize("item,field", [
    ({"kind": "explode"}, "faults[0].kind"),
    ({"kind": "bit_flip", "when": 1}, "faults[0]"),
    ({"kind": "bit_flip", "probability": 2}, "faults[0].probability"),
    ({"kind": "short_transfer", "fraction": 1.5}, "faults[0].fraction"),
    ({"kind": "bit_flip", "opcodes": ["frobnicate"]}, "faults[0]"),
])
def test_from_config_errors_name_the_field(item, field):
    with pytest.raises(ConfigError) as info:
        FaultPlan.from_config([item])
    assert info.value.field == field


# ---- arming and disarming on a running device ----------------------------------------

def test_faults_armed_and_disarmed_on_a_running_device(tmp_path):
    memory = holey_memory()
    memory.write(0x1000, b"\x33" * 4096)
    with EchoDevice(tmp_path) as dev, IvshmemClient.connect(dev.socket_path) as client:
        dev.attach_guest_ram(memory)
        drv = HostDriver(client)
        try:
            assert not dev.header()["features"] & Feature.FAULT_INJECTION
            assert drv.request(*write(1, 0x1000, 4096)).status == CompletionStatus.OK
            dev.arm_faults(FaultPlan([FaultRule(FaultKind.SHORT_TRANSFER, fraction=0.5)], seed=1))
            assert dev.header()["features"] & Feature.FAULT_INJECTION
            c = drv.request(*write(2, 0x1000, 4096))
            assert (c.status, c.transferred) == (CompletionStatus.SHORT, 2048)
            armed = dev.disarm_faults()
            assert [(f.kind, f.request_id) for f in armed.injected] == [
                (FaultKind.SHORT_TRANSFER, 2)]
            assert not dev.header()["features"] & Feature.FAULT_INJECTION
            c = drv.request(*write(3, 0x1000, 4096))
            assert (c.status, c.transferred) == (CompletionStatus.OK, 4096)
        finally:
            drv.close()
        assert dev.errors == []


def test_arming_races_the_device_thread_safely(tmp_path):
    """Another thread arms and disarms while requests flow: every request completes,
    each with the effect of either plan (never half of one), and the device has no
    internal error."""
    import threading

    memory = holey_memory()
    memory.write(0x1000, b"\x44" * 4096)
    with EchoDevice(tmp_path) as dev, IvshmemClient.connect(dev.socket_path) as client:
        dev.attach_guest_ram(memory)
        drv = HostDriver(client)
        stop = threading.Event()

        def flip_flop() -> None:
            while not stop.is_set():
                dev.arm_faults(FaultPlan([FaultRule(FaultKind.SHORT_TRANSFER, fraction=0.25),
                                          FaultRule(FaultKind.DUPLICATE_COMPLETION)]))
                dev.disarm_faults()

        thread = threading.Thread(target=flip_flop)
        thread.start()
        try:
            for rid in range(300):
                drv.submit(*write(rid, 0x1000, 4096))
                drv.ring()
                got = drv.wait_completions(1)
                first = got[0]
                assert first.request_id == rid
                if first.status == CompletionStatus.SHORT:
                    assert first.transferred == 1024
                    if len(got) == 1:
                        got += drv.wait_completions(1)     # the same plan duplicated it
                    assert [(c.request_id, c.transferred) for c in got] == [(rid, 1024)] * 2
                else:
                    assert len(got) == 1
                    assert (first.status, first.transferred) == (CompletionStatus.OK, 4096)
        finally:
            stop.set()
            thread.join()
            drv.close()
        assert dev.errors == []
