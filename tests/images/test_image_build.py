"""The default image, really built: what is inside it, and the cache around it."""

from __future__ import annotations

import shutil
import stat
import struct
from pathlib import Path, PurePosixPath

import paramiko
import pytest

import guest_images.builder as builder
import guest_images.cache as cache
from guest_images import apt, build_image, load_recipe
from guest_images.cpio import CpioEntry, read_initramfs
from guest_images.elf import ElfFile, module_depends
from guest_images.guest_programs import GUEST_SOURCES
from guest_images.lockfile import load_lock, resolve_lock
from guest_images.rootfs import LIBRARY_DIRS
from wdfhil.errors import ConfigError


@pytest.fixture(scope="module")
def entries(image) -> dict[str, CpioEntry]:
    return read_initramfs(image.initramfs)


def resolve(entries: dict[str, CpioEntry], path: str, hops: int = 0) -> CpioEntry:
    """Follow symlinks inside the archive, the way the guest would."""
    assert hops < 20, f"symlink loop at {path}"
    parts = PurePosixPath(path.lstrip("/")).parts
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        entry = entries.get(prefix)
        assert entry is not None, f"/{prefix} is not in the initramfs"
        if entry.is_symlink:
            target = entry.data.decode()
            base = "" if target.startswith("/") else str(PurePosixPath(prefix).parent)
            rest = "/".join(parts[depth:])
            return resolve(entries, str(PurePosixPath("/", base, target, rest)), hops + 1)
    return entries["/".join(parts)]


def test_concurrent_builds_made_one_image(session_build) -> None:
    assembled = sum(out.count("assembling the root file system") for out in session_build.outputs)
    assert assembled == 1, session_build.outputs
    print(f"cold image build (two racing processes): {session_build.seconds:.1f} s")


def test_image_fields(image) -> None:
    lock = load_lock(load_recipe(None).lock_path)
    assert image.name == "debian12-cloud"
    # Built from the lock as committed, or (the lock went stale) re-resolved, and said so.
    assert image.lock_state in ("pinned", "re-resolved"), image.details
    if image.lock_state == "pinned":
        assert image.kernel_version == lock.kernel_release
        assert image.package_versions == lock.versions()
    assert f"linux-image-{image.kernel_release}" in image.package_versions
    assert image.kernel_release in image.provenance
    assert image.ssh_user == "root" and image.ready_marker == "WDFHIL-READY"
    assert image.agent_path == "/usr/bin/wdfhil-agent"
    assert image.module_path == "/lib/modules/wdfhil/wdfhil_pci.ko"
    assert "console=ttyS0" in image.kernel_cmdline
    assert image.host_key.startswith("ssh-ed25519 AAAA")
    assert stat.S_IMODE(image.client_key.stat().st_mode) == 0o600
    paramiko.Ed25519Key.from_private_key_file(str(image.client_key))
    print(f"kernel {image.kernel.stat().st_size} bytes, "
          f"initramfs {image.initramfs.stat().st_size} bytes")


def test_kernel_is_the_pinned_release(image) -> None:
    data = image.kernel.read_bytes()
    assert data[0x202:0x206] == b"HdrS", "a bzImage"
    (version_offset,) = struct.unpack_from("<H", data, 0x20E)
    version = data[version_offset + 0x200:].split(b"\0")[0].decode()
    assert version.startswith(image.kernel_version + " ")


def test_init_and_busybox_applets(image, entries) -> None:
    init = entries["init"]
    assert init.is_file and stat.S_IMODE(init.mode) == 0o755
    assert init.data == load_recipe(None).init_script.read_bytes()
    busybox = ElfFile(entries["bin/busybox"].data, "busybox")
    assert not busybox.is_dynamic
    for applet in ("bin/sh", "bin/cat", "bin/dd", "bin/date", "bin/sync", "sbin/insmod",
                   "sbin/ip", "bin/mount", "usr/bin/od"):
        assert resolve(entries, applet) is entries["bin/busybox"], applet
    assert entries["dev/console"].rdev == (5, 1) and stat.S_ISCHR(entries["dev/console"].mode)


def _find_library(entries, soname: str) -> CpioEntry:
    for folder in LIBRARY_DIRS:
        if f"{folder.lstrip('/')}/{soname}" in entries:
            return resolve(entries, f"{folder}/{soname}")
    raise AssertionError(f"{soname} is not in any library folder of the initramfs")


def test_every_program_finds_its_loader_and_libraries(entries) -> None:
    programs = [path for path, entry in entries.items()
                if entry.is_file and entry.data[:4] == b"\x7fELF" and not path.endswith(".ko")]
    checked = 0
    for path in programs:
        elf = ElfFile(entries[path].data, path)
        if elf.interpreter:
            assert resolve(entries, elf.interpreter).is_file, path
        for soname in elf.needed:
            assert _find_library(entries, soname).data[:4] == b"\x7fELF", (path, soname)
            checked += 1
    needed = ElfFile(resolve(entries, "usr/sbin/dropbear").data).needed
    assert {"libtomcrypt.so.1", "libz.so.1", "libcrypt.so.1", "libc.so.6"} <= set(needed)
    assert checked > len(needed)


def test_sftp_server_where_dropbear_looks(entries) -> None:
    server = resolve(entries, "usr/lib/sftp-server")
    assert server.is_file and ElfFile(server.data).interpreter


