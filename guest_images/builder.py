"""Building a guest image from a recipe: :func:`build_image`.

The steps, in order: read the lock, compute the content digest and return
the cached image when there is one; otherwise decide which packages the
build uses (the pins, or, when Debian has replaced some, the recipe
re-resolved within the lock's suite: :func:`~guest_images.lockfile.
resolve_build`), fetch and check
the .deb files, unpack them (nothing is installed on the host), pick the
boot modules and their dependencies, compile the agent and the kernel
module, generate the keys, assemble the root tree, write the initramfs and
publish the image folder atomically. The work folder is private and always
removed; a Ctrl-C leaves neither a half image nor a temporary folder.
"""

from __future__ import annotations

import logging
import threading
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from guest_images import apt
from guest_images.cache import (COMPLETE_MARKER, ImageStore, cached_folder,
                                default_unpacked_root, image_digest, unpacked_key)
from guest_images.cpio import write_initramfs
from guest_images.guest_programs import (AGENT_BINARY, AGENT_SOURCES, HEADERS_PREPARATION,
                                         MODULE_SOURCES, compile_agent, compile_module,
                                         kernel_build_dir, prepare_kernel_headers,
                                         write_abi_header)
from guest_images.image import CLIENT_KEY_FILE, INITRAMFS_FILE, KERNEL_FILE, GuestImage
from guest_images.keys import generate_client_key, generate_host_key
from guest_images.kmodules import KernelModule, ModuleTree, module_file_depends
from guest_images.lockfile import ROLES, Lock, PinnedPackage, Resolution, relock_hint
from guest_images.lockfile import locked as recipe_lock
from guest_images.lockfile import resolve_build, strict_mode
from guest_images.recipe import Recipe, load_recipe
from guest_images.rootfs import GuestTree, StagingTree
from wdfhil.errors import ImageBuildError
from wdfhil.private_dirs import cache_dir, private_dir

log = logging.getLogger(__name__)

READY_MARKER = "WDFHIL-READY"
INIT_FAILED_MARKER = "WDFHIL-INIT-FAILED"
SSH_USER = "root"
SSH_PORT = 22
AGENT_GUEST_PATH = "/usr/bin/wdfhil-agent"
MODULE_GUEST_PATH = "/lib/modules/wdfhil/wdfhil_pci.ko"
HOST_KEY_GUEST_PATH = "/etc/dropbear/dropbear_ed25519_host_key"
BOOT_MODULES_GUEST_PATH = "/etc/wdfhil/boot-modules"
IMAGE_CONF_GUEST_PATH = "/etc/wdfhil/image.conf"
# The command relay (agent relay.c) on the guest's second serial port, which the
# orchestrator adds as an isa-serial for images whose manifest names it
RELAY_TTY = "/dev/ttyS1"
RELAY_READY_GUEST_PATH = "/run/wdfhil-relay.ready"

Progress = Callable[[str], None]

# How the unpacked tree of a role is changed after unpacking (part of its cache key).
_PREPARATIONS = {"headers": HEADERS_PREPARATION}


def unpacked_tree_key(lock: Lock, role: str) -> str:
    """Key of the cached unpacked tree of ``role``'s packages in ``lock``."""
    return unpacked_key(lock.with_role(role), _PREPARATIONS.get(role, ""))


