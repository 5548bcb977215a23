"""The lock file: exact versions and SHA256 of every package a recipe uses,
and the policy for when the archive has moved on.

A recipe names packages; ``<recipe>.lock`` (YAML, committed next to it)
records what apt resolved them to last: the kernel's meta package
(``linux-image-cloud-amd64``) as the concrete image package of one kernel
release with that release's headers packages (the guest kernel module must
be compiled against exactly the kernel that boots), the userland packages,
and the Debian release (``suite``) they came from.

Debian replaces versions (the security archive does so for every kernel
update) and the old ones stop being downloadable. Then, by default, the
builder re-resolves the recipe within the lock's suite through apt (whose
index is signed, so every .deb is still checked against a SHA256 from
it), says so in one line, and builds with those versions: the image's
manifest and digest record the resolution actually used, and the lock file
is left alone (the source tree may be read-only). Strict mode
(``--locked``, ``WDFHIL_LOCKED=1``) refuses instead. ``wdfhil image lock``
rewrites the lock explicitly.
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
LOCKED_ENV = "WDFHIL_LOCKED"
STRICT_HINT = f"strict: {LOCKED_ENV}=1 or --locked"


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
    suite: str | None = None  # Debian release the pins come from ("bookworm"); None: unknown

    def with_role(self, role: str) -> list[PinnedPackage]:
        return [package for package in self.packages if package.role == role]

    def identity(self) -> list[list[str]]:
        """What of the lock shapes the image (for the content digest)."""
        return [[p.role, p.name, p.version, p.arch, p.sha256] for p in self.packages]

    def versions(self) -> dict[str, str]:
        return {p.name: p.version for p in self.packages}

    def to_data(self) -> dict:
        """The lock as plain data (the lock file's body, and the image manifest's)."""
        data: dict = {"kernel": {"package": self.kernel_package,
                                 "release": self.kernel_release}}
        if self.suite:
            data["suite"] = self.suite
        data["packages"] = [
            {"name": p.name, "version": p.version, "arch": p.arch, "role": p.role,
             "size": p.size, "sha256": p.sha256}
            for p in self.packages
        ]
        return data

    @classmethod
    def from_data(cls, data: dict) -> "Lock":
        """The inverse of :meth:`to_data` for data this program wrote (not a user file)."""
        return cls(data["kernel"]["package"], data["kernel"]["release"],
                   tuple(PinnedPackage(p["name"], p["version"], p["arch"], p["sha256"],
                                       int(p["size"]), p["role"]) for p in data["packages"]),
                   data.get("suite"))


def relock_hint(recipe: Recipe) -> str:
    return f"re-pin the recipe's packages with `wdfhil image lock {recipe.name}`"


def strict_mode(locked: bool | None = None) -> bool:
    """Strict mode: ``locked`` when given, else the environment's ``WDFHIL_LOCKED``."""
    if locked is not None:
        return locked
    return os.environ.get(LOCKED_ENV, "").strip().lower() in ("1", "yes", "true", "on")


def _sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"expected 64 lowercase hex digits, got {value!r}")
    return value


def load_lock(path: Path) -> Lock:
    """Read and check a lock file; mistakes name the file, line and field."""
    top = load_yaml_mapping(path)
    reject_unknown_keys(top, {"kernel", "suite", "packages"})
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
    return Lock(take(kernel, "package", str), take(kernel, "release", str), tuple(pins),
                take(top, "suite", str, default=None))


def write_lock(path: Path, recipe: Recipe, lock: Lock) -> None:
    """Write the lock atomically (a reader never sees half a file)."""
    header = (f"# Debian packages of the recipe {recipe.path.name} as apt resolved them last:\n"
              f"# exact versions and SHA256 from the apt index, and the Debian release they\n"
              f"# come from. A build re-resolves within that release when a version is gone\n"
              f"# (unless {LOCKED_ENV}=1 or --locked). Refresh with `wdfhil image lock "
              f"{recipe.name}`.\n")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(header + yaml.safe_dump(lock.to_data(), sort_keys=False, width=100),
                         encoding="utf-8")
    os.replace(temporary, path)


def _pin(info: apt.PackageInfo, role: str) -> PinnedPackage:
    return PinnedPackage(info.name, info.version, info.arch, info.sha256, info.size, role)


def _flavour(release: str) -> str:
    """``6.1.0-56-cloud-amd64`` -> ``cloud-amd64``."""
    match = re.match(r"^\d+\.\d+\.\d+-\d+-(.+)$", release)
    return match.group(1) if match else release


