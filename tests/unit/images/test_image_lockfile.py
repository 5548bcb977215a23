"""The lock file: the committed one matches its recipe; a wrong one is refused clearly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from guest_images import load_recipe
from guest_images.lockfile import check_lock, load_lock, write_lock
from wdfhil.errors import ConfigError, ImageBuildError


def test_committed_lock_matches_default_recipe() -> None:
    recipe = load_recipe(None)
    lock = load_lock(recipe.lock_path)
    check_lock(recipe, lock)
    assert lock.kernel_package == recipe.kernel_package
    assert lock.suite == "bookworm", "re-resolution stays within the lock's Debian release"
    (kernel,) = lock.with_role("kernel")
    assert kernel.name == f"linux-image-{lock.kernel_release}"
    headers = {p.name for p in lock.with_role("headers")}
    assert f"linux-headers-{lock.kernel_release}" in headers
    assert any(name.startswith("linux-kbuild-") for name in headers)
    assert {p.name for p in lock.with_role("userland")} == set(recipe.packages)
    assert all(len(p.sha256) == 64 and p.size > 0 for p in lock.packages)


def test_lock_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(None)
    lock = load_lock(recipe.lock_path)
    copy = tmp_path / "copy.lock"
    write_lock(copy, recipe, lock)
    assert load_lock(copy) == lock
    assert "wdfhil image lock debian12-cloud" in copy.read_text()


def test_lock_missing_a_package_tells_to_relock() -> None:
    recipe = load_recipe(None)
    lock = load_lock(recipe.lock_path)
    fewer = replace(lock, packages=tuple(p for p in lock.packages if p.name != "dropbear-bin"))
    with pytest.raises(ImageBuildError, match="dropbear-bin") as info:
        check_lock(recipe, fewer)
    assert "wdfhil image lock debian12-cloud" in str(info.value)
    assert str(recipe.lock_path) in str(info.value)


def test_lock_for_another_kernel_package_is_refused() -> None:
    recipe = load_recipe(None)
    lock = replace(load_lock(recipe.lock_path), kernel_package="linux-image-amd64")
    with pytest.raises(ImageBuildError, match="linux-image-amd64"):
        check_lock(recipe, lock)


def test_bad_sha256_names_line_and_field(tmp_path: Path) -> None:
    text = load_recipe(None).lock_path.read_text()
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if "sha256:" in line)
    lines[index] = lines[index].split("sha256:")[0] + "sha256: not-a-hash"
    bad = tmp_path / "bad.lock"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="64 lowercase hex") as info:
        load_lock(bad)
    assert info.value.file == str(bad)
    assert info.value.line == index + 1
    assert info.value.field == "packages[0].sha256"


def test_bad_role_is_refused(tmp_path: Path) -> None:
    text = load_recipe(None).lock_path.read_text().replace("role: userland", "role: extra", 1)
    bad = tmp_path / "bad.lock"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="is not one of kernel, headers, userland") as info:
        load_lock(bad)
    assert info.value.field == "packages[4].role"
