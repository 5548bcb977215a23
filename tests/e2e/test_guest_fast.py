"""Guests kept fast between scenarios (GuestSessions): a warm reset or a restore
from the saved post-boot state gives the next scenario the pristine guest (the
guest's own view: a file and a pool-window marker of the previous user are gone)
with a working device (a DMA round trip verified in the guest and through QMP);
a damaged saved state is refused and saved anew; ``fast=False`` boots cold.
(The markers: a /tmp file, and bytes at the start of the pool window and of the
low DMA window, reserved RAM the framework and devices use.)"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from orchestrator.boot_cache import COMPLETE, BootCache
from orchestrator.dma_session import DmaSession, echo_roundtrip
from orchestrator.guest_sessions import GuestSessions, SharedSession
from orchestrator.snapshot import STATE_FILE, Snapshot

pytestmark = pytest.mark.e2e

GUEST = "pc-256m"
MARKER_FILE = "/tmp/previous-scenario"


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """One boot cache for the module (its first guest boots cold and fills it)."""
    return tmp_path_factory.mktemp("boot-states")


def sessions(image, root: Path, **options) -> GuestSessions:
    return GuestSessions(image_for=lambda recipe: image, boot_cache=BootCache(root), **options)


def reserved_bases(session: DmaSession) -> list[int]:
    """The pool window's and the low DMA window's first addresses."""
    config = session.vm.config
    return [config.pool.base, config.low_dma_window.base]


def leave_marks(session: DmaSession) -> None:
    """What a scenario might leave: a file, and bytes written by the guest through
    /dev/mem at the start of the pool window and of the low DMA window."""
    token = secrets.token_hex(8)
    writes = "; ".join(f"printf {token} | dd of=/dev/mem bs=1 seek={base} conv=notrunc "
                       f"2>/dev/null" for base in reserved_bases(session))
    session.vm.run_checked(f"echo {token} > {MARKER_FILE}; {writes}")
    for base in reserved_bases(session):
        assert guest_bytes(session, base, len(token)) == token.encode()


def guest_bytes(session: DmaSession, gpa: int, length: int) -> bytes:
    """Guest-physical bytes as the guest reads them (/dev/mem)."""
    text = session.vm.run_checked(f"dd if=/dev/mem bs=1 skip={gpa} count={length} "
                                  f"2>/dev/null | od -An -v -tx1")
    return bytes.fromhex("".join(text.split()))


def assert_pristine_and_working(session: DmaSession, seed: int) -> None:
    assert session.vm.run(f"test -e {MARKER_FILE}").exit_code == 1, "the file marker survived"
    for base in reserved_bases(session):
        assert guest_bytes(session, base, 16) == bytes(16), f"the marker at {base:#x} survived"
    trip = echo_roundtrip(session, size=3 * 4096 + 123, seed=seed, source_offset=77,
                          target_offset=1000)
    assert trip.guest_verify.match and trip.host_target_bytes == trip.expected
    assert trip.ok


def kinds(guests: GuestSessions) -> list[str]:
    return [event.kind for event in guests.events]


def test_warm_reset_then_restore_give_the_pristine_guest_with_a_working_device(
        guest_image, cache_root):
    with sessions(guest_image, cache_root) as guests:
        shared, _seconds = guests.acquire_device(GUEST)
        assert kinds(guests) in (["save", "boot"], ["restore"])
        first_vm = shared.session.vm
        leave_marks(shared.session)
        assert_pristine_and_working_after_warm_reset(guests, shared)
        assert shared.session.vm is first_vm       # the same guest, reset in place

        leave_marks(shared.session)
        guests.release((GUEST, shared.settings))
        restored, seconds = guests.acquire_device(GUEST)
        assert kinds(guests)[-1] == "restore" and seconds is not None
        assert restored.session.vm is not first_vm
        assert restored.session.vm.restore_from is not None
        assert_pristine_and_working(restored.session, seed=11)
    assert not list(cache_root.glob(".build-*"))


def assert_pristine_and_working_after_warm_reset(guests: GuestSessions,
                                                 shared: SharedSession) -> None:
    again, seconds = guests.acquire_device(GUEST)
    assert again is shared and seconds is None
    assert kinds(guests)[-1] == "warm-reset"
    assert_pristine_and_working(shared.session, seed=7)


def test_an_unhealthy_guest_is_replaced_by_a_restore(guest_image, cache_root):
    with sessions(guest_image, cache_root) as guests:
        shared, _seconds = guests.acquire_device(GUEST)
        old_vm = shared.session.vm
        leave_marks(shared.session)
        # the guest driver gone: the health check cannot find the device node
        shared.session.vm.run_checked("rmmod wdfhil_pci")
        again, seconds = guests.acquire_device(GUEST)
        assert again is shared and seconds is None
        assert kinds(guests)[-2:] == ["restore", "replace"]
        assert shared.session.vm is not old_vm and not old_vm.running
        assert_pristine_and_working(shared.session, seed=5)


def test_a_damaged_saved_state_is_refused_and_saved_anew(guest_image, cache_root):
    with sessions(guest_image, cache_root) as guests:   # make sure the entry exists
        guests.acquire_device(GUEST)
    [entry] = [p for p in cache_root.iterdir() if (p / COMPLETE).exists()]
    ram_copy = Snapshot.ram_path(entry / STATE_FILE)
    with open(ram_copy, "r+b") as handle:   # one byte of the guest's kernel memory
        handle.seek(0x1000000 + 4096)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))

    with sessions(guest_image, cache_root) as guests:
        shared, _seconds = guests.acquire_device(GUEST)
        assert kinds(guests) == ["save", "boot"]
        assert any("corrupted" in reason for reason in guests.boot_cache.discarded)
        assert_pristine_and_working(shared.session, seed=3)
    assert (entry / COMPLETE).exists()

    with sessions(guest_image, cache_root) as guests:   # the new entry restores
        shared, _seconds = guests.acquire_device(GUEST)
        assert kinds(guests) == ["restore"] and not guests.boot_cache.discarded
        assert_pristine_and_working(shared.session, seed=4)


def test_fast_false_boots_cold_with_the_device_at_boot(guest_image, tmp_path):
    with sessions(guest_image, tmp_path, fast=False) as guests:
        shared, _seconds = guests.acquire_device(GUEST)
        assert kinds(guests) == ["boot"]
        assert shared.session.device_at_boot and shared.session.vm.restore_from is None
        guests.acquire_device(GUEST)
        assert kinds(guests) == ["boot"]          # reused, no warm reset
        assert echo_roundtrip(shared.session, size=8192, seed=9).ok
    assert list(tmp_path.iterdir()) == []          # nothing saved