class _Resolver:
    """Asks apt in batches (each apt-cache run reads all of apt's lists)."""

    def __init__(self) -> None:
        self.policies: dict[str, apt.Policy] = {}

    def candidates(self, names: list[str]) -> dict[str, str]:
        self.policies.update(apt.policies(n for n in names if n not in self.policies))
        missing = [n for n in names
                   if n not in self.policies or self.policies[n].candidate is None]
        if missing:
            raise ImageBuildError(f"apt's index has no installable version of "
                                  f"{', '.join(missing)} (misspelt, or {apt.UPDATE_HINT})")
        return {n: self.policies[n].candidate for n in names}

    def show(self, wanted: list[tuple[str, str | None]]) -> list[apt.PackageInfo]:
        loose = [name for name, version in wanted if version is None]
        chosen = self.candidates(loose) if loose else {}
        exact = [(name, version or chosen[name]) for name, version in wanted]
        found = apt.show_many(exact)
        missing = [f"{n}={v}" for n, v in exact if (n, v) not in found]
        if missing:
            raise ImageBuildError(f"apt's index does not list {', '.join(missing)} for "
                                  f"{apt.native_arch()} ({apt.UPDATE_HINT})")
        return [found[key] for key in exact]

    def suites(self, pins: list[PinnedPackage]) -> dict[str, set[str]]:
        """Release families each pin's version comes from, by package name."""
        self.policies.update(apt.policies(p.name for p in pins if p.name not in self.policies))
        return {p.name: {apt.suite_family(s) for s in
                         (self.policies[p.name].suites_of(p.version)
                          if p.name in self.policies else ())}
                for p in pins}


def resolve_lock(recipe: Recipe, progress: Callable[[str], None] = lambda _m: None, *,
                 suite: str | None = None, flavour: str | None = None) -> Lock:
    """Pin the recipe's packages to what apt offers now.

    With ``suite`` (a Debian release such as ``bookworm``) every version must
    come from that release (its -security and -updates suites included);
    with ``flavour`` the kernel must stay of that flavour (``cloud-amd64``).
    """
    progress(f"resolving {recipe.kernel_package} and {len(recipe.packages)} packages "
             "through apt")
    resolver = _Resolver()
    kernel, *userland = resolver.show([(recipe.kernel_package, None),
                                       *((name, None) for name in recipe.packages)])
    concrete = apt.depends_named(kernel, "linux-image-")
    if concrete:  # a meta package: follow it to the one real kernel package
        (kernel,) = resolver.show([concrete[0]])
    if not kernel.name.startswith("linux-image-"):
        raise ImageBuildError(f"{recipe.path}: kernel package {recipe.kernel_package!r} is not "
                              "a linux-image-* package nor a meta package depending on one")
    # linux-image-6.1.0-28-cloud-amd64(-unsigned) boots kernel release 6.1.0-28-cloud-amd64
    release = kernel.name.removeprefix("linux-image-").removesuffix("-unsigned")
    if flavour is not None and _flavour(release) != flavour:
        raise ImageBuildError(f"apt now resolves {recipe.kernel_package} to kernel {release}, "
                              f"not of the locked flavour {flavour}; {relock_hint(recipe)}")
    # The headers of exactly this kernel build, then what they depend on.
    (headers,) = resolver.show([(f"linux-headers-{release}", kernel.version)])
    extra = [dep for prefix in ("linux-headers-", "linux-kbuild-")
             for dep in apt.depends_named(headers, prefix)]
    pins = [_pin(kernel, "kernel"), _pin(headers, "headers")]
    pins += [_pin(info, "headers") for info in resolver.show(extra)]
    pins += [_pin(info, "userland") for info in userland]

    families = resolver.suites(pins)
    kernel_families = sorted(families[kernel.name])
    locked_suite = suite or (kernel_families[0] if len(kernel_families) == 1 else None)
    if locked_suite is not None:
        outside = [f"{p.name} {p.version} ({', '.join(sorted(families[p.name])) or 'no suite'})"
                   for p in pins if locked_suite not in families[p.name]]
        if outside:
            raise ImageBuildError(
                f"apt offers versions from outside the lock's Debian release {locked_suite}: "
                f"{', '.join(outside)}; add {locked_suite}'s suites to apt's sources (then "
                f"apt-get update), or make a new lock for another release by deleting "
                f"{recipe.lock_path.name} and running `wdfhil image lock {recipe.name}`")
    return Lock(recipe.kernel_package, release, tuple(pins), locked_suite)


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


