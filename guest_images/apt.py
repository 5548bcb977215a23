"""Debian packages through apt, without installing anything on the host.

Versions and SHA256 come from ``apt-cache`` (the archive's signed index,
read with python-debian's ``deb822``); ``apt-get download`` fetches a .deb
into a folder and ``dpkg-deb -x`` unpacks it into a staging tree.
Downloaded files are kept in a shared cache (``cache_dir("debs")``) and
checked against the index's SHA256 every time they are used, so a cached
file can be trusted only as far as the hash allows.

Every ``apt-cache`` run parses all of apt's lists (about 0.6 s here:
Debian's container images switch apt's binary cache off), so questions
are asked in batches: one ``apt-cache policy`` or ``apt-cache show`` for
many packages. Nothing here runs ``apt-get update``: that changes the
host and needs root, so when the lists are missing or old the error says
to run it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from debian import deb822

from wdfhil.errors import ImageBuildError

# The host tools the builder runs, with the Debian package that provides each.
TOOL_PACKAGES = {
    "apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "dpkg": "dpkg",
    "make": "make", "gcc": "gcc", "gcc-12": "gcc-12",
}

UPDATE_HINT = ("apt's package lists are missing or out of date: run `apt-get update` "
               "(as root) and try again")


def require_tool(tool: str) -> str:
    """The full path of ``tool``, or an ImageBuildError that says what to install."""
    found = shutil.which(tool)
    if found is None:
        package = TOOL_PACKAGES.get(tool, tool)
        raise ImageBuildError(f"the image builder needs the program '{tool}', which is not "
                              f"installed (Debian package: {package}; "
                              f"apt-get install {package})")
    return found


def run_tool(args: Sequence[str], *, what: str, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> str:
    """Run a host tool; its failure becomes an ImageBuildError with the command and output."""
    require_tool(args[0])
    try:
        done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True,
                              check=False)
    except OSError as exc:
        raise ImageBuildError(f"{what}: cannot run {args[0]}: {exc}") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-3000:]
        raise ImageBuildError(f"{what} failed (exit {done.returncode})\n"
                              f"command: {' '.join(args)}\n{output}")
    return done.stdout


@dataclass(frozen=True)
class PackageInfo:
    """One version of one package as the apt index describes it."""

    name: str
    version: str
    arch: str
    sha256: str
    size: int
    depends: str = ""       # the raw Depends field, e.g. "linux-kbuild-6.1 (>= 6.1.1), ..."


@functools.cache
def native_arch() -> str:
    return run_tool(["dpkg", "--print-architecture"], what="asking dpkg the architecture").strip()


@dataclass(frozen=True)
class Policy:
    """What ``apt-cache policy`` says of one package: its candidate, and the suites
    (release codenames such as ``bookworm-security``) each version comes from."""

    name: str
    candidate: str | None
    suites: dict[str, tuple[str, ...]]

    def suites_of(self, version: str) -> tuple[str, ...]:
        return self.suites.get(version, ())


def suite_family(suite: str) -> str:
    """The Debian release a suite belongs to: ``bookworm-security`` and
    ``bookworm-updates`` are ``bookworm``; backports stay apart (another kernel)."""
    for suffix in ("-proposed-updates", "-security", "-updates"):
        if suite.endswith(suffix):
            return suite[:-len(suffix)]
    return suite


@functools.cache
def _release_codenames() -> dict[str, str]:
    """``"<uri> <suite>/<component>"`` of each of apt's package lists -> its release
    codename (``n=``), from ``apt-cache policy`` without arguments (so that a source
    written as ``stable`` still says which release it is)."""
    out = run_tool(["apt-cache", "policy"], what="asking apt for its package lists")
    codenames: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        source = re.match(r"^\s*-?\d+\s+(\S+)\s+(\S+)\s+\S+\s+Packages\s*$", line)
        if source:
            current = f"{source.group(1)} {source.group(2)}"
            continue
        release = re.match(r"^\s+release\s+(.*)$", line)
        if release and current:
            for item in release.group(1).split(","):
                key, _, value = item.partition("=")
                if key == "n":
                    codenames[current] = value
            current = None
    return codenames


def policies(names: Iterable[str]) -> dict[str, Policy]:
    """``apt-cache policy`` of several packages in one run; a package apt does not
    know at all is missing from the result."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    out = run_tool(["apt-cache", "policy", *names], what="looking up packages in apt")
    arch = native_arch()
    found: dict[str, Policy] = {}
    name = candidate = version = None
    suites: dict[str, list[str]] = {}

    def finish() -> None:
        if name is not None:
            found[name] = Policy(name, candidate,
                                 {v: tuple(dict.fromkeys(s)) for v, s in suites.items()})

    for line in out.splitlines():
        header = re.match(r"^(\S+):$", line)
        if header:
            finish()
            name, candidate, version, suites = header.group(1), None, None, {}
            if name.endswith(f":{arch}"):
                name = name[:-len(arch) - 1]
            continue
        wanted = re.match(r"^\s+Candidate:\s*(\S+)", line)
        if wanted:
            candidate = None if wanted.group(1) == "(none)" else wanted.group(1)
            continue
        entry = re.match(r"^\s+(?:\*\*\*)?\s*(\S+)\s+-?\d+\s*$", line)
        if entry and not line.strip().startswith(("Installed:", "Version")):
            version = entry.group(1)
            suites.setdefault(version, [])
            continue
        source = re.match(r"^\s+-?\d+\s+(\S+)\s+(\S+)\s+\S+\s+Packages\s*$", line)
        if source and version is not None:
            key = f"{source.group(1)} {source.group(2)}"
            suite = _release_codenames().get(key, source.group(2).split("/")[0])
            suites[version].append(suite)
    finish()
    return found


