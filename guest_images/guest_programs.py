"""Compiling the project's guest-side programs: the static agent and the kernel module.

Their sources live under ``guest_images/guest/`` (``agent/*.c``,
``module/`` with a Kbuild file); both include ``wdfhil_abi.h``, generated
here from :mod:`device_model.abi` into the build folder, never committed, so
host and guest can never disagree on the ABI. The module is compiled
against Debian's linux-headers packages for the exact kernel that boots,
unpacked (not installed) into a staging folder: those packages point into
``/usr/src`` and ``/usr/lib/linux-kbuild-*`` with absolute paths, which are
rebased into the staging folder first.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from device_model.abi import render_c_header
from guest_images.apt import require_tool, run_tool
from guest_images.elf import ElfFile
from wdfhil.errors import ImageBuildError

GUEST_SOURCES = Path(__file__).resolve().parent / "guest"
AGENT_SOURCES = GUEST_SOURCES / "agent"
MODULE_SOURCES = GUEST_SOURCES / "module"
ABI_HEADER = "wdfhil_abi.h"
AGENT_BINARY = "wdfhil-agent"
MODULE_NAME = "wdfhil_pci"


def write_abi_header(folder: Path) -> Path:
    """Generate ``wdfhil_abi.h`` into ``folder`` (a build folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / ABI_HEADER
    header.write_text(render_c_header(), encoding="utf-8")
    return header


def compile_agent(sources: Path, include_dir: Path, output: Path) -> Path:
    """``gcc -static`` every ``*.c`` of ``sources`` into one program; check it is static."""
    files = sorted(str(path) for path in sources.glob("*.c"))
    if not files:
        raise ImageBuildError(f"no agent sources (*.c) in {sources}")
    run_tool([require_tool("gcc"), "-static", "-O2", "-Wall", f"-I{include_dir}", *files,
              "-o", str(output)], what="compiling the guest agent")
    elf = ElfFile(output)
    if elf.is_dynamic or elf.interpreter:
        raise ImageBuildError(f"{output} is not a static program (is libc6-dev installed?)")
    return output


def rebase_absolute_symlinks(root: Path) -> None:
    """Make every absolute symlink under ``root`` point inside ``root`` instead."""
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(folder) / name
            if link.is_symlink():
                target = os.readlink(link)
                if target.startswith("/"):
                    inside = root / target.lstrip("/")
                    link.unlink()
                    link.symlink_to(os.path.relpath(inside, link.parent))


# Names how prepare_kernel_headers changes a headers tree; part of the key of the
# cached prepared tree, so change it whenever that function changes.
HEADERS_PREPARATION = "rebased-symlinks+relative-include/1"


def kernel_build_dir(root: Path, release: str) -> Path:
    """The folder to pass to ``make -C`` in headers unpacked under ``root``."""
    return root / "usr" / "src" / f"linux-headers-{release}"


def prepare_kernel_headers(root: Path, release: str) -> None:
    """Make the headers unpacked under ``root`` usable where they are (and wherever the
    folder is moved to later: every rewritten path is relative).

    The arch package's Makefile is one line, ``include /usr/src/linux-headers-
    <abi>-common/Makefile``, and make resolves a relative include against the
    ``make -C`` folder; the ``scripts``/``tools`` symlinks into
    ``/usr/lib/linux-kbuild-*`` are rebased into ``root``.
    """
    build = kernel_build_dir(root, release)
    makefile = build / "Makefile"
    if not makefile.is_file():
        raise ImageBuildError(f"the headers packages have no usr/src/linux-headers-{release}/"
                              "Makefile (do they match the kernel release?)")
    rebase_absolute_symlinks(root)

    def relative_include(match: re.Match[str]) -> str:
        target = root / match.group(2).lstrip("/")
        return f"{match.group(1)}{os.path.relpath(target, build)}"

    text = re.sub(r"^(\s*include\s+)(/\S+)", relative_include, makefile.read_text(),
                  flags=re.MULTILINE)
    makefile.write_text(text)


def kernel_compiler(build: Path) -> str:
    """The gcc the kernel was built with (Debian writes ``CC = ... gcc-12`` in
    ``.kernelvariables``); modules must use the same major version."""
    variables = build / ".kernelvariables"
    if variables.is_file():
        match = re.search(r"\b(gcc-\d+)\b", variables.read_text())
        if match:
            return match.group(1)
    return "gcc"


def compile_module(sources: Path, include_dir: Path, build: Path, work: Path,
                   release: str) -> Path:
    """Build the out-of-tree module with Kbuild in a copy of ``sources``; check its
    vermagic names ``release``."""
    if not (sources / "Kbuild").is_file() and not (sources / "Makefile").is_file():
        raise ImageBuildError(f"no Kbuild file in {sources}")
    require_tool("make")
    compiler = kernel_compiler(build)
    require_tool(compiler)
    shutil.copytree(sources, work, dirs_exist_ok=True)
    shutil.copy2(include_dir / ABI_HEADER, work / ABI_HEADER)
    run_tool(["make", "-s", "-C", str(build), f"M={work}", f"CC={compiler}", "modules"],
             what="compiling the guest kernel module")
    module = work / f"{MODULE_NAME}.ko"
    if not module.is_file():
        raise ImageBuildError(f"Kbuild did not produce {module.name} (does the Kbuild file "
                              f"say obj-m := {MODULE_NAME}.o?)")
    vermagic = (ElfFile(module).modinfo.get("vermagic") or [""])[0]
    if vermagic.split(" ")[0] != release:
        raise ImageBuildError(f"{module.name} has vermagic {vermagic!r}, expected kernel "
                              f"release {release}")
    return module
