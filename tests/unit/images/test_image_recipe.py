"""Recipes: the default one loads; every mistake names its file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_images import DEFAULT_RECIPE, load_recipe, recipe_path
from wdfhil.errors import ConfigError

from image_test_helpers import VALID_RECIPE, write_recipe


def test_default_recipe_loads() -> None:
    recipe = load_recipe(None)
    assert recipe.name == DEFAULT_RECIPE
    assert recipe.path == recipe_path(DEFAULT_RECIPE)
    assert recipe.kernel_package == "linux-image-cloud-amd64"
    assert "virtio_net" in recipe.boot_modules
    assert "console=ttyS0" in recipe.kernel_cmdline
    assert recipe.init_script.is_file()
    assert recipe.lock_path.is_file(), "the default recipe's lock is committed"


def test_valid_test_recipe(recipe_dir: Path) -> None:
    recipe = load_recipe(write_recipe(recipe_dir, VALID_RECIPE))
    assert recipe.name == "test-image"
    assert recipe.files == ("/usr/sbin/dropbear",)
    assert recipe.address == "10.0.2.15/24" and recipe.gateway == "10.0.2.2"
    assert recipe.init_script == recipe_dir / "init.sh"


def test_unknown_recipe_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="debian12-cloud") as info:
        recipe_path("no-such-recipe")
    assert info.value.field == "recipe"


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        load_recipe(tmp_path / "absent.yaml")
    assert info.value.file == str(tmp_path / "absent.yaml")


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


# (what is changed in VALID_RECIPE, the field the error must name, the line it is on,
#  words the message must contain)
BAD_RECIPES = [
    pytest.param(("    packages:\n", "    pakages:\n"), "pakages", 6, "unknown field",
                 id="typo-in-field-name"),
    pytest.param(("      - dropbear-bin\n", "      - dropbear-bin\n      - Bad_Name\n"),
                 "packages[2]", 9, "Debian package name", id="bad-package-name"),
    pytest.param(("      - dropbear-bin\n", "      - dropbear-bin\n      - busybox-static\n"),
                 "packages[2]", 9, "twice", id="duplicate-package"),
    pytest.param(("[virtio_pci, virtio_net]", "[virtio_pci, 'virtio net']"), "kernel.modules[1]", 4,
                 "kernel module name", id="bad-module-name"),
    pytest.param(("[virtio_pci, virtio_net]", "[virtio_pci, 7]"), "kernel.modules[1]", 4,
                 "got int", id="module-not-a-string"),
    pytest.param(("[virtio_pci, virtio_net]", "[]"), "kernel.modules", 4, "at least one",
                 id="no-modules"),
    pytest.param(("[console=ttyS0, panic=-1]", "['console=ttyS0 panic=-1']"),
                 "kernel.cmdline[0]", 5, "no spaces", id="cmdline-with-space"),
    pytest.param(("busybox: /bin/busybox", "busybox: bin/busybox"), "busybox", 9,
                 "absolute guest path", id="relative-busybox-path"),
    pytest.param(("      - /usr/sbin/dropbear\n", "      - /usr/../etc/shadow\n"), "files[0]", 11,
                 "absolute guest path", id="dotdot-in-file"),
    pytest.param(("init: init.sh", "init: missing.sh"), "init", 12, "init script not found",
                 id="missing-init-script"),
    pytest.param(("address: 10.0.2.15/24", "address: 10.0.2.300/24"), "network.address", 14,
                 "IPv4 address with prefix", id="bad-address"),
    pytest.param(("gateway: 10.0.2.2", "gateway: 192.168.1.1"), "network.gateway", 15,
                 "outside the guest's network", id="gateway-outside-network"),
    pytest.param(("      package: linux-image-cloud-amd64\n", ""), "kernel.package", 3,
                 "required field is missing", id="missing-kernel-package"),
    pytest.param(("      cmdline: [console=ttyS0, panic=-1]\n",
                  "      cmdline: [console=ttyS0, panic=-1]\n      initrd: yes\n"),
                 "kernel.initrd", 6, "unknown field", id="unknown-kernel-field"),
    pytest.param(("    network:\n      address: 10.0.2.15/24\n      gateway: 10.0.2.2\n",
                  "    network: user\n"), "network", 13, "expected dict",
                 id="network-not-a-mapping"),
]


@pytest.mark.parametrize("change, field, line, words", BAD_RECIPES)
def test_bad_recipe_names_file_line_and_field(recipe_dir: Path, change: tuple[str, str],
                                              field: str, line: int, words: str) -> None:
    path = write_recipe(recipe_dir, _replace(VALID_RECIPE, *change))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    error = info.value
    assert error.file == str(path)
    assert error.field == field
    assert error.line == line, str(error)
    assert words in str(error)
    assert f"{path}:{line}:" in str(error)


def test_yaml_syntax_error_names_the_line(recipe_dir: Path) -> None:
    path = write_recipe(recipe_dir, VALID_RECIPE + "    files: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML syntax error") as info:
        load_recipe(path)
    assert info.value.file == str(path) and info.value.line is not None


def test_recipe_field_error_after_loading_points_at_the_item(recipe_dir: Path) -> None:
    """Mistakes found while building (a module the kernel lacks) still name the line."""
    recipe = load_recipe(write_recipe(recipe_dir, VALID_RECIPE))
    error = recipe.error("kernel.modules[1]", "kernel module 'virtio_net' is not there")
    assert error.line == 4 and error.field == "kernel.modules[1]"
    assert recipe.error("files[0]", "x").line == 11
