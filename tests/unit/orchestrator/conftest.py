"""Stand-in guests for lifecycle tests that need QEMU but not the real image.

A 60-byte multiboot kernel that prints a chosen text on COM1 and halts lets
the VM's launch paths run for real (QEMU, console reader, QMP, port
forwarding, cleanup) in a fraction of a second, with no image build: it can
print the ready marker (then SSH never answers), a kernel panic, or
nothing at all.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from guest_images import GuestImage

_LOAD_BASE = 0x100000
_CODE_AT = 32
_MSG_AT = _CODE_AT + 0x15


def multiboot_kernel(message: bytes) -> bytes:
    """A multiboot (a.out kludge) kernel that writes ``message`` to port 0x3f8 and halts."""
    magic, flags = 0x1BADB002, 0x00010000
    checksum = (-(magic + flags)) & 0xFFFFFFFF
    header = struct.pack("<8I", magic, flags, checksum, _LOAD_BASE, _LOAD_BASE, 0, 0,
                         _LOAD_BASE + _CODE_AT)
    code = (b"\xBE" + struct.pack("<I", _LOAD_BASE + _MSG_AT)  # mov esi, message
            + b"\x66\xBA\xF8\x03"                              # mov dx, 0x3f8
            + b"\xAC\x84\xC0\x74\x03\xEE\xEB\xF8"              # lodsb; test; jz; out; jmp
            + b"\xFA\xF4\xEB\xFD")                             # cli; hlt; jmp hlt
    return header + code + message + b"\x00"


@pytest.fixture
def fake_image(tmp_path):
    """``fake_image(console_text)`` -> a GuestImage whose kernel prints that text."""
    def make(console_text: str, *, kernel_bytes: bytes | None = None) -> GuestImage:
        folder = Path(tmp_path) / f"image-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        kernel = folder / "vmlinuz"
        kernel.write_bytes(kernel_bytes if kernel_bytes is not None
                           else multiboot_kernel(console_text.encode()))
        initramfs = folder / "initramfs"
        initramfs.write_bytes(b"\0" * 4096)
        (folder / "client_key").write_bytes(b"")
        return GuestImage(
            name="fake", digest="f" * 64, kernel=kernel, initramfs=initramfs,
            kernel_cmdline=("console=ttyS0",), client_key=folder / "client_key",
            host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEFqt/5hEqu2XMBU7r17fP+qtqqFB0pkf/ODS+vDks6n",
            ssh_user="root", ready_marker="WDFHIL-READY", kernel_version="none",
            agent_path="/usr/bin/wdfhil-agent",
            module_path="/lib/modules/wdfhil/wdfhil_pci.ko").with_file_records()
    return make

