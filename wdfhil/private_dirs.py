"""Private folders (0700) that are always removed, and the user's cache folder.

Run folders hold sockets, keys and guest RAM; nobody else on the machine may
read them, and none may outlive a run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$WDFHIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/wdfhil``,
    else ``~/.cache/wdfhil``), created 0700, joined with ``parts``."""
    root = os.environ.get("WDFHIL_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "wdfhil"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def make_private_dir(prefix: str, parent: str | Path | None = None) -> Path:
    """A fresh 0700 folder; the caller owns its removal (see :func:`private_dir`)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=str(parent) if parent else None))
    os.chmod(path, 0o700)
    return path


def remove_tree(path: str | Path) -> None:
    """Remove a folder and everything in it; a folder already gone is fine."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def private_dir(prefix: str, parent: str | Path | None = None) -> Iterator[Path]:
    """A 0700 folder that is removed on leaving, whatever happens inside."""
    path = make_private_dir(prefix, parent)
    try:
        yield path
    finally:
        remove_tree(path)
