"""End to end on q35 with RAM above 4 GiB: the DMA sample over a 32-bit bus-master device. The
program's buffers above 4 GiB are out of the device's reach: the framework's adapter bounces
them through map registers in the platform's low DMA window (reserved below 4 GiB by the guest
config), the device only ever sees addresses below 4 GiB, and the guest reads back what it
wrote. The pool window stays where q35-3g-highmem puts it, above 4 GiB: the descriptor ring (a
common buffer the 32-bit device cannot reach in the pool) comes from the low window too. One boot.
"""

from __future__ import annotations

import pytest

from orchestrator.agent_client import GuestBuffer, IoResult, Step, Verification
from orchestrator.driver_session import DriverSession
from orchestrator.guest_config import load_guest_config
from samples.dma_busmaster import DmaBusMasterDriver

pytestmark = pytest.mark.e2e

FOUR_GIB = 1 << 32


@pytest.fixture(scope="module")
def session(guest_image):
    driver = DmaBusMasterDriver()
    config = load_guest_config("q35-3g-highmem")
    assert config.pool.base >= FOUR_GIB and config.low_dma_window.end <= FOUR_GIB
    with DriverSession(config, guest_image, driver=driver, busmaster={"address_bits": 32}) as s:
        s.driver = driver
        yield s
        assert s.device.errors == [] and s.busmaster.errors == []
    assert s.report.clean, str(s.report)


@pytest.mark.parametrize("source_where,target_where", [("high", "low"), ("low", "high"), ("high", "high")])
def test_a_32_bit_device_reaches_buffers_above_4g_through_bounce_buffers(session, source_where, target_where):
    size = (1 << 20) + 77
    results = session.agent.run(
        Step.alloc("src", size, offset=4095, where=source_where), Step.fill("src", 12),
        Step.io_write("src", offset=0), Step.alloc("dst", size, offset=1, where=target_where),
        Step.memset("dst", 0), Step.io_read("dst", offset=0), Step.verify("dst", 12))
    src, dst = GuestBuffer.from_result(results[0]), GuestBuffer.from_result(results[3])
    assert (src.above_4g, dst.above_4g) == (source_where == "high", target_where == "high")
    assert IoResult.from_result(results[2]).result == size
    assert IoResult.from_result(results[5]).result == size
    assert Verification.from_result(results[6]).match
    assert session.runtime.call(lambda: session.driver.address_bits) == 32
    programmed = session.runtime.call(lambda: list(session.driver.program_calls))
    assert programmed and all(a + n <= FOUR_GIB for call in programmed for a, n in call)
    low = session.config.low_dma_window
    bounced = [(a, n) for call in programmed for a, n in call if low.base <= a < low.end]
    assert bounced and all(a + n <= low.end for a, n in bounced)      # through the map registers
    ring = session.runtime.call(lambda: session.driver.ring_logical)
    assert low.base <= ring < low.end                                  # the common buffer too
    assert session.findings == []
