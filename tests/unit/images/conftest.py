"""Fixtures for the image builder's unit tests (no apt download, no QEMU)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    """A folder with an init script, for recipes written next to it."""
    (tmp_path / "init.sh").write_text("#!/bin/sh\necho hello\n")
    return tmp_path
