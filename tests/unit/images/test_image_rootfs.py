"""Installing programs from a staging tree: symlinks and NEEDED libraries come along."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guest_images.rootfs import GuestTree, StagingTree
from wdfhil.errors import ImageBuildError

from image_test_helpers import compile_c

LIB = "int foo(void) { return 42; }\n"
PROGRAM = "int foo(void);\nint main(void) { return foo() == 42 ? 0 : 1; }\n"


@pytest.fixture
def staging(tmp_path: Path) -> StagingTree:
    """A Debian-like staging tree: a program needing libfoo and libc, the loader reached
    through an absolute /lib64 symlink, and a relative program symlink."""
    build = tmp_path / "build"
    build.mkdir()
    lib = compile_c(build, "libfoo.so.1.2", LIB, "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1")
    program = compile_c(build, "prog", PROGRAM, link=(str(lib),))
    root = tmp_path / "staging"
    multiarch = root / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir(parents=True)
    os.replace(lib, multiarch / "libfoo.so.1.2")
    (multiarch / "libfoo.so.1").symlink_to("libfoo.so.1.2")
    libc_dir = root / "lib/x86_64-linux-gnu"
    libc_dir.mkdir(parents=True)
    (libc_dir / "libc.so.6").write_bytes(b"not really libc")
    (libc_dir / "ld-linux-x86-64.so.2").write_bytes(b"not really the loader")
    (root / "lib64").mkdir()
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "usr/sbin").mkdir(parents=True)
    os.replace(program, root / "usr/sbin/prog")
    (root / "usr/lib/prog-link").symlink_to("../sbin/prog")
    return StagingTree(root)


def test_program_brings_its_libraries_and_loader(staging: StagingTree) -> None:
    tree = GuestTree()
    staging.install(tree, "/usr/lib/prog-link")
    link = tree.get("usr/lib/prog-link")
    assert link.is_symlink and link.data == b"../sbin/prog"
    program = tree.get("usr/sbin/prog")
    assert program.is_file and stat.S_IMODE(program.mode) & 0o111
    assert tree.get("usr/lib/x86_64-linux-gnu/libfoo.so.1").is_symlink
    assert tree.get("usr/lib/x86_64-linux-gnu/libfoo.so.1.2").is_file
    assert tree.get("lib/x86_64-linux-gnu/libc.so.6").data == b"not really libc"
    loader = tree.get("lib64/ld-linux-x86-64.so.2")
    assert loader.is_symlink and loader.data == b"/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert tree.get("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").is_file


def test_resolve_stays_inside_the_tree(staging: StagingTree) -> None:
    assert staging.resolve("/lib64/ld-linux-x86-64.so.2") == \
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert staging.resolve("/usr/lib/prog-link") == "usr/sbin/prog"


def test_missing_library_names_it_and_who_needs_it(staging: StagingTree) -> None:
    os.remove(staging.root / "usr/lib/x86_64-linux-gnu/libfoo.so.1.2")
    with pytest.raises(ImageBuildError) as info:
        staging.install(GuestTree(), "/usr/sbin/prog")
    message = str(info.value)
    assert "libfoo.so.1" in message and "/usr/sbin/prog" in message
    assert "packages" in message


def test_missing_file(staging: StagingTree) -> None:
    with pytest.raises(ImageBuildError, match="/usr/sbin/absent is not in any"):
        staging.install(GuestTree(), "/usr/sbin/absent")


def test_dynamic_busybox_is_refused(staging: StagingTree) -> None:
    with pytest.raises(ImageBuildError, match="static busybox"):
        staging.busybox_applets("/usr/sbin/prog")
