"""ELF reading (NEEDED, interpreter, static, .modinfo) and module load order."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest

from guest_images.elf import ElfFile, is_elf, module_depends
from guest_images.kmodules import ModuleTree, canonical_module_name
from wdfhil.errors import ImageBuildError

from image_test_helpers import compile_c, fake_module

HELLO = "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n"
RELEASE = "6.1.0-99-test"


def test_dynamic_program_needs_libc_and_a_loader(tmp_path: Path) -> None:
    elf = ElfFile(compile_c(tmp_path, "hello", HELLO))
    assert "libc.so.6" in elf.needed
    assert elf.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert elf.is_dynamic


def test_static_program_has_neither(tmp_path: Path) -> None:
    elf = ElfFile(compile_c(tmp_path, "hello", HELLO, "-static"))
    assert elf.needed == [] and elf.interpreter is None and not elf.is_dynamic


def test_modinfo_and_depends(tmp_path: Path) -> None:
    module = fake_module(tmp_path, "virtio_net", ["virtio_ring", "virtio", "net_failover"])
    info = ElfFile(module).modinfo
    assert module_depends(info) == ["virtio_ring", "virtio", "net_failover"]
    assert info["vermagic"] == ["6.1.0-99-test SMP mod_unload "]
    assert module_depends(ElfFile(fake_module(tmp_path, "leaf", [])).modinfo) == []


def test_not_elf(tmp_path: Path) -> None:
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not is_elf(text)
    with pytest.raises(ImageBuildError, match="not an ELF"):
        ElfFile(text)
    with pytest.raises(ImageBuildError, match="no .modinfo"):
        ElfFile(compile_c(tmp_path, "hello", HELLO)).modinfo


def _module_tree(tmp_path: Path, graph: dict[str, list[str]], *, xz: set[str] = frozenset(),
                 vermagic: str = f"{RELEASE} SMP ") -> Path:
    """An unpacked kernel package root with fake modules (some .ko.xz) under kernel/."""
    root = tmp_path / "pkg"
    base = root / "lib" / "modules" / RELEASE / "kernel" / "drivers"
    base.mkdir(parents=True)
    build = tmp_path / "build"
    build.mkdir(exist_ok=True)
    for name, depends in graph.items():
        obj = fake_module(build, name.replace("-", "_"), depends, vermagic)
        file_name = f"{name}.ko"
        if name in xz:
            (base / f"{file_name}.xz").write_bytes(lzma.compress(obj.read_bytes(),
                                                                 format=lzma.FORMAT_XZ))
        else:
            shutil.copy(obj, base / file_name)
    return root


GRAPH = {
    "virtio_ring": [], "virtio": ["virtio_ring"], "failover": [],
    "net_failover": ["failover"], "virtio_net": ["virtio_ring", "virtio", "net_failover"],
    "virtio_pci_modern_dev": [], "virtio_pci_legacy_dev": [],
    "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"],
    "virtio-rng": ["virtio"], "unrelated": [],
}


def test_load_order_puts_dependencies_first(tmp_path: Path) -> None:
    tree = ModuleTree(_module_tree(tmp_path, GRAPH, xz={"virtio_net", "failover"}), RELEASE)
    order = tree.load_order(["virtio_pci", "virtio_net", "virtio-rng"])
    names = [m.name for m in order]
    assert "unrelated" not in names
    assert len(names) == len(set(names)) == 9
    for module in order:
        for dependency in module.depends:
            assert names.index(dependency) < names.index(module.name), (module.name, dependency)
    assert names.index("virtio_pci") < names.index("virtio_net")   # otherwise as asked
    net = order[names.index("virtio_net")]
    assert net.guest_path == f"/lib/modules/{RELEASE}/kernel/drivers/virtio_net.ko"
    assert net.data[:4] == b"\x7fELF"                               # decompressed
    assert order[names.index("virtio_rng")].guest_path.endswith("/virtio-rng.ko")


def test_dash_and_underscore_are_one_name(tmp_path: Path) -> None:
    tree = ModuleTree(_module_tree(tmp_path, GRAPH), RELEASE)
    assert "virtio_rng" in tree and "virtio-rng" in tree
    assert canonical_module_name("virtio-rng") == "virtio_rng"


def test_unknown_module_and_cycles_are_errors(tmp_path: Path) -> None:
    tree = ModuleTree(_module_tree(tmp_path, {"a": ["b"], "b": ["a"], "c": ["missing"]}),
                      RELEASE)
    with pytest.raises(ImageBuildError, match="cycle: a -> b -> a"):
        tree.load_order(["a"])
    with pytest.raises(ImageBuildError, match="'missing' is not in the kernel package"):
        tree.load_order(["c"])


def test_missing_modules_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="no modules folder"):
        ModuleTree(tmp_path, RELEASE)
