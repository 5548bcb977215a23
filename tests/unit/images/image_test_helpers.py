"""Helpers for the image builder's unit tests (a module name no other test folder uses)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest


def write_recipe(folder: Path, text: str, name: str = "test-image") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


VALID_RECIPE = """
    description: a test recipe
    kernel:
      package: linux-image-cloud-amd64
      modules: [virtio_pci, virtio_net]
      cmdline: [console=ttyS0, panic=-1]
    packages:
      - busybox-static
      - dropbear-bin
    busybox: /bin/busybox
    files:
      - /usr/sbin/dropbear
    init: init.sh
    network:
      address: 10.0.2.15/24
      gateway: 10.0.2.2
"""


def compile_c(folder: Path, name: str, source: str, *args: str, link: tuple[str, ...] = ()) -> Path:
    """Compile a small C file with the host gcc (tests that need it skip without it)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    src = folder / f"{name}.c"
    src.write_text(textwrap.dedent(source))
    out = folder / name
    subprocess.run([gcc, *args, str(src), *link, "-o", str(out)], check=True,
                   capture_output=True)
    return out


def fake_module(folder: Path, name: str, depends: list[str],
                vermagic: str = "6.1.0-99-test SMP mod_unload ") -> Path:
    """An ELF object with a .modinfo section like a kernel module's."""
    fields = [f"depends={','.join(depends)}", f"vermagic={vermagic}", f"name={name}"]
    body = "".join(
        f'__attribute__((section(".modinfo"), used)) static const char m{i}[] = "{field}";\n'
        for i, field in enumerate(fields))
    obj = compile_c(folder, f"{name}.o", body, "-c")
    return obj
