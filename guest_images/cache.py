"""Content-addressed caches: built images, and unpacked package trees.

A cached folder is named by a digest of everything that shapes it, and it is
filled once: under an ``fcntl`` lock on ``.<key>.lock`` (a second process
wanting the same folder waits, then finds it done), in a private
``.build-*`` folder next to the final one, which is renamed into place only
after a marker file (the image manifest, ``.complete``) is written. So a
folder that has its marker is whole, and a Ctrl-C or a crash leaves at most
a ``.build-*`` folder, which ``wdfhil image clean`` removes.

An image's digest covers the recipe's fields, the packages the build uses
(the lock's pins, or their re-resolution when the lock is stale), the init
script, the guest C sources, the generated ABI header and the builder's own
source. Unpacked trees (the kernel package, the headers packages, the
userland packages) are keyed by their packages' SHA256, so changing a guest
C source rebuilds the image without unpacking 10,000 header files again.
Layout: ``<images root>/<recipe>/<digest>/`` (beside them
``<pinned digest>.resolved.json``: the re-resolution a stale lock was built
with) and ``cache_dir("unpacked")/<role>/<key>/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from device_model.abi import render_c_header
from guest_images.guest_programs import GUEST_SOURCES
from guest_images.image import MANIFEST
from guest_images.lockfile import Lock, PinnedPackage
from guest_images.recipe import Recipe
from wdfhil.errors import ImageBuildError
from wdfhil.private_dirs import cache_dir, make_private_dir, remove_tree

_PACKAGE_DIR = Path(__file__).resolve().parent
# Builder modules whose code does not shape an image (the command line, its progress line).
_NOT_BUILDER = {"cli.py", "progress.py"}
BUILD_PREFIX = ".build-"
COMPLETE_MARKER = ".complete"


def default_images_root() -> Path:
    return cache_dir("images")


def default_unpacked_root() -> Path:
    return cache_dir("unpacked")


def _files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and not any(part.startswith((".", "__pycache__"))
                                                for part in path.relative_to(folder).parts))


def image_digest(recipe: Recipe, lock: Lock) -> str:
    """The content digest of the image ``recipe`` + ``lock`` would build (hex SHA256)."""
    digest = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    feed("recipe", json.dumps(recipe.identity(), sort_keys=True).encode())
    feed("lock", json.dumps(lock.identity()).encode())
    feed("init", recipe.init_script.read_bytes())
    feed("abi", render_c_header().encode())
    for path in _files_under(GUEST_SOURCES):
        feed(f"guest/{path.relative_to(GUEST_SOURCES).as_posix()}", path.read_bytes())
    for path in sorted(_PACKAGE_DIR.glob("*.py")):
        if path.name not in _NOT_BUILDER:
            feed(f"builder/{path.name}", path.read_bytes())
    return digest.hexdigest()


def unpacked_key(pins: list[PinnedPackage], preparation: str) -> str:
    """Key of an unpacked tree: its packages' hashes and how it was prepared."""
    text = json.dumps([[p.name, p.sha256] for p in pins] + [preparation])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@contextlib.contextmanager
