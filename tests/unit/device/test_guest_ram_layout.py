"""The RAM layout read from real `info mtree` text, and GuestRam's address translation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.ram_layout import parse_mtree, read_ram_layout
from wdfhil.guest_ram import GuestRam, RamLayout, RamRange
from wdfhil.physical_memory import PhysicalMemoryError
from wdfhil.errors import DeviceProtocolError

MTREE = Path(__file__).parent / "mtree"
MIB, GIB = 1 << 20, 1 << 30
LEGACY = [RamRange(0, 0xA0000, 0)]


def low(end: int) -> list[RamRange]:
    return LEGACY + [RamRange(MIB, end - MIB, MIB)]


# (machine, -m) -> expected ranges; below4g: pc keeps all RAM low under 3.5 GiB
# (else 3 GiB), q35 under 2.75 GiB (else 2 GiB).
EXPECTED = {
    ("pc", "256M"): low(256 * MIB),
    ("pc", "1G"): low(GIB),
    ("pc", "3G"): low(3 * GIB),
    ("pc", "4G"): low(3 * GIB) + [RamRange(4 * GIB, GIB, 3 * GIB)],
    ("q35", "256M"): low(256 * MIB),
    ("q35", "1G"): low(GIB),
    ("q35", "3G"): low(2 * GIB) + [RamRange(4 * GIB, GIB, 2 * GIB)],
    ("q35", "4G"): low(2 * GIB) + [RamRange(4 * GIB, 2 * GIB, 2 * GIB)],
}


@pytest.mark.parametrize("backing,backend", [("file", "ram0"), ("plain", "pc.ram")])
@pytest.mark.parametrize("machine,size", sorted(EXPECTED))
def test_layout_from_real_mtree(machine, size, backing, backend):
    text = (MTREE / f"qemu-7.2-{machine}-{size}-{backing}.txt").read_text()
    layout = parse_mtree(text)
    assert list(layout.ranges) == EXPECTED[(machine, size)]
    assert layout.backend == backend
    total = int(size[:-1]) * (GIB if size.endswith("G") else MIB)
    assert layout.backend_size == total
    # Everything but the legacy VGA/BIOS window is reachable.
    assert layout.size == total - (MIB - 0xA0000)
    assert layout.file_size_needed == total


def test_file_offsets_below_and_above_4g():
    layout = parse_mtree((MTREE / "qemu-7.2-q35-4G-file.txt").read_text())
    assert layout.below_4g == 2 * GIB
    assert layout.file_offset(0x1000) == 0x1000
    assert layout.file_offset(2 * GIB - 8, 8) == 2 * GIB - 8
    assert layout.file_offset(4 * GIB) == 2 * GIB
    assert layout.file_offset(6 * GIB - 4096, 4096) == 4 * GIB - 4096
    for gpa, length in [(2 * GIB - 8, 16), (3 * GIB, 1), (6 * GIB, 1), (0xA0000, 1),
                        (0xFFFFF, 2), (-1, 1)]:
        with pytest.raises(PhysicalMemoryError):
            layout.file_offset(gpa, length)


def test_fallback_without_aliases():
    """A machine that maps its RAM region directly (no ram-below-4g alias)."""
    text = (MTREE / "qemu-7.2-pc-256M-plain.txt").read_text()
    direct = re.sub(r"\(prio 0, ram\): alias ram-below-4g @pc\.ram \S+",
                    "(prio 0, ram): pc.ram", text)
    assert "ram-below-4g" not in direct
    layout = parse_mtree(direct)
    assert list(layout.ranges) == low(256 * MIB)
    assert layout.backend == "pc.ram"


def test_parser_tolerates_spacing_and_case():
    text = ("address-space: memory\n"
            "  0000000000000000-FFFFFFFFFFFFFFFF (prio 0, i/o): system\n"
            "      0000000000000000-000000003FFFFFFF  (prio 0, ram):  alias ram-below-4g @ram0 "
            "0000000000000000-000000003FFFFFFF\n"
            "\nmemory-region: ram0\n  0000000000000000-000000003fffffff (prio 0, ram): ram0\n")
    layout = parse_mtree(text)
    assert list(layout.ranges) == low(GIB)
    assert layout.backend_size == GIB


@pytest.mark.parametrize("text", ["", "garbage\n", "address-space: memory\n  nothing here\n",
                                  "address-space: I/O\n  0000-ffff (prio 0, i/o): io\n"])
def test_parser_refuses_text_without_ram(text):
    with pytest.raises(DeviceProtocolError):
        parse_mtree(text)


class FakeMonitor:
    """Only replays captured QEMU output; the real QMP path is in the integration tests."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[tuple[str, dict]] = []

    def command(self, name, **args):
        self.calls.append((name, args))
        return self.text


def test_read_ram_layout_asks_info_mtree():
    monitor = FakeMonitor((MTREE / "qemu-7.2-pc-4G-file.txt").read_text())
    layout = read_ram_layout(monitor)
    assert monitor.calls == [("human-monitor-command", {"command-line": "info mtree"})]
    assert layout.ranges[-1] == RamRange(4 * GIB, GIB, 3 * GIB)


def make_ram_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def test_guest_ram_translates_to_file_offsets(tmp_path):
    path = tmp_path / "ram"
    make_ram_file(path, 4 * MIB)
    layout = RamLayout((RamRange(0, 2 * MIB, 0), RamRange(4 * GIB, 2 * MIB, 2 * MIB)))
    with GuestRam.open(path, layout) as ram:
        assert ram.ram_ranges() == [(0, 2 * MIB), (4 * GIB, 4 * GIB + 2 * MIB)]
        assert ram.size == 4 * MIB
        ram.write(0x1000, b"low!")
        ram.write(4 * GIB + 0x10, b"high")
        ram.write(4 * GIB + 2 * MIB - 4, b"last")
        assert ram.read(4 * GIB + 0x10, 4) == b"high"
        with pytest.raises(PhysicalMemoryError):
            ram.view(2 * MIB - 2, 4)          # straddles the hole
        with pytest.raises(PhysicalMemoryError):
            ram.read(3 * GIB, 1)              # in the hole
        with pytest.raises(PhysicalMemoryError):
            ram.write(4 * GIB + 2 * MIB, b"x")  # past the end
    data = path.read_bytes()
    assert data[0x1000:0x1004] == b"low!"
    assert data[2 * MIB + 0x10:2 * MIB + 0x14] == b"high"
    assert data[-4:] == b"last"
    assert ram.closed
    with pytest.raises(PhysicalMemoryError):
        ram.read(0, 1)


def test_guest_ram_refuses_short_file(tmp_path):
    path = tmp_path / "ram"
    make_ram_file(path, MIB)
    with pytest.raises(DeviceProtocolError, match="needs"):
        GuestRam.open(path, RamLayout.single(2 * MIB))


def test_guest_ram_close_while_views_are_held_explains(tmp_path):
    path = tmp_path / "ram"
    make_ram_file(path, MIB)
    ram = GuestRam.open(path, RamLayout.single(MIB))
    held = ram.view(0, 16)
    with pytest.raises(DeviceProtocolError, match="detach"):
        ram.close()
    held.release()
