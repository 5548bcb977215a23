"""End to end on a pc guest: a guest program's reads and writes on /dev/wdfio0 served by the DMA
sample (samples/dma_busmaster.py) over the real bus-master device: DMA transactions initialized
from the request, descriptors in a common-buffer ring, the device's DMA straight into the
program's pages, its interrupt, ISR and DPC, the request completed. One boot (DriverSession with
``busmaster=True``), the enabler's maximum length 64 KiB so that longer requests are staged into
several EvtProgramDma calls; the guest verifies what it reads back, also with several requests
in flight from several guest threads.
"""

from __future__ import annotations

import pytest

import threading
from concurrent.futures import ThreadPoolExecutor

from orchestrator.agent_client import IoResult, Step, Verification, pattern_bytes
from orchestrator.driver_session import DriverSession
from samples.dma_busmaster import DmaBusMasterDriver

pytestmark = pytest.mark.e2e
FRAGMENT = 64 << 10
WAIT_S = 300.0


@pytest.fixture(scope="module")
def session(guest_image):
    driver = DmaBusMasterDriver(maximum_length=FRAGMENT)
    with DriverSession("pc-256m", guest_image, driver=driver, busmaster=True) as s:
        s.driver = driver
        yield s
        assert s.device.errors == [] and s.busmaster.errors == []
    assert s.report.clean, str(s.report)


@pytest.mark.parametrize("size,offset", [(1, 4095), (4096 + 333, 4000), (100_000, 3), (1 << 20, 1)],
                         ids=["1-byte-last-in-page", "4k-odd-page-crossing", "100k-unaligned",
                              "1MiB-unaligned-257-pages"])
def test_write_then_read_by_dma(session, size, offset):
    seed = size % 200 + 1
    calls = session.runtime.call(lambda: len(session.driver.program_calls))
    results = session.agent.run(
        Step.alloc("src", size, offset=offset), Step.fill("src", seed), Step.io_write("src", offset=64),
        Step.alloc("dst", size, offset=(offset + 1) % 4096), Step.memset("dst", 0),
        Step.io_read("dst", offset=64), Step.verify("dst", seed))
    assert IoResult.from_result(results[2]).result == size
    assert IoResult.from_result(results[5]).result == size
    assert Verification.from_result(results[6]).match
    assert session.busmaster.read_data(64, size) == pattern_bytes(seed, size)   # in the device's memory
    programmed = session.runtime.call(lambda: session.driver.program_calls[calls:])
    fragments = -(-size // FRAGMENT)
    assert len(programmed) == 2 * fragments                   # staged at the enabler's maximum length
    assert session.findings == []


def test_several_requests_in_flight_from_guest_threads_each_staged_and_verified(session):
    """Eight guest threads, each writing then reading back 200000 bytes at its own file offset.
    The file is opened first; then the runtime thread is held until the eight first writes have
    reached the endpoint, so the
    parallel queue presents seven at once (one per transaction) and their first fragments sit
    in the device's ring together; the guest verifies every byte it reads back."""
    driver, threads, rounds, size = session.driver, 8, 2, 200_000
    calls = session.runtime.call(lambda: len(driver.program_calls))
    hold = threading.Event()
    with session.agent.serve() as agent, ThreadPoolExecutor(1) as pool:
        agent.command(Step.io_open())                       # opened before the runtime is held
        session.runtime.post(lambda: hold.wait(WAIT_S))
        stress = pool.submit(agent.command, Step.io_stress(threads, rounds, size, page_offset=77),
                             timeout=WAIT_S)
        try:
            session.endpoint.wait_for(lambda: len(session.endpoint.in_flight) == threads, WAIT_S,
                                      f"{threads} writes at the endpoint")
        finally:
            hold.set()
        answer = stress.result(WAIT_S)
    assert (answer["done"], answer["failed"], answer["mismatches"]) == (threads * rounds, 0, 0), answer
    assert session.runtime.call(lambda: driver.most_in_flight) == driver.in_flight_limit == 7
    programmed = session.runtime.call(lambda: driver.program_calls[calls:])
    assert len(programmed) == threads * rounds * 2 * -(-size // FRAGMENT)   # every request staged
    assert session.findings == []


def test_with_dma_remapping_the_device_sees_only_iovas(guest_image):
    """The adapters hand out IOVAs; the device translates each one through the framework's
    tables (BusMasterHardware.translate) to reach the program's pages."""
    from framework_emu.dma_adapter import IOVA_BASE

    driver = DmaBusMasterDriver()
    with DriverSession("pc-256m", guest_image, driver=driver, busmaster={"remapping": True}) as s:
        size = 300_000
        results = s.agent.run(
            Step.alloc("src", size, offset=77), Step.fill("src", 4), Step.io_write("src", offset=3),
            Step.alloc("dst", size, offset=4000), Step.memset("dst", 0), Step.io_read("dst", offset=3),
            Step.verify("dst", 4))
        assert IoResult.from_result(results[2]).result == size
        assert IoResult.from_result(results[5]).result == size
        assert Verification.from_result(results[6]).match
        programmed = s.runtime.call(lambda: list(driver.program_calls))
        assert programmed and all(a >= IOVA_BASE for call in programmed for a, _n in call)
        assert s.findings == []
        assert s.device.errors == [] and s.busmaster.errors == []
    assert s.report.clean, str(s.report)
