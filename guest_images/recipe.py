"""Image recipes: the YAML file that says what goes into a guest image.

A recipe names Debian packages and a few choices (kernel modules loaded at
boot, kernel arguments, the files copied from the packages, the guest's
address); it never names versions: those are pinned in the lock file next
to it (see :mod:`guest_images.lockfile`). Every mistake is reported with the
file, the line and the field (:class:`~wdfhil.errors.ConfigError`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from wdfhil.errors import ConfigError
from wdfhil.yamlfile import YamlList, YamlMap, load_yaml_mapping, reject_unknown_keys, take

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "debian12-cloud"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Paths in it are guest paths (absolute, POSIX)."""

    name: str
    path: Path
    description: str
    kernel_package: str
    boot_modules: tuple[str, ...]
    kernel_cmdline: tuple[str, ...]
    packages: tuple[str, ...]
    busybox: str
    files: tuple[str, ...]
    init_script: Path
    address: str          # "10.0.2.15/24"
    gateway: str          # "10.0.2.2"
    field_lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def error(self, field_name: str, message: str, value: Any = None) -> ConfigError:
        """A ConfigError pointing at a field ("kernel.modules", "files[1]") of the recipe,
        for mistakes found only while building (a module or file not in the packages)."""
        return ConfigError(message, file=str(self.path), line=self.field_lines.get(field_name),
                           field=field_name, value=value)

    @property
    def lock_path(self) -> Path:
        """The lock file that pins this recipe's packages (committed next to it)."""
        return self.path.with_suffix(".lock")

    def identity(self) -> dict[str, Any]:
        """What of the recipe shapes the image (for the content digest)."""
        return {
            "kernel_package": self.kernel_package, "boot_modules": list(self.boot_modules),
            "kernel_cmdline": list(self.kernel_cmdline), "packages": list(self.packages),
            "busybox": self.busybox, "files": list(self.files),
            "address": self.address, "gateway": self.gateway,
        }


def available_recipes() -> list[str]:
    """Names of the recipes shipped with wdfhil."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe: str | Path | None = None) -> Path:
    """The recipe file for a name ("debian12-cloud"), a path, or None (the default)."""
    if recipe is None:
        recipe = DEFAULT_RECIPE
    if isinstance(recipe, Path) or "/" in recipe or recipe.endswith((".yaml", ".yml")):
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError("recipe file not found", file=str(path))
        return path.resolve()
    path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {recipe!r} (known: {', '.join(available_recipes())}; "
                          "or give the path of a recipe file)", field="recipe", value=recipe)
    return path


def _string_list(mapping: YamlMap, key: str, check: Callable[[str], str], what: str, *,
                 unique: bool = True, allow_empty: bool = False) -> tuple[str, ...]:
    """A list of strings, each passed through ``check`` (raises ValueError); errors name
    the item's own line and ``key[index]``."""
    items = take(mapping, key, list)
    if not items and not allow_empty:
        raise mapping.error(key, f"needs at least one {what}")
    result: list[str] = []
    for index, item in enumerate(items):
        line = items.line_of(index) if isinstance(items, YamlList) else mapping.line_of(key)

        def fail(message: str) -> ConfigError:
            return ConfigError(message, file=mapping.file, line=line,
                               field=f"{mapping.field_name(key)}[{index}]", value=item)

        if not isinstance(item, str):
            raise fail(f"expected a {what} (a string), got {type(item).__name__} {item!r}")
        try:
            value = check(item)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if unique and value in result:
            raise fail(f"{what} {item!r} is listed twice")
        result.append(value)
    return tuple(result)


def _matching(pattern: str, what: str) -> Callable[[str], str]:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"not a valid {what}: {value!r}")
        return value
    return check


_package_name = _matching(r"^[a-z0-9][a-z0-9+.-]+$", "Debian package name")
_module_name = _matching(r"^[A-Za-z0-9_-]+$", "kernel module name")
_kernel_arg = _matching(r"^\S+$", "kernel argument (one word, no spaces)")


def _guest_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or str(path) == "/":
        raise ValueError(f"expected an absolute guest path such as /usr/sbin/dropbear, "
                         f"got {value!r}")
    return str(path)


def _field_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """The line of every field and list item, by dotted name ("kernel.modules[0]")."""
    lines: dict[str, int] = {}
    if isinstance(node, YamlMap):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            lines[name] = node.line_of(key)
            lines.update(_field_lines(value, name))
    elif isinstance(node, YamlList):
        for index, value in enumerate(node):
            name = f"{prefix}[{index}]"
            lines[name] = node.line_of(index)
            lines.update(_field_lines(value, name))
    return lines


def _section(mapping: YamlMap, key: str, allowed: set[str]) -> YamlMap:
    section = take(mapping, key, dict)
    reject_unknown_keys(section, allowed)
    return section


def load_recipe(recipe: str | Path | None = None) -> Recipe:
    """Read and validate a recipe (a name, a path, or None for the default)."""
    path = recipe_path(recipe)
    top = load_yaml_mapping(path)
    reject_unknown_keys(top, {"description", "kernel", "packages", "busybox", "files", "init",
                              "network"})
    kernel = _section(top, "kernel", {"package", "modules", "cmdline"})
    network = _section(top, "network", {"address", "gateway"})

    def interface(value: str) -> str:
        try:
            return str(ipaddress.IPv4Interface(value))
        except ValueError:
            raise ValueError(f"expected an IPv4 address with prefix, e.g. 10.0.2.15/24, "
                             f"got {value!r}") from None

    address = take(network, "address", str, convert=interface)
    subnet = ipaddress.IPv4Interface(address).network

    def gateway(value: str) -> str:
        try:
            gw = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"expected an IPv4 address, got {value!r}") from None
        if gw not in subnet:
            raise ValueError(f"gateway {value} is outside the guest's network {subnet}")
        return str(gw)

    def init_file(value: str) -> Path:
        script = (path.parent / value).resolve()
        if not script.is_file():
            raise ValueError(f"init script not found: {script}")
        return script

    return Recipe(
        name=path.stem,
        path=path,
        description=take(top, "description", str, default=""),
        kernel_package=take(kernel, "package", str, convert=_package_name),
        boot_modules=_string_list(kernel, "modules", _module_name, "kernel module name"),
        kernel_cmdline=_string_list(kernel, "cmdline", _kernel_arg, "kernel argument",
                                    unique=False, allow_empty=True),
        packages=_string_list(top, "packages", _package_name, "Debian package name"),
        busybox=take(top, "busybox", str, convert=_guest_path),
        files=_string_list(top, "files", _guest_path, "guest path"),
        init_script=take(top, "init", str, convert=init_file),
        address=address,
        gateway=take(network, "gateway", str, convert=gateway),
        field_lines=_field_lines(top),
    )
