"""Slow image tests: the default image is really built once per session.

The build runs in two processes at once into a fresh image cache, so the
session also checks that concurrent builds of one image do not collide
(exactly one of them assembles it, both get the same image). Downloaded
packages and unpacked package trees come from the user's shared cache,
except with ``WDFHIL_TEST_COLD_IMAGE=1`` (set by ``.ci/run``): then the
whole cache is a fresh empty folder, so every package is downloaded from
the archive as on a fresh machine, and a pin Debian has dropped or a broken
download path turns the run red (the folder is removed afterwards).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from guest_images import GuestImage
from wdfhil.private_dirs import remove_tree

COLD_ENV = "WDFHIL_TEST_COLD_IMAGE"

BUILD_SCRIPT = """
import sys
from pathlib import Path
from guest_images import build_image
image = build_image(cache_root=Path(sys.argv[1]), progress=lambda m: print("PROGRESS", m,
                                                                        flush=True))
print("RESULT", image.folder, image.digest, flush=True)
"""


class SessionBuild:
    def __init__(self, root: Path, outputs: list[str], seconds: float) -> None:
        self.root = root
        self.outputs = outputs
        self.seconds = seconds
        folders = {line.split()[1] for out in outputs for line in out.splitlines()
                   if line.startswith("RESULT ")}
        assert len(folders) == 1, outputs
        self.image = GuestImage.from_folder(Path(folders.pop()))


@pytest.fixture(scope="session")
def session_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionBuild]:
    root = tmp_path_factory.mktemp("image-cache")
    env = dict(os.environ)
    cold = os.environ.get(COLD_ENV) == "1"
    if cold:
        env["WDFHIL_CACHE_DIR"] = str(root / "cold-cache")
    started = time.monotonic()
    processes = [subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(root)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env)
                 for _ in range(2)]
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=1200)
        assert process.returncode == 0, out
        outputs.append(out)
    if cold:
        assert sum(out.count("PROGRESS downloading ") for out in outputs) >= 10, outputs
    build = SessionBuild(root, outputs, time.monotonic() - started)
    yield build
    remove_tree(root)


@pytest.fixture(scope="session")
def image(session_build: SessionBuild) -> GuestImage:
    return session_build.image
