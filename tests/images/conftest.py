"""Slow image tests: the default image is really built once per session.

The build runs in two processes at once into a fresh image cache, so the
session also checks that concurrent builds of one image do not collide
(exactly one of them assembles it, both get the same image). Downloaded
packages and unpacked package trees come from the user's shared cache.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from guest_images import GuestImage

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
def session_build(tmp_path_factory: pytest.TempPathFactory) -> SessionBuild:
    root = tmp_path_factory.mktemp("image-cache")
    started = time.monotonic()
    processes = [subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(root)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=1200)
        assert process.returncode == 0, out
        outputs.append(out)
    return SessionBuild(root, outputs, time.monotonic() - started)


@pytest.fixture(scope="session")
def image(session_build: SessionBuild) -> GuestImage:
    return session_build.image
