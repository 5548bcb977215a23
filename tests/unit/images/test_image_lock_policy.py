"""The lock policy against a fake apt (no network): a pin that is still in the
archive is used as pinned; a vanished pin makes the build re-resolve within the
lock's suite and kernel flavour, say so in one line and record it in the image
(the lock file is left alone); strict mode refuses with a clear error; the
image's cache key follows the resolution actually used."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_images import build_image, load_recipe
from guest_images.builder import ImageBuild
from guest_images.cache import image_digest
from guest_images.image import CLIENT_KEY_FILE, INITRAMFS_FILE
from guest_images.lockfile import ROLES, load_lock, relock
from orchestrator.cli import main
from wdfhil.errors import ImageBuildError

from fake_apt import FakeArchive, fake_apt  # noqa: F401  (the fixture)
from image_test_helpers import VALID_RECIPE, write_recipe

OLD_ABI, OLD = "6.1.0-1", "6.1.1-1"
NEW_ABI, NEW = "6.1.0-2", "6.1.2-1"


def unpack_and_publish(self: ImageBuild) -> None:
    """ImageBuild.run without compilers: fetch, check and unpack every role's packages
    through (fake) apt, then publish the image with its manifest."""
    roots = {role: self.unpacked(role) for role in ROLES}
    vmlinuz = roots["kernel"] / "boot" / f"vmlinuz-{self.release}"
    (self.output / INITRAMFS_FILE).write_bytes(b"initramfs")
    (self.output / CLIENT_KEY_FILE).write_bytes(b"key")
    self.publish(vmlinuz, "ssh-ed25519 AAAA", [])


@pytest.fixture
def archive(fake_apt: FakeArchive) -> FakeArchive:  # noqa: F811
    fake_apt.add_kernel(OLD_ABI, OLD)
    fake_apt.add("busybox-static", "1:1.35.0-4", files={"/bin/busybox": b"busybox"})
    fake_apt.add("dropbear-bin", "2022.83-1", files={"/usr/sbin/dropbear": b"dropbear"})
    return fake_apt


@pytest.fixture
def recipe(archive: FakeArchive, recipe_dir: Path, monkeypatch) -> Path:
    """A recipe with its lock made through the fake apt (the 'pin available' state)."""
    monkeypatch.setattr(ImageBuild, "run", unpack_and_publish)
    path = write_recipe(recipe_dir, VALID_RECIPE)
    relock(load_recipe(path))
    return path


def vanish_old_kernel(archive: FakeArchive) -> None:
    """What the security archive does on a kernel update."""
    for name in ("linux-image-cloud-amd64", f"linux-image-{OLD_ABI}-cloud-amd64",
                 f"linux-headers-{OLD_ABI}-cloud-amd64", f"linux-headers-{OLD_ABI}-common",
                 "linux-kbuild-6.1"):
        archive.remove(name, OLD)
    archive.add_kernel(NEW_ABI, NEW)


class Output:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.notices: list[str] = []

    def __call__(self, message: str) -> None:
        self.steps.append(message)

    def notice(self, message: str) -> None:
        self.notices.append(message)


def test_lock_records_versions_hashes_and_suite(recipe: Path, archive: FakeArchive) -> None:
    lock = load_lock(recipe.with_suffix(".lock"))
    assert lock.suite == "bookworm"
    assert lock.kernel_release == f"{OLD_ABI}-cloud-amd64"
    assert [(p.name, p.version, p.role) for p in lock.packages] == [
        (f"linux-image-{OLD_ABI}-cloud-amd64", OLD, "kernel"),
        (f"linux-headers-{OLD_ABI}-cloud-amd64", OLD, "headers"),
        (f"linux-headers-{OLD_ABI}-common", OLD, "headers"),
        ("linux-kbuild-6.1", OLD, "headers"),
        ("busybox-static", "1:1.35.0-4", "userland"),
        ("dropbear-bin", "2022.83-1", "userland")]
    served = {(p["name"], p["version"]): p["sha256"] for p in archive.packages}
    assert all(served[(p.name, p.version)] == p.sha256 for p in lock.packages)


def test_pin_available_builds_as_pinned(recipe: Path, archive: FakeArchive, tmp_path) -> None:
    lock_text = recipe.with_suffix(".lock").read_text()
    out = Output()
    image = build_image(recipe, cache_root=tmp_path / "images", progress=out)
    assert out.notices == []
    assert image.lock_state == "pinned"
    assert image.kernel_release == f"{OLD_ABI}-cloud-amd64"
    assert image.package_versions["linux-kbuild-6.1"] == OLD
    assert image.digest == image_digest(load_recipe(recipe), load_lock(recipe.with_suffix(".lock")))
    assert image.kernel.read_bytes() == b"kernel " + OLD.encode()
    assert "as pinned in test-image.lock" in image.provenance
    assert any("downloading linux-image-" in step and "MiB" in step for step in out.steps)
    assert recipe.with_suffix(".lock").read_text() == lock_text
    downloads = [c for c in archive.calls() if c[:2] == ["apt-get", "download"]]
    assert len(downloads) == 6
    assert not [c for c in archive.calls() if "update" in c], "never runs apt-get update"


def test_vanished_pin_is_re_resolved_with_one_line_notice(recipe: Path, archive: FakeArchive,
                                                          tmp_path) -> None:
    lock_path = recipe.with_suffix(".lock")
    lock_text = lock_path.read_text()
    pinned_digest = image_digest(load_recipe(recipe), load_lock(lock_path))
    vanish_old_kernel(archive)
    out = Output()
    image = build_image(recipe, cache_root=tmp_path / "images", progress=out)

    assert len(out.notices) == 1 and "\n" not in out.notices[0]
    assert out.notices[0] == (
        f"lock test-image.lock is stale: linux-image-{OLD_ABI}-cloud-amd64 {OLD} -> "
        f"linux-image-{NEW_ABI}-cloud-amd64 {NEW}, linux-headers-{OLD_ABI}-cloud-amd64 {OLD} "
        f"-> linux-headers-{NEW_ABI}-cloud-amd64 {NEW}, linux-headers-{OLD_ABI}-common {OLD} "
        f"-> linux-headers-{NEW_ABI}-common {NEW}, linux-kbuild-6.1 {OLD} -> {NEW}; building "
        "with the archive's versions (strict: WDFHIL_LOCKED=1 or --locked)")
    # kernel, headers, -common and kbuild moved together; the lock file did not change
    assert image.kernel_release == f"{NEW_ABI}-cloud-amd64"
    assert image.kernel.read_bytes() == b"kernel " + NEW.encode()
    versions = image.package_versions
    assert versions[f"linux-headers-{NEW_ABI}-cloud-amd64"] == NEW
    assert versions[f"linux-headers-{NEW_ABI}-common"] == NEW
    assert versions["linux-kbuild-6.1"] == NEW and versions["dropbear-bin"] == "2022.83-1"
    assert lock_path.read_text() == lock_text
    assert image.lock_state == "re-resolved"
    assert image.details["lock"]["gone"] == [f"linux-image-{OLD_ABI}-cloud-amd64={OLD}",
                                             f"linux-headers-{OLD_ABI}-cloud-amd64={OLD}",
                                             f"linux-headers-{OLD_ABI}-common={OLD}",
                                             f"linux-kbuild-6.1={OLD}"]
    assert "re-resolved from the archive" in image.provenance
    # the cache key is that of the packages used, not of the stale pins
    assert image.digest != pinned_digest

    # The next build finds that image without asking apt again, and says why.
    calls = len(archive.calls())
    again = Output()
    assert build_image(recipe, cache_root=tmp_path / "images", progress=again) == image
    assert len(archive.calls()) == calls
    assert again.notices == out.notices


def test_cache_key_follows_the_resolution(recipe: Path, archive: FakeArchive, tmp_path,
                                          monkeypatch) -> None:
    """Each build on an empty cache (packages and images), as on a fresh machine."""
    def fresh(name: str) -> Path:
        monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path / name))
        return tmp_path / name / "images"

    first = build_image(recipe, cache_root=fresh("a"))
    vanish_old_kernel(archive)
    second = build_image(recipe, cache_root=fresh("b"))
    for name in ("linux-image-cloud-amd64", f"linux-image-{NEW_ABI}-cloud-amd64",
                 f"linux-headers-{NEW_ABI}-cloud-amd64", f"linux-headers-{NEW_ABI}-common",
                 "linux-kbuild-6.1"):
        archive.remove(name, NEW)
    archive.add_kernel("6.1.0-3", "6.1.3-1")
    third = build_image(recipe, cache_root=fresh("c"))
    assert len({first.digest, second.digest, third.digest}) == 3
    assert third.kernel_release == "6.1.0-3-cloud-amd64"


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_strict_mode_refuses_a_vanished_pin(recipe: Path, archive: FakeArchive, tmp_path,
                                            monkeypatch, how) -> None:
    vanish_old_kernel(archive)
    if how == "environment":
        monkeypatch.setenv("WDFHIL_LOCKED", "1")
    with pytest.raises(ImageBuildError) as info:
        build_image(recipe, cache_root=tmp_path, locked=True if how == "argument" else None)
    message = str(info.value)
    assert f"cannot download the pinned package(s) linux-image-{OLD_ABI}-cloud-amd64={OLD}" \
        in message
    assert f"linux-kbuild-6.1={OLD}" in message
    assert "wdfhil image lock test-image" in message and "apt-get update" in message
    assert not list(tmp_path.rglob("image.json"))


def test_strict_mode_on_the_command_line(recipe: Path, archive: FakeArchive, capsys) -> None:
    vanish_old_kernel(archive)
    assert main(["image", "build", "--locked", str(recipe)]) == 2
    assert "cannot download the pinned package(s)" in capsys.readouterr().err
    # without --locked the same build succeeds, with the notice on stdout (not a terminal:
    # one plain line per step, no escape codes)
    assert main(["image", "build", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "lock test-image.lock is stale:" in out and "\x1b" not in out and "\r" not in out
    assert f"kernel {NEW_ABI}-cloud-amd64" in out


def test_re_resolution_stays_in_the_suite(recipe: Path, archive: FakeArchive,
                                          tmp_path) -> None:
    for name in ("linux-image-cloud-amd64", f"linux-image-{OLD_ABI}-cloud-amd64",
                 f"linux-headers-{OLD_ABI}-cloud-amd64", f"linux-headers-{OLD_ABI}-common",
                 "linux-kbuild-6.1"):
        archive.remove(name, OLD)
    archive.add_kernel("6.12.0-1", "6.12.9-1", suite="trixie-security")
    with pytest.raises(ImageBuildError, match="outside the lock's Debian release bookworm: "
                                              "linux-image-6.12.0-1-cloud-amd64 6.12.9-1 "
                                              r"\(trixie\)"):
        build_image(recipe, cache_root=tmp_path)


def test_re_resolution_keeps_the_kernel_flavour(recipe: Path, archive: FakeArchive,
                                                tmp_path) -> None:
    archive.remove(f"linux-image-{OLD_ABI}-cloud-amd64", OLD)
    archive.remove("linux-image-cloud-amd64", OLD)
    archive.add("linux-image-cloud-amd64", NEW, suite="bookworm-security",
                depends=f"linux-image-{NEW_ABI}-amd64 (= {NEW})")
    archive.add(f"linux-image-{NEW_ABI}-amd64", NEW, suite="bookworm-security")
    with pytest.raises(ImageBuildError, match="not of the locked flavour cloud-amd64"):
        build_image(recipe, cache_root=tmp_path)


def test_empty_apt_index_says_to_run_apt_get_update(recipe: Path, archive: FakeArchive,
                                                    tmp_path) -> None:
    """A fresh machine whose apt lists were never fetched."""
    archive.packages.clear()
    archive.save()
    with pytest.raises(ImageBuildError, match=r"(?s)apt's index has no installable version "
                                              r"of linux-image-cloud-amd64, busybox-static, "
                                              r"dropbear-bin .*run `apt-get update`"):
        build_image(recipe, cache_root=tmp_path)


def test_listed_but_not_downloadable_says_to_update(recipe: Path, archive: FakeArchive,
                                                    tmp_path) -> None:
    """apt's lists are older than the archive: apt lists the pin, the mirror lost it."""
    for entry in archive.packages:
        if entry["name"] == "dropbear-bin":
            entry["deb"] = None
    archive.save()
    with pytest.raises(ImageBuildError, match=r"(?s)cannot download the pinned package "
                                              r"dropbear-bin=2022.83-1.*apt-get update.*404"):
        build_image(recipe, cache_root=tmp_path)


