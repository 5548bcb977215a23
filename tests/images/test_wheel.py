"""wdfhil installed as a wheel (not editable) finds what it reads at run time: the
recipes and their locks, init, the guest agent and module sources, and the built-in
guest configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import sys
from pathlib import Path
import guest_images
from guest_images import DEFAULT_RECIPE, available_recipes, load_recipe
from guest_images.cache import image_digest
from guest_images.guest_programs import AGENT_SOURCES, MODULE_SOURCES
from guest_images.lockfile import check_lock, load_lock
installed = Path(guest_images.__file__).resolve().parent
assert installed.is_relative_to(Path(sys.argv[1])), installed
recipe = load_recipe(DEFAULT_RECIPE)
lock = load_lock(recipe.lock_path)
check_lock(recipe, lock)
assert recipe.init_script.is_relative_to(installed) and recipe.init_script.is_file()
assert sorted(p.name for p in AGENT_SOURCES.glob("*.c")), "agent sources"
assert (MODULE_SOURCES / "Kbuild").is_file() and list(MODULE_SOURCES.glob("*.c"))
from orchestrator.guest_config import list_guest_configs, load_guest_config
config = load_guest_config()
assert Path(config.source).is_relative_to(Path(sys.argv[1])), config.source
print("OK", available_recipes(), image_digest(recipe, lock)[:12], list_guest_configs())
"""


def test_wheel_carries_and_finds_the_builder_data(tmp_path: Path) -> None:
    # Built from a copy: building in place would leave build/ in the source tree.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "tests"))
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(wheels), str(source)], capture_output=True, text=True,
                           cwd=tmp_path)
    if built.returncode != 0 and "Could not find a version" in built.stderr:
        pytest.skip("no package index to fetch the build backend from")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("wdfhil-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("guest_images/recipes/debian12-cloud.yaml",
                     "guest_images/recipes/debian12-cloud.lock", "guest_images/init/init.sh",
                     "guest_images/guest/module/Kbuild", "guest_images/guest/module/wdfhil_pci.c",
                     "guest_images/guest/agent/agent.c", "guest_images/guest/agent/agent.h",
                     "orchestrator/guests/pc-256m.yaml", "orchestrator/guests/q35-3g-highmem.yaml"):
        assert expected in names, expected

    # A throwaway venv outside the tree: the wheel installed into it, this venv's
    # dependencies on its path (a plain path entry: the editable install's finder,
    # which lives in a .pth of this venv, is not run there).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    (site / "wdfhil_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run = subprocess.run([str(python), "-c", CHECK, str(site)], capture_output=True,
                         text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK ['debian12-cloud']" in run.stdout and "'pc-256m', 'q35-1g'" in run.stdout
