"""The layering rule, checked on the source: which package may import which.

``wdfhil`` (errors, YAML, guest memory) is the floor; ``framework_emu`` and
``device_model`` each stand on it and never import each other; only
``orchestrator`` (the layer that wires a run together) imports both.
``guest_images`` takes the device's ABI module to generate the guest's C
header, and nothing else of the device. A forbidden import anywhere in a
module (also inside a function or under TYPE_CHECKING) fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("wdfhil", "framework_emu", "device_model", "guest_images", "orchestrator")

# package -> the project packages (or single modules) it may import besides itself
ALLOWED: dict[str, set[str]] = {
    "wdfhil": set(),
    "framework_emu": {"wdfhil"},
    "device_model": {"wdfhil"},
    "guest_images": {"wdfhil", "device_model.abi"},
    "orchestrator": {"wdfhil", "framework_emu", "device_model", "guest_images"},
}


def imported_modules(path: Path, package: str) -> set[str]:
    """Every absolute module name ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    parts = path.relative_to(ROOT).with_suffix("").parts
    here = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str) -> list[str]:
    allowed = ALLOWED[package]
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path, package):
            top = name.split(".")[0]
            if top not in PACKAGES or top == package:
                continue
            if top in allowed or any(name == a or name.startswith(a + ".") for a in allowed):
                continue
            # "from device_model import abi" names device_model and device_model.abi
            if any(a.startswith(name + ".") for a in allowed):
                continue
            found.append(f"{path.relative_to(ROOT)} imports {name}")
    return sorted(found)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_its_layer_allows(package):
    assert violations(package) == []


def test_the_rule_catches_a_forbidden_import(tmp_path, monkeypatch):
    """The checker itself: a device module importing the framework is reported."""
    fake_root = tmp_path
    (fake_root / "device_model").mkdir()
    (fake_root / "device_model" / "bad.py").write_text(
        "def f():\n    from framework_emu.physical_memory import PAGE_SIZE\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert violations("device_model") == [
        "device_model/bad.py imports framework_emu.physical_memory",
        "device_model/bad.py imports framework_emu.physical_memory.PAGE_SIZE"]


@pytest.mark.parametrize("package,absent", [("device_model.device", "framework_emu"),
                                            ("framework_emu", "device_model"),
                                            ("framework_emu", "orchestrator"),
                                            ("device_model.device", "orchestrator")])
def test_importing_a_layer_loads_no_sibling(package, absent):
    """What really gets loaded (a fresh interpreter), not only what the source says."""
    code = (f"import sys, {package}; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] == {absent!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
