"""End to end on q35 with RAM above 4 GiB (q35-3g-highmem: 2 GiB below the PCI
hole, 1 GiB from 4 GiB up, pool window above 4 GiB): DMA below and above
4 GiB, into the reserved pool window through /dev/mem, and a hot-plugged
second device with a 32-bit DMA mask that refuses a segment above 4 GiB.
One boot for the whole module.
"""

from __future__ import annotations

import pytest

from device_model.abi import CompletionStatus, ErrorReason
from orchestrator.agent_client import CompletionRecord, GuestBuffer, Step, Verification
from orchestrator.dma_session import DmaSession, echo_roundtrip

pytestmark = pytest.mark.e2e

FOUR_GIB = 1 << 32
DMA_MASK_32 = FOUR_GIB - 1


@pytest.fixture(scope="module")
def session(guest_image):
    with DmaSession("q35-3g-highmem", guest_image) as s:
        yield s


@pytest.mark.parametrize("source_where,target_where", [("high", "low"), ("low", "high")])
def test_roundtrip_across_4g(session, source_where, target_where):
    trip = echo_roundtrip(session, size=12_345, seed=9, source_offset=4095, target_offset=1,
                          where=source_where, target_where=target_where, device_offset=0x1000)
    by_place = {source_where: trip.source, target_where: trip.target}
    assert by_place["high"].above_4g and by_place["high"].gpa >= FOUR_GIB
    assert by_place["low"].below_4g
    assert trip.ok, (trip.write, trip.read, trip.guest_verify)


def test_device_dmas_into_the_pool_window_above_4g(session):
    base, size = session.vm.config.pool.window
    assert base >= FOUR_GIB, "this config puts the pool window above 4 GiB"
    length = 3 * 4096 + 123
    source_gpa, target_gpa = base + 0x10_0000 + 17, base + 0x20_0000 + 4000
    trip = echo_roundtrip(session, size=length, seed=31,
                          source=Step.phys("src", source_gpa, length),
                          target=Step.phys("dst", target_gpa, length), device_offset=0x8000)
    assert trip.source.kind == "phys" and trip.source.gpa == source_gpa
    assert [(s.gpa, s.length) for s in trip.target.segments] == [(target_gpa, length)]
    assert trip.ok, (trip.write, trip.read, trip.guest_verify)
    # The device's own view of guest RAM (the RAM file) agrees with QEMU's.
    assert bytes(session.ram.read(target_gpa, length)) == trip.expected


def test_hotplugged_32bit_device_refuses_a_segment_above_4g(session):
    with session.hotplug(dma_mask=DMA_MASK_32) as plugged:
        assert plugged.guest_path != "/dev/wdfhil0"
        agent = plugged.agent
        assert agent.info()["header"]["dma_mask"] == DMA_MASK_32
        results = agent.run(Step.alloc("high", 5000, offset=300, where="high"),
                            Step.fill("high", 3), Step.write("high", 0))
        high = GuestBuffer.from_result(results[0])
        refused = CompletionRecord.from_result(results[2])
        assert high.above_4g
        assert refused.status is CompletionStatus.ERROR
        assert refused.reason is ErrorReason.SEGMENT_ABOVE_DMA_MASK
        assert refused.transferred == 0
        # The same device serves buffers below 4 GiB.
        trip = echo_roundtrip(session, size=9000, seed=5, source_offset=10, target_offset=20,
                              where="low", agent=agent, device=plugged.device)
        assert trip.ok, (trip.write, trip.read, trip.guest_verify)
        path = plugged.guest_path
    # Unplugged: the guest driver's remove() ran, the boot device still works.
    assert path.rsplit("/", 1)[-1] not in session.vm.run("ls /sys/class/wdfhil").stdout
    assert "removed" in session.vm.run("dmesg | tail -5").stdout
    again = echo_roundtrip(session, size=4096, seed=1, device_offset=0)
    assert again.ok


def test_guest_verify_sees_a_host_change(session):
    """The agent reads real guest memory: bytes the host changes through the
    RAM file show up in the guest's verification."""
    with session.agent.serve() as agent:
        buffer = GuestBuffer.from_result(agent.command(Step.alloc("b", 8192, offset=5,
                                                                  where="high")))
        agent.command(Step.fill("b", 11))
        assert Verification.from_result(agent.command(Step.verify("b", 11))).match
        target = buffer.segments[-1]
        current = session.ram.read(target.gpa + 1, 2)
        session.ram.write(target.gpa + 1, bytes(b ^ 0xFF for b in current))
        after = Verification.from_result(agent.command(Step.verify("b", 11)))
    assert not after.match and after.first_mismatch >= 8192 - target.length