def build_image(recipe: str | Path | None = None, *, cache_root: Path | None = None,
                progress: Progress | None = None, locked: bool | None = None) -> GuestImage:
    """The image of ``recipe`` (a name, a recipe file, or None for the default),
    from the cache when its content digest is there, else built now.

    ``cache_root`` (default ``cache_dir("images")``) holds the images; the
    downloaded packages (``cache_dir("debs")``, checked by SHA256) and the
    unpacked package trees (``cache_dir("unpacked")``, keyed by SHA256) are
    shared by every root. ``progress`` receives one line per step; the
    stale-lock notice goes to its ``notice`` method when it has one.
    ``locked`` (default: ``WDFHIL_LOCKED`` in the environment) refuses to
    build when a pinned version can no longer be had, instead of
    re-resolving the recipe within the lock's suite.
    """
    say = _serialized(progress or log.info)
    notify = _serialized(getattr(progress, "notice", None) or progress or log.warning)
    strict = strict_mode(locked)
    loaded = load_recipe(recipe)
    pinned = recipe_lock(loaded, say)
    digest = image_digest(loaded, pinned)
    store = ImageStore(cache_root)
    cached = _cached_image(store, loaded.name, digest, say)
    if cached is not None:
        return cached
    if not strict:  # built before from a re-resolution of this same lock?
        earlier = store.resolution(loaded.name, digest)
        if earlier is not None and store.is_built(loaded.name, earlier.digest):
            cached = _cached_image(store, loaded.name, earlier.digest, say)
            if cached is not None:
                notify(earlier.notice)
                return cached
    started = time.monotonic()
    resolution = resolve_build(loaded, pinned, strict=strict,
                               have_locally=_have_locally(pinned), progress=say)
    if resolution.re_resolved:
        notice = resolution.notice(loaded.lock_path)
        notify(notice)
        pinned_digest, digest = digest, image_digest(loaded, resolution.lock)
        store.remember_resolution(loaded.name, pinned_digest, digest, notice,
                                  resolution.lock)
        cached = _cached_image(store, loaded.name, digest, say)
        if cached is not None:
            return cached

    def fill(output: Path) -> None:
        with private_dir("wdfhil-image-") as work:
            ImageBuild(loaded, resolution, digest, work, output, say).run()

    folder = store.build(loaded.name, digest, fill)
    say(f"image {loaded.name} {digest[:12]} ready after {time.monotonic() - started:.1f} s")
    return GuestImage.from_folder(folder)


def _cached_image(store: ImageStore, name: str, digest: str, say: Progress) -> GuestImage | None:
    """The cached image ``digest`` if it is there and whole; a damaged one (a file
    truncated or changed since its build, or a manifest from before file digests)
    is removed, said in one line, and None makes the caller build it again."""
    if not store.is_built(name, digest):
        return None
    try:
        image = GuestImage.from_folder(store.folder(name, digest))
        image.verify()
    except ImageBuildError as exc:
        say(f"{exc}; removing it and building it again")
        store.remove(name, digest)
        return None
    say(f"image {name} {digest[:12]} is in the cache")
    return image


def _have_locally(lock: Lock) -> Callable[[PinnedPackage], bool]:
    """Whether a pin needs nothing from apt: its role's unpacked tree is cached, or its
    .deb is (with the pinned SHA256)."""
    unpacked = {role: (default_unpacked_root() / role / unpacked_tree_key(lock, role)
                       / COMPLETE_MARKER).exists() for role in ROLES}
    debs = cache_dir("debs")

    def have(pin: PinnedPackage) -> bool:
        return unpacked[pin.role] or apt.cached_deb(pin.name, pin.version, pin.arch,
                                                    pin.sha256, debs) is not None
    return have


def _serialized(progress: Progress) -> Progress:
    """``progress`` made safe to call from the builder's worker threads (one call at a
    time, so a callback that is not thread-safe still works)."""
    guard = threading.Lock()

    def say(message: str) -> None:
        with guard:
            progress(message)
    return say