def test_boot_modules_in_dependency_order(image, entries) -> None:
    listed = entries["etc/wdfhil/boot-modules"].data.decode().split()
    names = []
    for guest_path in listed:
        module = entries[guest_path.lstrip("/")]
        info = ElfFile(module.data, guest_path).modinfo
        assert info["vermagic"][0].split()[0] == image.kernel_version
        for dependency in module_depends(info):
            assert dependency in names, f"{guest_path} needs {dependency} loaded before it"
        names.append(info["name"][0])
    assert {"virtio_pci", "virtio_net", "virtio_ring", "virtio", "failover",
            "net_failover"} <= set(names)
    assert names.index("virtio_pci") < names.index("virtio_net")


def test_agent_is_static_and_module_matches_the_kernel(image, entries) -> None:
    agent = entries[image.agent_path.lstrip("/")]
    assert stat.S_IMODE(agent.mode) == 0o755
    elf = ElfFile(agent.data, "agent")
    assert elf.interpreter is None and not elf.is_dynamic and elf.needed == []
    module = ElfFile(entries[image.module_path.lstrip("/")].data, "wdfhil_pci.ko").modinfo
    assert module["vermagic"][0].split()[0] == image.kernel_version
    assert module["name"] == ["wdfhil_pci"]
    listed = entries["etc/wdfhil/boot-modules"].data.decode()
    assert "wdfhil_pci" not in listed, "the device helper loads it, not init"
    for dependency in module_depends(module):
        assert f"/{dependency}.ko" in listed.replace("-", "_")


def test_ssh_setup(image, entries) -> None:
    assert stat.S_IMODE(entries["root"].mode) == 0o700
    assert stat.S_IMODE(entries["root/.ssh"].mode) == 0o700
    keys = entries["root/.ssh/authorized_keys"]
    assert stat.S_IMODE(keys.mode) == 0o600
    client = paramiko.Ed25519Key.from_private_key_file(str(image.client_key))
    assert f"{client.get_name()} {client.get_base64()}" in keys.data.decode()
    host_key = entries["etc/dropbear/dropbear_ed25519_host_key"]
    assert stat.S_IMODE(host_key.mode) == 0o600
    public = paramiko.PKey.from_type_string("ssh-ed25519", __import__("base64").b64decode(
        image.host_key.split()[1]))
    assert host_key.data.endswith(public.asbytes()[-32:]), "host key file holds the pinned key"
    root = entries["etc/passwd"].data.decode().splitlines()[0].split(":")
    assert root[0] == "root" and root[1] and root[5] == "/root" and root[6] == "/bin/sh"
    conf = entries["etc/wdfhil/image.conf"].data.decode()
    assert "WDFHIL_READY_MARKER='WDFHIL-READY'" in conf and image.digest in conf


def test_second_build_is_a_cache_hit(image, session_build) -> None:
    manifest = image.folder / "image.json"
    before = manifest.stat().st_mtime_ns
    messages: list[str] = []
    again = build_image(cache_root=session_build.root, progress=messages.append)
    assert again == image
    assert manifest.stat().st_mtime_ns == before
    assert any("is in the cache" in message for message in messages), messages


def test_changed_guest_source_builds_a_new_image_with_it(image, session_build, tmp_path,
                                                         monkeypatch) -> None:
    guest = tmp_path / "guest"
    shutil.copytree(GUEST_SOURCES, guest, ignore=shutil.ignore_patterns(".*", "*.o"))
    (guest / "agent" / "test_marker.c").write_text(
        'const char wdfhil_test_marker[] = "changed-source-7d1f";\n')
    monkeypatch.setattr(cache, "GUEST_SOURCES", guest)
    monkeypatch.setattr(builder, "AGENT_SOURCES", guest / "agent")
    monkeypatch.setattr(builder, "MODULE_SOURCES", guest / "module")
    changed = build_image(cache_root=session_build.root)
    assert changed.digest != image.digest
    assert changed.host_key != image.host_key, "keys are per image"
    agent = read_initramfs(changed.initramfs)[changed.agent_path.lstrip("/")]
    assert b"changed-source-7d1f" in agent.data


def _recipe_copy(tmp_path: Path, old: str, new: str) -> Path:
    recipe = load_recipe(None)
    text = recipe.path.read_text()
    assert old in text
    text = text.replace(old, new).replace("init: ../init/init.sh",
                                          f"init: {recipe.init_script}")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    shutil.copy(recipe.lock_path, tmp_path / "broken.lock")
    return path


@pytest.mark.parametrize("old, new, field, value", [
    ("modules: [virtio_pci, virtio_net]",
     "modules: [virtio_pci, no_such_module]", "kernel.modules[1]",
     "no_such_module"),
    ("  - /usr/lib/sftp-server\n", "  - /usr/lib/sftp-server\n  - /usr/sbin/absent\n",
     "files[2]", "/usr/sbin/absent"),
])
def test_recipe_mistakes_found_while_building(session_build, tmp_path, old, new, field,
                                              value) -> None:
    """A module the kernel lacks or a file no package has is reported against the
    recipe's own line, and no image is published."""
    path = _recipe_copy(tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        build_image(path, cache_root=session_build.root)
    error = info.value
    assert error.file == str(path) and error.field == field and error.value == value
    assert value in path.read_text().splitlines()[error.line - 1]
    assert f"{path}:{error.line}:" in str(error)
    assert not list((session_build.root / "broken").rglob("image.json"))


def test_relock_pins_what_apt_offers() -> None:
    recipe = load_recipe(None)
    lock = resolve_lock(recipe)
    assert len(lock.with_role("kernel")) == 1
    assert lock.with_role("kernel")[0].name == f"linux-image-{lock.kernel_release}"
    assert len(lock.with_role("headers")) >= 3
    assert [p.name for p in lock.with_role("userland")] == list(recipe.packages)
    for pin in lock.packages[:3]:
        assert apt.show(pin.name, pin.version).sha256 == pin.sha256