def show_many(wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], PackageInfo]:
    """The index entries of several ``(name, version)`` in one ``apt-cache show``;
    a version the index does not list is missing from the result."""
    wanted = list(dict.fromkeys(wanted))
    if not wanted:
        return {}
    try:
        out = run_tool(["apt-cache", "show", *(f"{n}={v}" for n, v in wanted)],
                       what="looking up package versions in apt")
    except ImageBuildError:
        # apt-cache fails when it knows none of the packages; ask one at a time to
        # tell which are known (rare: a fresh machine without lists, a misspelt name).
        out = ""
        for name, version in wanted:
            try:
                out += run_tool(["apt-cache", "show", f"{name}={version}"],
                                what=f"looking up {name}={version} in apt") + "\n"
            except ImageBuildError:
                continue
    arch = native_arch()
    found: dict[tuple[str, str], PackageInfo] = {}
    for stanza in deb822.Packages.iter_paragraphs(out.splitlines(), use_apt_pkg=False):
        key = (stanza.get("Package", ""), stanza.get("Version", ""))
        if key in wanted and stanza.get("Architecture") in (arch, "all") and key not in found:
            try:
                found[key] = PackageInfo(key[0], key[1], stanza["Architecture"],
                                         stanza["SHA256"], int(stanza["Size"]),
                                         stanza.get("Depends", ""))
            except (KeyError, ValueError) as exc:
                raise ImageBuildError(f"apt's entry for {key[0]}={key[1]} lacks a usable "
                                      f"field: {exc}") from None
    return found


def candidate_version(package: str) -> str:
    """The version apt would install now (its candidate)."""
    policy = policies([package]).get(package)
    if policy is None or policy.candidate is None:
        raise ImageBuildError(f"apt knows no installable version of package '{package}' "
                              f"(misspelt, or {UPDATE_HINT})")
    return policy.candidate


def show(package: str, version: str | None = None) -> PackageInfo:
    """The index entry of ``package`` at ``version`` (default: the candidate)."""
    version = version or candidate_version(package)
    info = show_many([(package, version)]).get((package, version))
    if info is None:
        raise ImageBuildError(f"apt does not know version {version} of package '{package}' "
                              f"for {native_arch()} (if it is a pinned version that Debian has "
                              "replaced, re-pin with `wdfhil image lock`; else "
                              f"{UPDATE_HINT})")
    return info


def depends_named(info: PackageInfo, prefix: str) -> list[tuple[str, str | None]]:
    """Dependencies whose name starts with ``prefix`` (the first of each set of
    alternatives), as (name, exact version or None)."""
    found = []
    for alternatives in deb822.PkgRelation.parse_relations(info.depends):
        if not alternatives:
            continue
        first = alternatives[0]
        if first["name"].startswith(prefix):
            constraint = first.get("version")
            exact = constraint[1] if constraint and constraint[0] == "=" else None
            found.append((first["name"], exact))
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deb_file_name(name: str, version: str, arch: str) -> str:
    """The file name apt gives a .deb (the epoch's colon written %3a)."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def cached_deb(name: str, version: str, arch: str, sha256: str, debs_dir: Path) -> Path | None:
    """The cached .deb of ``name=version`` when its hash is ``sha256``, else None."""
    final = debs_dir / deb_file_name(name, version, arch)
    if final.is_file() and sha256_of(final) == sha256:
        return final
    return None


def fetch_deb(name: str, version: str, arch: str, sha256: str, debs_dir: Path, *,
              relock_hint: str) -> Path:
    """The .deb of ``name=version``, from the cache or downloaded, checked against ``sha256``.

    Written under a temporary name and renamed, so concurrent builds and an
    interrupted download never leave a partial file under the final name.
    """
    cached = cached_deb(name, version, arch, sha256, debs_dir)
    if cached is not None:
        return cached
    final = debs_dir / deb_file_name(name, version, arch)
    final.unlink(missing_ok=True)  # damaged or from another archive: fetch it again
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs_dir) as scratch:
        try:
            run_tool(["apt-get", "download", "-q", f"{name}={version}"], cwd=Path(scratch),
                     what=f"downloading {name}={version}")
        except ImageBuildError as exc:
            raise ImageBuildError(f"cannot download the pinned package {name}={version}: it "
                                  f"may no longer be in the Debian archive ({UPDATE_HINT}); "
                                  f"{relock_hint}\n{exc}") from None
        files = list(Path(scratch).glob("*.deb"))
        if len(files) != 1:
            raise ImageBuildError(f"apt-get download {name}={version} produced "
                                  f"{len(files)} files, expected one")
        actual = sha256_of(files[0])
        if actual != sha256:
            raise ImageBuildError(f"{name}={version}: SHA256 {actual} does not match the "
                                  f"pinned {sha256}; {relock_hint}")
        os.replace(files[0], final)
    return final


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack a .deb's files into ``dest`` (no maintainer scripts run)."""
    dest.mkdir(parents=True, exist_ok=True)
    run_tool(["dpkg-deb", "-x", str(deb), str(dest)], what=f"unpacking {deb.name}")
