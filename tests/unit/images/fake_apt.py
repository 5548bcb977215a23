"""A fake apt for the image builder's tests: ``apt-cache`` and ``apt-get`` scripts on
PATH that answer from a small archive described in a JSON file, and serve real
(tiny) .deb files made with ``dpkg-deb --build``, so SHA256 checks and unpacking
are the real ones. No network, no root, nothing of the host's apt is read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_SCRIPT = r'''
import json, os, shutil, sys
from debian.debian_support import Version

state = json.load(open(os.environ["FAKE_APT_STATE"]))
with open(os.environ["FAKE_APT_STATE"] + ".calls", "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\n")
packages = state["packages"]
URI = "http://fake.invalid/debian"

def source(suite):
    return f"{URI} {suite}/main {state['arch']} Packages"

def versions(name):
    found = [p for p in packages if p["name"] == name]
    return sorted(found, key=lambda p: Version(p["version"]), reverse=True)

def stanza(p):
    lines = [f"Package: {p['name']}", f"Version: {p['version']}",
             f"Architecture: {p['arch']}"]
    if p["depends"]:
        lines.append(f"Depends: {p['depends']}")
    lines += [f"Filename: pool/main/{p['name']}.deb", f"Size: {p['size']}",
              f"SHA256: {p['sha256']}", "Description: test package", " for wdfhil's tests"]
    return "\n".join(lines) + "\n"

tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
if tool == "apt-cache" and args[:1] == ["policy"]:
    if len(args) == 1:
        print("Package files:")
        for suite in sorted({p["suite"] for p in packages}):
            print(f" 500 {source(suite)}")
            print(f"     release o=Debian,n={suite},c=main,b={state['arch']}")
        sys.exit(0)
    for name in args[1:]:
        found = versions(name)
        if not found:
            continue
        print(f"{name}:\n  Installed: (none)\n  Candidate: {found[0]['version']}\n"
              "  Version table:")
        for p in found:
            print(f"     {p['version']} 500\n        500 {source(p['suite'])}")
    sys.exit(0)
if tool == "apt-cache" and args[:1] == ["show"]:
    out = [stanza(p) for spec in args[1:] for p in packages
           if f"{p['name']}={p['version']}" == spec]
    if not out:
        print("E: No packages found", file=sys.stderr)
        sys.exit(100)
    print("\n".join(out))
    sys.exit(0)
if tool == "apt-get" and args[:1] == ["download"]:
    for spec in [a for a in args[1:] if not a.startswith("-")]:
        name, _, version = spec.partition("=")
        match = [p for p in packages if p["name"] == name and p["version"] == version]
        if not match:
            print(f"E: Version '{version}' for '{name}' was not found", file=sys.stderr)
            sys.exit(100)
        p = match[0]
        if not p.get("deb"):
            print(f"E: Failed to fetch {URI}/pool/main/{name}.deb  404  Not Found",
                  file=sys.stderr)
            sys.exit(100)
        target = f"{name}_{version.replace(':', '%3a')}_{p['arch']}.deb"
        shutil.copy(p["deb"], os.path.join(os.getcwd(), target))
        print(f"Get:1 {URI} {name} {version} [{p['size']} B]")
    sys.exit(0)
print(f"fake apt: unsupported command {tool} {args}", file=sys.stderr)
sys.exit(99)
'''


def build_deb(folder: Path, name: str, version: str, arch: str,
              files: dict[str, bytes] | None = None) -> Path:
    """A real .deb with ``files`` (guest path -> content) in it."""
    root = folder / f"{name}_{version}".replace(":", "_")
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: wdfhil tests <tests@invalid>\nDescription: test package\n")
    for path, data in (files or {f"/usr/share/doc/{name}/VERSION": version.encode()}).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    deb = folder / f"{root.name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                    str(deb)], check=True, capture_output=True)
    shutil.rmtree(root)
    return deb


@dataclass
class FakeArchive:
    """The archive the fake apt serves; change it with :meth:`add` / :meth:`remove`."""

    folder: Path
    arch: str
    packages: list[dict] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.folder / "state.json"

    def add(self, name: str, version: str, *, depends: str = "", suite: str = "bookworm",
            arch: str | None = None, downloadable: bool = True,
            files: dict[str, bytes] | None = None) -> dict:
        arch = arch or self.arch
        deb = build_deb(self.folder / "debs", name, version, arch, files)
        data = deb.read_bytes()
        entry = {"name": name, "version": version, "arch": arch, "depends": depends,
                 "suite": suite, "sha256": hashlib.sha256(data).hexdigest(),
                 "size": len(data), "deb": str(deb) if downloadable else None}
        self.packages.append(entry)
        self.save()
        return entry

    def remove(self, name: str, version: str) -> None:
        self.packages = [p for p in self.packages
                         if (p["name"], p["version"]) != (name, version)]
        self.save()

    def save(self) -> None:
        self.state.write_text(json.dumps({"arch": self.arch, "packages": self.packages}))

    def calls(self) -> list[list[str]]:
        log = Path(f"{self.state}.calls")
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def add_kernel(self, abi: str, version: str, *, suite: str = "bookworm-security",
                   flavour: str = "cloud-amd64") -> None:
        """The meta package, the kernel, its headers, -common and kbuild at one version."""
        release = f"{abi}-{flavour}"
        self.add(f"linux-image-{flavour}", version, suite=suite,
                 depends=f"linux-image-{release} (= {version})")
        self.add(f"linux-image-{release}", version, suite=suite,
                 files={f"/boot/vmlinuz-{release}": b"kernel " + version.encode()})
        self.add(f"linux-headers-{release}", version, suite=suite,
                 depends=f"linux-headers-{abi}-common (= {version}), "
                         f"linux-kbuild-6.1 (>= {version}), linux-compiler-gcc-12-x86")
        self.add(f"linux-headers-{abi}-common", version, suite=suite, arch="all")
        self.add("linux-kbuild-6.1", version, suite=suite)


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeArchive:
    """A fake apt on PATH (the real dpkg-deb and dpkg stay), and a private cache."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    from guest_images import apt
    folder = tmp_path / "fake-apt"
    (folder / "bin").mkdir(parents=True)
    (folder / "debs").mkdir()
    script = folder / "fake_apt.py"
    script.write_text(f"#!{sys.executable}\n{_SCRIPT}")
    script.chmod(0o755)
    for tool in ("apt-cache", "apt-get"):
        (folder / "bin" / tool).symlink_to(script)
    archive = FakeArchive(folder, apt.native_arch())
    archive.save()
    monkeypatch.setenv("PATH", f"{folder / 'bin'}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_APT_STATE", str(archive.state))
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WDFHIL_LOCKED", raising=False)
    apt._release_codenames.cache_clear()
    yield archive
    apt._release_codenames.cache_clear()