def test_tampered_download_is_refused(recipe: Path, archive: FakeArchive, tmp_path) -> None:
    entry = next(e for e in archive.packages if e["name"] == "busybox-static")
    Path(entry["deb"]).write_bytes(Path(entry["deb"]).read_bytes() + b"tampered")
    with pytest.raises(ImageBuildError, match="busybox-static=1:1.35.0-4: SHA256 .* does not "
                                              "match the pinned"):
        build_image(recipe, cache_root=tmp_path)


def test_cached_packages_need_no_apt(recipe: Path, archive: FakeArchive, tmp_path) -> None:
    """Once the packages are unpacked in the cache, a vanished pin does not matter: the
    image is rebuilt from the pins as they are (offline too)."""
    first = build_image(recipe, cache_root=tmp_path / "a")
    vanish_old_kernel(archive)
    second = build_image(recipe, cache_root=tmp_path / "b")
    assert second.digest == first.digest and second.lock_state == "pinned"


def test_image_list_shows_kernel_and_packages(recipe: Path, archive: FakeArchive, capsys,
                                              monkeypatch) -> None:
    vanish_old_kernel(archive)
    image = build_image(recipe)
    capsys.readouterr()
    monkeypatch.setattr("guest_images.cli.available_recipes", lambda: [])
    assert main(["image", "list", "--packages"]) == 0
    listing = capsys.readouterr().out
    assert f"{NEW_ABI}-cloud-amd64 {NEW}" in listing and "re-resolved" in listing
    assert f"    linux-kbuild-6.1 {NEW}" in listing and image.digest[:12] in listing