class ImageBuild:
    """One build of one image: each step a method, run in order by :meth:`run`."""

    def __init__(self, recipe: Recipe, resolution: Resolution, digest: str, work: Path,
                 output: Path, say: Progress) -> None:
        self.recipe = recipe
        self.resolution = resolution
        self.lock = resolution.lock
        self.digest = digest
        self.work = work
        self.output = output
        self.say = say
        self.release = self.lock.kernel_release
        self.tree = GuestTree()

    def run(self) -> None:
        # Unpacking and compiling wait on disk and compilers, not on Python: the
        # independent steps run side by side (a cold build is about twice as fast).
        with ThreadPoolExecutor(max_workers=4) as pool:
            kernel_root = pool.submit(self.unpacked, "kernel")
            headers_root = pool.submit(self.unpacked, "headers", prepare=lambda root:
                                       prepare_kernel_headers(root, self.release))
            staging_root = pool.submit(self.unpacked, "userland")
            include_dir = self.work / "include"
            write_abi_header(include_dir)
            self.say("compiling the guest agent")
            agent_done = pool.submit(compile_agent, AGENT_SOURCES, include_dir,
                                     self.work / AGENT_BINARY)
            build_dir = kernel_build_dir(headers_root.result(), self.release)
            self.say("compiling the guest kernel module")
            module_done = pool.submit(compile_module, MODULE_SOURCES, include_dir, build_dir,
                                      self.work / "module", self.release)
            vmlinuz = kernel_root.result() / "boot" / f"vmlinuz-{self.release}"
            if not vmlinuz.is_file():
                raise ImageBuildError(f"the kernel package has no boot/vmlinuz-{self.release}")
            modules = ModuleTree(kernel_root.result(), self.release)
            boot_modules = self.boot_modules(modules)
            staging = StagingTree(staging_root.result())
            agent, module = agent_done.result(), module_done.result()
        # What wdfhil_pci.ko itself needs is loaded at boot, so a plain insmod of it works.
        loaded = {m.name for m in boot_modules}
        boot_modules += [m for m in modules.load_order(module_file_depends(module))
                         if m.name not in loaded]

        self.say("assembling the root file system")
        self.add_base_system(staging)
        for kernel_module in boot_modules:
            self.tree.add_file(kernel_module.guest_path, kernel_module.data)
        self.tree.add_file(BOOT_MODULES_GUEST_PATH,
                           "".join(f"{m.guest_path}\n" for m in boot_modules).encode())
        self.tree.add_file(AGENT_GUEST_PATH, agent.read_bytes(), 0o755)
        self.tree.add_file(MODULE_GUEST_PATH, module.read_bytes())
        host_key = self.add_ssh_keys()

        self.say(f"writing the initramfs ({len(self.tree.entries())} entries, "
                 f"{self.tree.data_size / 2**20:.1f} MiB)")
        write_initramfs(self.tree.entries(), self.output / INITRAMFS_FILE, compress=False)
        self.publish(vmlinuz, host_key, boot_modules)

    def publish(self, vmlinuz: Path, host_key: str, boot_modules: list[KernelModule]) -> None:
        """Copy the kernel and write the manifest: last, its presence marks a whole image."""
        shutil.copyfile(vmlinuz, self.output / KERNEL_FILE)
        image = GuestImage(
            name=self.recipe.name, digest=self.digest, kernel=self.output / KERNEL_FILE,
            initramfs=self.output / INITRAMFS_FILE, kernel_cmdline=self.recipe.kernel_cmdline,
            client_key=self.output / CLIENT_KEY_FILE, host_key=host_key, ssh_user=SSH_USER,
            ready_marker=READY_MARKER, kernel_version=self.release,
            agent_path=AGENT_GUEST_PATH, module_path=MODULE_GUEST_PATH,
            details={
                "recipe": str(self.recipe.path),
                "kernel_package": self.lock.with_role("kernel")[0].name,
                "packages": self.lock.versions(),
                "lock": self.resolution.to_data(self.recipe.lock_path),
                "boot_modules": [m.guest_path for m in boot_modules],
                "init_failed_marker": INIT_FAILED_MARKER,
                "ssh_port": SSH_PORT,
                "command_relay": RELAY_TTY,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
        image.with_file_records().write_manifest()

    def unpacked(self, role: str, *, prepare: Callable[[Path], None] | None = None) -> Path:
        """The packages of ``role`` unpacked together (and prepared), from the shared
        cache of unpacked trees; their .deb files are fetched only when it misses."""
        pins = self.lock.with_role(role)
        debs_dir = cache_dir("debs")

        def fill(folder: Path) -> None:
            root = folder / "root"
            for pin in pins:
                if apt.cached_deb(pin.name, pin.version, pin.arch, pin.sha256,
                                  debs_dir) is None:
                    self.say(f"downloading {pin.name} {pin.version} "
                             f"({pin.size / 2**20:.1f} MiB)")
                deb = apt.fetch_deb(pin.name, pin.version, pin.arch, pin.sha256, debs_dir,
                                    relock_hint=relock_hint(self.recipe))
                self.say(f"unpacking {pin.name} {pin.version}")
                apt.extract_deb(deb, root)
            if prepare is not None:
                prepare(root)
            (folder / COMPLETE_MARKER).touch()

        return cached_folder(default_unpacked_root() / role, unpacked_tree_key(self.lock, role),
                             COMPLETE_MARKER, fill) / "root"

    def boot_modules(self, modules: ModuleTree) -> list[KernelModule]:
        for index, name in enumerate(self.recipe.boot_modules):
            if name not in modules:
                raise self.recipe.error(f"kernel.modules[{index}]", f"kernel module {name!r} "
                                        f"is not in the kernel package of release "
                                        f"{self.release}", name)
        order = modules.load_order(self.recipe.boot_modules)
        for kernel_module in order:
            if kernel_module.vermagic.split(" ")[0] != self.release:
                raise ImageBuildError(f"{kernel_module.source}: vermagic "
                                      f"{kernel_module.vermagic!r} is not {self.release}")
        return order

    def add_base_system(self, staging: StagingTree) -> None:
        tree = self.tree
        for folder, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777),
                             ("root", 0o700), ("root/.ssh", 0o700), ("run", 0o755),
                             ("var/log", 0o755), ("etc/dropbear", 0o755)):
            tree.add_dir(folder, mode)
        # The kernel opens /dev/console for init before init can mount devtmpfs.
        tree.add_char_device("dev/console", 5, 1, 0o600)
        tree.add_char_device("dev/null", 1, 3, 0o666)

        recipe = self.recipe
        if not staging.exists(recipe.busybox):
            raise recipe.error("busybox", f"{recipe.busybox} is in none of the recipe's "
                               "packages", recipe.busybox)
        staging.install(tree, recipe.busybox)
        busybox_target = "/" + staging.resolve(recipe.busybox)
        for applet in staging.busybox_applets(recipe.busybox):
            if applet not in tree:
                tree.add_symlink(applet, busybox_target)
        for index, path in enumerate(recipe.files):
            if not staging.exists(path):
                raise recipe.error(f"files[{index}]", f"{path} is in none of the recipe's "
                                   "packages", path)
            staging.install(tree, path)

        tree.add_file("init", recipe.init_script.read_bytes(), 0o755)
        tree.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        tree.add_file("etc/group", b"root:x:0:\ntty:x:5:\n")
        tree.add_file("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600)
        tree.add_file("etc/shells", b"/bin/sh\n")
        tree.add_file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\n"
                                           b"hosts: files dns\n")
        tree.add_file("etc/hosts", b"127.0.0.1 localhost\n127.0.1.1 wdfhil\n")
        settings = {
            "WDFHIL_IMAGE": f"{recipe.name}@{self.digest}",
            "WDFHIL_KERNEL_RELEASE": self.release,
            "WDFHIL_ADDRESS": recipe.address,
            "WDFHIL_GATEWAY": recipe.gateway,
            "WDFHIL_SSH_PORT": str(SSH_PORT),
            "WDFHIL_HOST_KEY": HOST_KEY_GUEST_PATH,
            "WDFHIL_READY_MARKER": READY_MARKER,
            "WDFHIL_AGENT": AGENT_GUEST_PATH,
            "WDFHIL_MODULE": MODULE_GUEST_PATH,
            "WDFHIL_RELAY_TTY": RELAY_TTY,
            "WDFHIL_RELAY_READY": RELAY_READY_GUEST_PATH,
        }
        tree.add_file(IMAGE_CONF_GUEST_PATH,
                      "".join(f"{key}='{value}'\n" for key, value in settings.items()).encode())

    def add_ssh_keys(self) -> str:
        """Generate the image's keys; return the host key's public line (to pin)."""
        client = generate_client_key(f"wdfhil-{self.recipe.name}-{self.digest[:12]}")
        client.write(self.output / CLIENT_KEY_FILE)
        self.tree.add_file("root/.ssh/authorized_keys", (client.public_line + "\n").encode(),
                           0o600)
        host = generate_host_key()
        self.tree.add_file(HOST_KEY_GUEST_PATH, host.dropbear, 0o600)
        (self.output / "host_key.pub").write_text(host.public_line + "\n")
        return host.public_line