def relock(recipe: Recipe, progress: Callable[[str], None] = lambda _m: None) -> Lock:
    """``wdfhil image lock``: resolve again (within the existing lock's suite, if any)
    and write the lock file."""
    suite = None
    if recipe.lock_path.exists():
        try:
            suite = load_lock(recipe.lock_path).suite
        except ConfigError:
            suite = None  # a damaged lock is replaced whole
    lock = resolve_lock(recipe, progress, suite=suite)
    write_lock(recipe.lock_path, recipe, lock)
    return lock


# -- the build's resolution: the lock as pinned, or re-resolved ------------------
@dataclass(frozen=True)
class Resolution:
    """The packages a build uses: ``lock`` is ``pinned`` (the lock file) unless some
    pinned versions (``gone``, as ``name=version``) could not be had, and then
    the recipe re-resolved within the same suite."""

    pinned: Lock
    lock: Lock
    gone: tuple[str, ...] = ()

    @property
    def re_resolved(self) -> bool:
        return self.lock != self.pinned

    def changes(self) -> list[str]:
        """``name old -> [new name] new`` for each package that moved (kernel-release
        packages are paired across the ABI change: ...-56-cloud-amd64 -> ...-57-...)."""
        def abi(lock: Lock) -> str:
            match = re.match(r"^\d+\.\d+\.\d+-\d+", lock.kernel_release)
            return match.group(0) if match else lock.kernel_release

        old_abi, new_abi = abi(self.pinned), abi(self.lock)
        new = {p.name.replace(new_abi, "<abi>"): p for p in self.lock.packages}
        lines = []
        for old in self.pinned.packages:
            now = new.pop(old.name.replace(old_abi, "<abi>"), None)
            if now is None:
                lines.append(f"{old.name} {old.version} -> (none)")
            elif (now.name, now.version, now.sha256) != (old.name, old.version, old.sha256):
                target = now.version if now.name == old.name else f"{now.name} {now.version}"
                if now.version == old.version and now.name == old.name:
                    target += " (new SHA256)"
                lines.append(f"{old.name} {old.version} -> {target}")
        lines += [f"(none) -> {p.name} {p.version}" for p in new.values()]
        return lines

    def notice(self, lock_path: Path) -> str:
        """The one line a build prints when it does not use the lock as pinned."""
        return (f"lock {lock_path.name} is stale: {', '.join(self.changes())}; building with "
                f"the archive's versions ({STRICT_HINT})")

    def to_data(self, lock_path: Path) -> dict:
        """For the image manifest: which lock, and whether it was used as pinned."""
        data = {"file": str(lock_path), "state": "re-resolved" if self.re_resolved else "pinned",
                "suite": self.lock.suite}
        if self.re_resolved:
            data.update(gone=list(self.gone), changes=self.changes(),
                        pinned=self.pinned.versions())
        return data


def resolve_build(recipe: Recipe, pinned: Lock, *, strict: bool,
                  have_locally: Callable[[PinnedPackage], bool],
                  progress: Callable[[str], None] = lambda _m: None) -> Resolution:
    """What a build uses: the pins, when each is in a local cache (``have_locally``)
    or listed by apt's index with the pinned SHA256; else, unless ``strict``, the
    recipe re-resolved within the lock's suite and kernel flavour."""
    asked = [p for p in pinned.packages if not have_locally(p)]
    listed = apt.show_many((p.name, p.version) for p in asked) if asked else {}
    gone = tuple(f"{p.name}={p.version}" for p in asked
                 if (found := listed.get((p.name, p.version))) is None
                 or found.sha256 != p.sha256)
    if not gone:
        return Resolution(pinned, pinned)
    if strict:
        raise ImageBuildError(
            f"cannot download the pinned package(s) {', '.join(gone)}: apt's index no longer "
            f"lists them with the pinned SHA256 (Debian replaced them, or {apt.UPDATE_HINT}); "
            f"{relock_hint(recipe)} and commit {recipe.lock_path.name}, or build without "
            f"--locked / {LOCKED_ENV} to use the archive's current versions")
    progress(f"pinned versions are gone from the archive ({', '.join(gone)}): "
             f"re-resolving {recipe.name} within {pinned.suite or 'its suite'}")
    lock = resolve_lock(recipe, progress, suite=pinned.suite,
                        flavour=_flavour(pinned.kernel_release))
    return Resolution(pinned, lock, gone)
