"""Debian packages through apt, without installing anything on the host.

Versions and SHA256 come from ``apt-cache`` (the archive's signed index);
``apt-get download`` fetches a .deb into a folder and ``dpkg-deb -x``
unpacks it into a staging tree. Downloaded files are kept in a shared cache
(``cache_dir("debs")``) and checked against the pinned SHA256 every time they
are used, so a cached file can be trusted only as far as the hash allows.
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
from typing import Sequence

from wdfhil.errors import ImageBuildError

# The host tools the builder runs, with the Debian package that provides each.
TOOL_PACKAGES = {
    "apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "dpkg": "dpkg",
    "make": "make", "gcc": "gcc", "gcc-12": "gcc-12",
}


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
    depends: tuple[str, ...]   # raw Depends alternatives, e.g. "linux-kbuild-6.1 (>= 6.1.1)"


@functools.cache
def native_arch() -> str:
    return run_tool(["dpkg", "--print-architecture"], what="asking dpkg the architecture").strip()


def candidate_version(package: str) -> str:
    """The version apt would install now (its candidate)."""
    out = run_tool(["apt-cache", "policy", package], what=f"looking up {package} in apt")
    match = re.search(r"^\s*Candidate:\s*(\S+)", out, re.MULTILINE)
    if match is None or match.group(1) == "(none)":
        raise ImageBuildError(f"apt knows no installable version of package '{package}' "
                              "(misspelt, or the apt lists are stale: run apt-get update)")
    return match.group(1)


def show(package: str, version: str | None = None) -> PackageInfo:
    """The index entry of ``package`` at ``version`` (default: the candidate)."""
    version = version or candidate_version(package)
    require_tool("apt-cache")
    try:
        out = run_tool(["apt-cache", "show", f"{package}={version}"],
                       what=f"looking up {package}={version} in apt")
    except ImageBuildError:
        raise ImageBuildError(f"apt does not know version {version} of package '{package}' "
                              "(run apt-get update; if it is a pinned version that Debian has "
                              "replaced, re-pin with `wdfhil image lock`)") from None
    arch = native_arch()
    for stanza in out.split("\n\n"):
        fields = _parse_stanza(stanza)
        if fields.get("Package") == package and fields.get("Architecture") in (arch, "all"):
            depends = tuple(d.strip() for d in fields.get("Depends", "").split(",") if d.strip())
            return PackageInfo(package, fields["Version"], fields["Architecture"],
                               fields["SHA256"], int(fields["Size"]), depends)
    raise ImageBuildError(f"apt has no {arch} build of {package}={version}")


def _parse_stanza(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def depends_named(info: PackageInfo, prefix: str) -> list[tuple[str, str | None]]:
    """Dependencies whose name starts with ``prefix``, as (name, exact version or None)."""
    found = []
    for alternative in info.depends:
        first = alternative.split("|")[0].strip()
        match = re.match(r"^([a-z0-9][a-z0-9+.-]+)(?:\s*\((=|>=|<=|>>|<<)\s*([^)]+)\))?", first)
        if match and match.group(1).startswith(prefix):
            exact = match.group(3).strip() if match.group(2) == "=" else None
            found.append((match.group(1), exact))
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


def fetch_deb(name: str, version: str, arch: str, sha256: str, debs_dir: Path, *,
              relock_hint: str) -> Path:
    """The .deb of ``name=version``, from the cache or downloaded, checked against ``sha256``.

    Written under a temporary name and renamed, so concurrent builds and an
    interrupted download never leave a partial file under the final name.
    """
    final = debs_dir / deb_file_name(name, version, arch)
    if final.is_file():
        if sha256_of(final) == sha256:
            return final
        final.unlink()  # damaged or from another archive: fetch it again
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs_dir) as scratch:
        try:
            run_tool(["apt-get", "download", "-q", f"{name}={version}"], cwd=Path(scratch),
                     what=f"downloading {name}={version}")
        except ImageBuildError as exc:
            raise ImageBuildError(f"cannot download the pinned package {name}={version}: it "
                                  f"may no longer be in the Debian archive; {relock_hint}\n"
                                  f"{exc}") from None
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
