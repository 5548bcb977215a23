"""`wdfhil image list|clean|build` on a private cache (no apt, no build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_images import load_recipe
from guest_images.builder import unpacked_tree_key
from guest_images.cache import image_digest
from guest_images.lockfile import load_lock
from orchestrator.cli import main

from image_store_helpers import stored_image
from image_test_helpers import VALID_RECIPE, write_recipe


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WDFHIL_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_list_and_clean(cache_root: Path, capsys) -> None:
    recipe = load_recipe(None)
    lock = load_lock(recipe.lock_path)
    current = stored_image(cache_root, image_digest(recipe, lock))
    stale = stored_image(cache_root, "ab" * 32)
    abandoned = cache_root / "images" / "debian12-cloud" / ".build-0123456789abcdef-x"
    abandoned.mkdir()
    kept_tree = cache_root / "unpacked" / "kernel" / unpacked_tree_key(lock, "kernel")
    old_tree = cache_root / "unpacked" / "kernel" / ("0" * 32)
    kept_tree.mkdir(parents=True)
    old_tree.mkdir()

    assert main(["image", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{current.name[:12]}" in listing and "current" in listing
    assert f"{stale.name[:12]}" in listing and "stale" in listing

    assert main(["image", "clean"]) == 0
    assert "removed 1 image(s), 1 unpacked package tree(s) and 1 abandoned" in \
        capsys.readouterr().out
    assert current.exists() and not stale.exists() and not abandoned.exists()
    assert kept_tree.exists() and not old_tree.exists()

    assert main(["image", "clean", "--all"]) == 0
    assert not current.exists() and not kept_tree.exists()


def test_build_with_bad_recipe_reports_file_and_line(cache_root, recipe_dir, capsys) -> None:
    path = write_recipe(recipe_dir, VALID_RECIPE.replace("busybox: /bin/busybox",
                                                         "busybox: bin/busybox"))
    assert main(["image", "build", str(path)]) == 2
    assert f"{path}:9: field 'busybox'" in capsys.readouterr().err
