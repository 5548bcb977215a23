"""The content-addressed image cache.

An image's digest covers everything that shapes it: the recipe's fields,
the lock's pins, the init script, the guest C sources, the generated ABI
header and the builder's own source. Same digest, same image: the build is
skipped. Layout: ``<root>/<recipe name>/<digest>/`` holding the image and
its manifest. A build happens in ``<root>/<name>/.build-*`` (a private
folder next to the final one, so publishing is one atomic rename) while an
``fcntl`` lock on ``<root>/<name>/.<digest>.lock`` keeps two processes from
building the same image at once: the second waits, then finds it built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from device_model.abi import render_c_header
from guest_images.guest_programs import GUEST_SOURCES
from guest_images.image import MANIFEST, GuestImage
from guest_images.lockfile import Lock
from guest_images.recipe import Recipe
from wdfhil.errors import ImageBuildError
from wdfhil.private_dirs import cache_dir, make_private_dir, remove_tree

_PACKAGE_DIR = Path(__file__).resolve().parent
# Builder modules whose code shapes an image (the command line does not).
_NOT_BUILDER = {"cli.py"}
BUILD_PREFIX = ".build-"


def default_root() -> Path:
    return cache_dir("images")


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


@dataclass(frozen=True)
class CachedImage:
    name: str
    digest: str
    folder: Path
    size: int          # bytes on disk
    built_at: float    # mtime of the manifest


class ImageStore:
    """Images under one cache root."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def folder(self, name: str, digest: str) -> Path:
        return self.root / name / digest

    def find(self, name: str, digest: str) -> GuestImage | None:
        """The published image, or None when it was never built."""
        folder = self.folder(name, digest)
        if not (folder / MANIFEST).is_file():
            return None
        return GuestImage.from_folder(folder)

    @contextlib.contextmanager
    def build_lock(self, name: str, digest: str) -> Iterator[None]:
        """Exclusive right to build ``name``/``digest`` (blocks while another process has it)."""
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(parent / f".{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def new_image_folder(self, name: str, digest: str) -> Iterator[Path]:
        """A private folder to assemble the image in; :meth:`publish` moves it into place.
        Removed on leaving if it was not published (failure, Ctrl-C)."""
        folder = make_private_dir(f"{BUILD_PREFIX}{digest[:16]}-", self.root / name)
        try:
            yield folder
        finally:
            remove_tree(folder)

    def publish(self, assembled: Path, name: str, digest: str) -> Path:
        final = self.folder(name, digest)
        if final.exists():  # left by a build whose manifest never got written
            remove_tree(final)
        os.rename(assembled, final)
        return final

    def images(self) -> list[CachedImage]:
        found = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            folder = manifest.parent
            size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
            found.append(CachedImage(folder.parent.name, folder.name, folder, size,
                                     manifest.stat().st_mtime))
        return found

    def remove(self, name: str, digest: str) -> None:
        # The lock file stays: unlinking a file others may be waiting to flock is a race.
        with self.build_lock(name, digest):
            remove_tree(self.folder(name, digest))

    def remove_abandoned_builds(self) -> int:
        """Remove build folders a killed process left (none is in use: each build
        holds its digest's lock, which we take before removing)."""
        removed = 0
        for folder in self.root.glob(f"*/{BUILD_PREFIX}*"):
            prefix = folder.name[len(BUILD_PREFIX):].split("-")[0]
            locks = list(folder.parent.glob(f".{prefix}*.lock"))
            fds = [os.open(lock, os.O_RDWR) for lock in locks]
            try:
                if all(_try_lock(fd) for fd in fds):
                    remove_tree(folder)
                    removed += 1
            finally:
                for fd in fds:
                    os.close(fd)
        return removed


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ImageBuildError(f"cannot create the image cache {root}: {exc}") from None
