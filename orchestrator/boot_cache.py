"""Booted guests saved on disk, so a run restores instead of booting: :class:`BootCache`.

A cold boot costs seconds under TCG; the state of a guest just booted (module
loaded, agent ready, no device: it is hot-plugged after each restore, see
:mod:`orchestrator.dma_session`) is the same every time for one image, guest
config, accelerator and QEMU. So it is saved once per such key on a machine,
in the folder of the image (``<image folder>/boot-states/KEY``: the state file,
the sparse RAM copy, ``meta.json`` with their sizes and CRC-32s; removing the
image, as ``wdfhil image clean`` does, removes its states), and every later
guest of that key, in this run or the next, restores from it. Before the save
the guest's free memory is zeroed (:func:`zero_free_memory`), so the RAM copy
holds only the data the guest uses.

Safety: an entry is written into a scratch folder and renamed into place
under the key's lock (``guest_images.cache.cached_folder``), so two runs on
one machine never see half an entry; and a cold boot to fill it happens under
the key's boot lock (:meth:`BootCache.boot_lock`), so only one of them boots.
An entry is checked before its first use in a process (sizes, the state
file's CRC-32, the QEMU magic: :meth:`Snapshot.verify`; the RAM copy's CRC-32
as the first restore copies it, :meth:`Snapshot.copy_ram`); a damaged one is
moved aside, removed and reported (``discarded``), and the caller boots cold
and saves it again.
Entries are never removed by their users: snapshots made here do not own
their files (``owned=False``). Saving an entry removes the other entries of
the same guest config name and accelerator (another image of the recipe, QEMU or
wiring), so rebuilt images do not pile up states.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from orchestrator.guest_config import GuestConfig
from orchestrator.qemu_command import DEFAULT_QEMU, build_qemu_argv
from orchestrator.snapshot import STATE_FILE, Snapshot
from wdfhil.errors import ConfigError, SnapshotCorrupted
from wdfhil.private_dirs import cache_dir, make_private_dir, remove_tree

if TYPE_CHECKING:
    from guest_images import GuestImage
    from orchestrator.vm import VM

log = logging.getLogger(__name__)

FORMAT = 2           # bump when what an entry holds changes (2: free memory zeroed)
META_FILE = "meta.json"
STATES_FOLDER = "boot-states"   # in an image's folder, or the cache's before format 2
COMPLETE = ".complete"
BOOT_LOCK_SUFFIX = "-boot"


@functools.lru_cache(maxsize=None)
def qemu_identity(binary: str = DEFAULT_QEMU) -> str:
    """QEMU's version line and the binary's size and mtime: a state saved by one
    QEMU build is not offered to another."""
    path = shutil.which(binary) or binary
    try:
        info = os.stat(path)
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"cannot ask {binary} for its version: {exc}") from None
    return f"{' '.join(version)}|{path}|{info.st_size}|{info.st_mtime_ns}"


def entry_key(config: GuestConfig, image: "GuestImage", accelerator: str,
              qemu_binary: str = DEFAULT_QEMU) -> str:
    """The key of a post-boot state: image digest, the guest config as QEMU and the
    guest see it (not its name or description), the QEMU command line it gives (with
    placeholders for what differs per run: a change to the wiring is a new key),
    accelerator, QEMU build."""
    shape = dataclasses.asdict(config)
    for unseen in ("name", "description", "source", "field_lines"):
        shape.pop(unseen, None)
    argv = build_qemu_argv(config, image, accelerator=accelerator, ram_file=Path("RAM"),
                           console_fd=-1, qmp_fd=-1, relay_fd=-1, name="NAME", incoming=True,
                           qemu_binary=qemu_binary)
    text = json.dumps({"format": FORMAT, "image": image.digest, "config": shape,
                       "argv": argv, "accelerator": accelerator,
                       "qemu": qemu_identity(qemu_binary)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


# The guest-side step before a post-boot save: a tmpfs of nearly all free memory is
# filled (fallocate) and removed, so the pages it got hold zeros when freed (the
# kernel zeroes pages as it hands them out: init_on_alloc, on in Debian's kernels);
# the save leaves all-zero pages out of the RAM copy. Free memory of a booted guest
# otherwise holds what boot left there (the unpacked initramfs, the compressed
# kernel): pc-256m, 97 MiB of non-zero pages without the step, 66 MiB with (RAM copy
# 74 MiB); q35-1g, RAM copy 112 MiB without, 102 MiB with at most 256 or 512 MiB
# filled (the pages freed last are handed out first). A margin stays free (nothing
# else in the guest runs short); at most ZERO_FILL_MAX_MIB is filled (about 0.3 s per
# 100 MiB under TCG, once per key; the saved VM's RAM file keeps those pages).
ZERO_FILL_MARGIN_MIB = 16
ZERO_FILL_MAX_MIB = 256
ZERO_FREE_MEMORY = (   # a subshell: `exit` must not end the session's shell
    "(free=$(sed -n 's/^MemFree: *\\([0-9]*\\) kB$/\\1/p' /proc/meminfo); "
    f"fill=$(( free / 1024 - {ZERO_FILL_MARGIN_MIB} )); "
    f"[ $fill -gt {ZERO_FILL_MAX_MIB} ] && fill={ZERO_FILL_MAX_MIB}; "
    "[ $fill -gt 0 ] || exit 0; "
    "dir=$(mktemp -d) || exit 1; "
    "if mount -t tmpfs -o size=${fill}m,mode=0700 wdfhil-zero-fill \"$dir\"; then "
    "fallocate -l ${fill}m \"$dir/zero\"; status=$?; umount \"$dir\"; else status=1; fi; "
    "rmdir \"$dir\"; exit $status)"
)


def zero_free_memory(vm: "VM") -> None:
    """Zero most of the running guest's free memory (:data:`ZERO_FREE_MEMORY`) so the
    saved RAM copy holds only what the guest uses. Speed only: a failure is logged."""
    result = vm.run(ZERO_FREE_MEMORY, timeout=120.0)
    if result.exit_code != 0:
        log.warning("zeroing the free memory of %s before its save failed (exit %d: %s); "
                    "the saved state is larger, not wrong", vm.name, result.exit_code,
                    (result.stderr or result.stdout).strip()[-200:])


class BootCache:
    """Post-boot states on disk, keyed by :func:`entry_key`: in the folder of the
    image they were booted from (``<image folder>/boot-states/KEY``, so removing an
    image, ``wdfhil image clean``, removes its states), or all under ``root``."""

    def __init__(self, root: Path | None = None, *, qemu_binary: str = DEFAULT_QEMU) -> None:
        self.root = Path(root) if root is not None else None
        self.qemu_binary = qemu_binary
        self._verified: dict[str, Snapshot] = {}   # checked once per process
        self._swept: set[Path] = set()
        self.discarded: list[str] = []             # why entries were thrown away
        if root is None:
            _remove_legacy_states()

    def root_for(self, image: "GuestImage") -> Path:
        """Where the entries of ``image`` live; scratch folders of killed runs there
        are removed on the first look."""
        root = self.root if self.root is not None else image.folder / STATES_FOLDER
        if root not in self._swept:
            self._swept.add(root)
            if root.is_dir():
                from guest_images.cache import remove_abandoned_builds
                remove_abandoned_builds(root)
        return root

    def key(self, config: GuestConfig, image: "GuestImage", accelerator: str) -> str:
        return entry_key(config, image, accelerator, self.qemu_binary)

    def lookup(self, config: GuestConfig, image: "GuestImage", accelerator: str
               ) -> Snapshot | None:
        """The saved post-boot state of this key, checked; None if there is none
        (or it was damaged: then it is removed and the reason kept in ``discarded``)."""
        key = self.key(config, image, accelerator)
        known = self._verified.get(key)
        root = self.root_for(image)
        folder = root / key
        if known is not None and (folder / COMPLETE).exists():
            return known
        if not (folder / COMPLETE).exists():
            return None
        try:
            snapshot = self._open(folder, config, image, accelerator)
            # the RAM copy's CRC-32 is checked as the first restore copies it (one read
            # of 120-250 MiB, not two): a damaged one fails that restore, and
            # GuestSessions then discards the entry and boots cold
            snapshot.check_compatible(config, image, ram_crc=False)
        except (SnapshotCorrupted, ConfigError, OSError, ValueError, KeyError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("the saved post-boot state %s is unusable (%s); it is removed and "
                        "the guest boots cold", folder, reason)
            self.discarded.append(reason)
            self._discard(root, key)
            return None
        self._verified[key] = snapshot
        return snapshot

    @contextlib.contextmanager
    def boot_lock(self, config: GuestConfig, image: "GuestImage", accelerator: str
                  ) -> Iterator[None]:
        """Held while a guest of this key boots cold to be saved: another run wanting
        the same key waits here, then finds the state saved (one cold boot per key on
        a machine). Its own lock file, apart from the entry's (which ``store`` takes):
        a second ``flock`` of one file in one process would wait for itself."""
        from guest_images.cache import exclusive

        with exclusive(self.root_for(image),
                       self.key(config, image, accelerator) + BOOT_LOCK_SUFFIX):
            yield

    def store(self, vm: "VM") -> Snapshot:
        """Save the running ``vm`` (just booted, module loaded, no device) as the
        post-boot state of its key, unless another run saved it meanwhile."""
        assert vm.accelerator is not None
        key = self.key(vm.config, vm.image, vm.accelerator)
        from guest_images.cache import cached_folder

        def fill(scratch: Path) -> None:
            zero_free_memory(vm)
            saved = vm.save(scratch / STATE_FILE, owned=False)
            meta = {"format": FORMAT, "config": vm.config.name, "image": vm.image.digest,
                    "accelerator": saved.accelerator, "qemu": qemu_identity(self.qemu_binary),
                    "state_size": saved.size, "state_crc32": saved.crc32,
                    "ram_size": saved.ram_size, "ram_crc32": saved.ram_crc32}
            (scratch / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            (scratch / COMPLETE).touch()

        self._verified.pop(key, None)
        folder = cached_folder(self.root_for(vm.image), key, COMPLETE, fill)
        self._prune_superseded(vm.image, key, json.loads((folder / META_FILE).read_text()))
        snapshot = self._open(folder, vm.config, vm.image, vm.accelerator)
        snapshot.verify(ram_crc=False)   # the RAM copy's as the first restore copies it
        self._verified[key] = snapshot
        return snapshot

    def _prune_superseded(self, image: "GuestImage", key: str, meta: dict) -> None:
        """Remove the other entries of the same guest config name and accelerator
        (another image of the same recipe, QEMU or wiring: an image rebuilt after a
        change): each holds the guest's RAM data (70-250 MiB), and they would pile up."""
        roots = [self.root] if self.root is not None else \
            sorted(image.folder.parent.glob(f"*/{STATES_FOLDER}"))   # the recipe's images
        for folder in [entry for root in roots for entry in root.iterdir()]:
            if folder.name == key or not (folder / COMPLETE).exists():
                continue
            try:
                other = json.loads((folder / META_FILE).read_text())
            except (OSError, ValueError):
                continue
            if (other.get("config"), other.get("accelerator")) == (
                    meta["config"], meta["accelerator"]):
                self._discard(folder.parent, folder.name)

    def _open(self, folder: Path, config: GuestConfig, image: "GuestImage",
              accelerator: str) -> Snapshot:
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("format") != FORMAT or meta.get("image") != image.digest \
                or meta.get("accelerator") != accelerator:
            raise ConfigError(f"{folder / META_FILE} does not describe this key")
        state = folder / STATE_FILE
        snapshot = Snapshot(state, config=config, image_digest=image.digest,
                            accelerator=accelerator, ram_file=Snapshot.ram_path(state),
                            owned=False)
        snapshot.size, snapshot.crc32 = int(meta["state_size"]), int(meta["state_crc32"])
        snapshot.ram_size, snapshot.ram_crc32 = int(meta["ram_size"]), int(meta["ram_crc32"])
        return snapshot

    def discard(self, config: GuestConfig, image: "GuestImage", accelerator: str,
                reason: str) -> None:
        """Throw away the entry of this key (it did not restore); ``reason`` is kept."""
        self.discarded.append(reason)
        self._discard(self.root_for(image), self.key(config, image, accelerator))

    def _discard(self, root: Path, key: str) -> None:
        """Move a damaged entry aside (atomically, under its lock) and remove it."""
        from guest_images.cache import BUILD_PREFIX, exclusive

        self._verified.pop(key, None)
        with exclusive(root, key):
            folder = root / key
            if not folder.exists():
                return
            # a scratch name: if this process dies here, the next BootCache sweeps it
            aside = make_private_dir(f"{BUILD_PREFIX}{key[:16]}-", root)
            os.rename(folder, aside / key)
            remove_tree(aside)


def _remove_legacy_states() -> None:
    """Remove ``cache_dir("boot-states")``, where entries lived before they moved into
    their image's folder (format 1): nothing reads them any more."""
    legacy = cache_dir() / STATES_FOLDER
    if legacy.is_dir():
        try:
            remove_tree(legacy)
        except OSError as exc:
            log.warning("could not remove the old post-boot states in %s: %s", legacy, exc)
