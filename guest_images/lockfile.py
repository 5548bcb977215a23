"""The lock file: exact versions and SHA256 of every package a recipe uses.

A recipe names packages; ``<recipe>.lock`` (YAML, committed next to it)
pins them, so that two builds from the same commit use the same bytes and
the image's content digest changes only when a pin does. The kernel's
meta package (``linux-image-cloud-amd64``) is resolved to the concrete
image package of one kernel release, and that release's headers packages
are pinned with it, because the guest kernel module must be compiled
against exactly the kernel that boots. ``wdfhil image lock`` re-pins from
the apt index (when Debian replaces a version, the old one stops being
downloadable and the builder says so).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from guest_images import apt
from guest_images.recipe import Recipe
from wdfhil.errors import ConfigError, ImageBuildError
from wdfhil.yamlfile import YamlList, YamlMap, load_yaml_mapping, reject_unknown_keys, take

ROLES = ("kernel", "headers", "userland")


@dataclass(frozen=True)
class PinnedPackage:
    name: str
    version: str
    arch: str
    sha256: str
    size: int
    role: str      # "kernel" (vmlinuz + modules), "headers" (to build modules), "userland"


@dataclass(frozen=True)
class Lock:
    kernel_package: str     # the recipe's kernel package as written (often a meta package)
    kernel_release: str     # "6.1.0-28-cloud-amd64"
    packages: tuple[PinnedPackage, ...]

    def with_role(self, role: str) -> list[PinnedPackage]:
        return [package for package in self.packages if package.role == role]

    def identity(self) -> list[list[str]]:
        """What of the lock shapes the image (for the content digest)."""
        return [[p.role, p.name, p.version, p.arch, p.sha256] for p in self.packages]


def relock_hint(recipe: Recipe) -> str:
    return f"re-pin the recipe's packages with `wdfhil image lock {recipe.name}`"


def _sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"expected 64 lowercase hex digits, got {value!r}")
    return value


def load_lock(path: Path) -> Lock:
    """Read and check a lock file; mistakes name the file, line and field."""
    top = load_yaml_mapping(path)
    reject_unknown_keys(top, {"kernel", "packages"})
    kernel = take(top, "kernel", dict)
    reject_unknown_keys(kernel, {"package", "release"})
    items = take(top, "packages", list)
    pins = []
    for index, item in enumerate(items):
        if not isinstance(item, YamlMap):
            line = items.line_of(index) if isinstance(items, YamlList) else top.line
            raise ConfigError("expected a mapping with name, version, arch, sha256, size, role",
                              file=str(path), line=line, field=f"packages[{index}]")
        reject_unknown_keys(item, {"name", "version", "arch", "sha256", "size", "role"})
        pins.append(PinnedPackage(
            name=take(item, "name", str), version=take(item, "version", str),
            arch=take(item, "arch", str), sha256=take(item, "sha256", str, convert=_sha256),
            size=take(item, "size", int), role=take(item, "role", str, choices=ROLES)))
    return Lock(take(kernel, "package", str), take(kernel, "release", str), tuple(pins))


def write_lock(path: Path, recipe: Recipe, lock: Lock) -> None:
    """Write the lock atomically (a reader never sees half a file)."""
    body = {
        "kernel": {"package": lock.kernel_package, "release": lock.kernel_release},
        "packages": [
            {"name": p.name, "version": p.version, "arch": p.arch, "role": p.role,
             "size": p.size, "sha256": p.sha256}
            for p in lock.packages
        ],
    }
    header = (f"# Pinned Debian packages of the recipe {recipe.path.name}: exact versions and\n"
              f"# SHA256 from the apt index. Generated; refresh with `wdfhil image lock "
              f"{recipe.name}`.\n")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(header + yaml.safe_dump(body, sort_keys=False, width=100),
                         encoding="utf-8")
    os.replace(temporary, path)


def _pin(info: apt.PackageInfo, role: str) -> PinnedPackage:
    return PinnedPackage(info.name, info.version, info.arch, info.sha256, info.size, role)


def resolve_lock(recipe: Recipe, progress: Callable[[str], None] = lambda _m: None) -> Lock:
    """Pin the recipe's packages to what apt offers now."""
    progress(f"resolving {recipe.kernel_package} through apt")
    kernel = apt.show(recipe.kernel_package)
    concrete = apt.depends_named(kernel, "linux-image-")
    if concrete:  # a meta package: follow it to the one real kernel package
        name, exact = concrete[0]
        kernel = apt.show(name, exact)
    if not kernel.name.startswith("linux-image-"):
        raise ImageBuildError(f"{recipe.path}: kernel package {recipe.kernel_package!r} is not "
                              "a linux-image-* package nor a meta package depending on one")
    # linux-image-6.1.0-28-cloud-amd64(-unsigned) boots kernel release 6.1.0-28-cloud-amd64
    release = kernel.name.removeprefix("linux-image-").removesuffix("-unsigned")
    pins = [_pin(kernel, "kernel")]
    headers = apt.show(f"linux-headers-{release}", kernel.version)
    pins.append(_pin(headers, "headers"))
    for prefix in ("linux-headers-", "linux-kbuild-"):
        for name, exact in apt.depends_named(headers, prefix):
            pins.append(_pin(apt.show(name, exact), "headers"))
    for package in recipe.packages:
        progress(f"resolving {package} through apt")
        pins.append(_pin(apt.show(package), "userland"))
    return Lock(recipe.kernel_package, release, tuple(pins))


def check_lock(recipe: Recipe, lock: Lock) -> None:
    """Refuse a lock that pins something other than what the recipe asks for."""
    problems = []
    if lock.kernel_package != recipe.kernel_package:
        problems.append(f"it pins kernel package {lock.kernel_package!r}, the recipe asks for "
                        f"{recipe.kernel_package!r}")
    if len(lock.with_role("kernel")) != 1 or not lock.with_role("headers"):
        problems.append("it needs exactly one kernel package and its headers packages")
    pinned = [p.name for p in lock.with_role("userland")]
    missing = [name for name in recipe.packages if name not in pinned]
    extra = [name for name in pinned if name not in recipe.packages]
    if missing:
        problems.append(f"packages not pinned: {', '.join(missing)}")
    if extra:
        problems.append(f"pinned packages the recipe no longer lists: {', '.join(extra)}")
    if problems:
        raise ImageBuildError(f"{recipe.lock_path}: the lock does not match the recipe "
                              f"({'; '.join(problems)}); {relock_hint(recipe)}")


def locked(recipe: Recipe, progress: Callable[[str], None] = lambda _m: None) -> Lock:
    """The recipe's lock; a recipe without one gets it resolved and written now."""
    if not recipe.lock_path.exists():
        progress(f"no lock file for {recipe.name}: pinning the current packages from apt")
        lock = resolve_lock(recipe, progress)
        write_lock(recipe.lock_path, recipe, lock)
        return lock
    lock = load_lock(recipe.lock_path)
    check_lock(recipe, lock)
    return lock