def exclusive(parent: Path, key: str, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the lock of ``parent/key``; yields False (without waiting) when ``blocking``
    is False and another process holds it. The lock file stays: unlinking a file
    others may be waiting to lock is a race."""
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(parent / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def cached_folder(parent: Path, key: str, marker: str, fill: Callable[[Path], None]) -> Path:
    """``parent/key``, made by ``fill(folder)`` unless it is already there.

    ``fill`` must write ``marker`` last; the folder is renamed into place
    only then. A failure or Ctrl-C inside ``fill`` removes the half-made
    folder and leaves the cache as it was.
    """
    final = parent / key
    if (final / marker).exists():
        return final
    with exclusive(parent, key):
        if (final / marker).exists():  # made by another process while we waited
            return final
        scratch = make_private_dir(f"{BUILD_PREFIX}{key[:16]}-", parent)
        try:
            fill(scratch)
            if not (scratch / marker).exists():
                raise ImageBuildError(f"internal error: {scratch} was filled without {marker}")
            if final.exists():  # a folder without its marker: never complete
                remove_tree(final)
            os.rename(scratch, final)
        finally:
            remove_tree(scratch)
    return final


def remove_abandoned_builds(root: Path) -> int:
    """Remove ``.build-*`` folders a killed process left under ``root`` (one whose key
    is locked by a running build is kept)."""
    removed = 0
    for scratch in sorted(root.rglob(f"{BUILD_PREFIX}*")):
        if not scratch.is_dir():
            continue
        prefix = scratch.name[len(BUILD_PREFIX):].split("-")[0]
        keys = [lock.name[1:-len(".lock")] for lock in scratch.parent.glob(f".{prefix}*.lock")]
        with contextlib.ExitStack() as held:
            if all(held.enter_context(exclusive(scratch.parent, key, blocking=False))
                   for key in keys):
                remove_tree(scratch)
                removed += 1
    return removed


@dataclass(frozen=True)
class RememberedResolution:
    """A lock that was stale when an image was built: the digest the image got from
    the re-resolved packages, the notice printed then, and those packages."""

    digest: str
    notice: str
    lock: Lock


RESOLUTION_SUFFIX = ".resolved.json"


@dataclass(frozen=True)
class CachedImage:
    name: str
    digest: str
    folder: Path
    size: int          # bytes on disk
    built_at: float    # mtime of the manifest


class ImageStore:
    """Built images under one root: ``<root>/<recipe name>/<digest>/``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_images_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ImageBuildError(f"cannot create the image cache {self.root}: {exc}") from None

    def folder(self, name: str, digest: str) -> Path:
        return self.root / name / digest

    def is_built(self, name: str, digest: str) -> bool:
        return (self.folder(name, digest) / MANIFEST).is_file()

    def build(self, name: str, digest: str, fill: Callable[[Path], None]) -> Path:
        """The image folder, filled by ``fill`` (which writes the manifest last) if needed."""
        return cached_folder(self.root / name, digest, MANIFEST, fill)

    def _resolution_file(self, name: str, pinned_digest: str) -> Path:
        return self.root / name / f"{pinned_digest}{RESOLUTION_SUFFIX}"

    def remember_resolution(self, name: str, pinned_digest: str, digest: str, notice: str,
                            lock: Lock) -> None:
        """Remember that the lock whose image would be ``pinned_digest`` was stale and
        built as ``digest``, so the next build finds that image without asking apt."""
        path = self._resolution_file(name, pinned_digest)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"digest": digest, "notice": notice,
                                         "lock": lock.to_data()}, indent=1))
        os.replace(temporary, path)

    def resolution(self, name: str, pinned_digest: str) -> RememberedResolution | None:
        """What :meth:`remember_resolution` wrote for this lock (None if nothing, or
        damaged: then the build just resolves again)."""
        try:
            data = json.loads(self._resolution_file(name, pinned_digest).read_text())
            return RememberedResolution(data["digest"], data["notice"],
                                        Lock.from_data(data["lock"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def forget_resolutions(self, keep: set[tuple[str, str]]) -> int:
        """Remove the remembered resolutions of every (name, pinned digest) not in ``keep``."""
        removed = 0
        for path in self.root.glob(f"*/*{RESOLUTION_SUFFIX}"):
            key = (path.parent.name, path.name[:-len(RESOLUTION_SUFFIX)])
            if key not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def images(self) -> list[CachedImage]:
        found = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest.parent
            size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
            found.append(CachedImage(folder.parent.name, folder.name, folder, size,
                                     manifest.stat().st_mtime))
        return found

    def remove(self, name: str, digest: str) -> None:
        with exclusive(self.root / name, digest):
            remove_tree(self.folder(name, digest))
