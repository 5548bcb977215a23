"""The content-addressed cache: what changes the digest, and that a folder is all or nothing."""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

import guest_images.builder as builder
import guest_images.cache as cache
from guest_images import build_image, load_recipe
from guest_images.builder import ImageBuild
from guest_images.cache import (BUILD_PREFIX, cached_folder, exclusive, image_digest,
                                remove_abandoned_builds)
from guest_images.guest_programs import GUEST_SOURCES
from guest_images.image import MANIFEST
from guest_images.lockfile import load_lock


@pytest.fixture
def default():
    recipe = load_recipe(None)
    return recipe, load_lock(recipe.lock_path)


@pytest.fixture
def guest_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The digest reads a copy of the guest sources that the test may edit."""
    copy = tmp_path / "guest"
    shutil.copytree(GUEST_SOURCES, copy, ignore=shutil.ignore_patterns("*.o", ".*"))
    monkeypatch.setattr(cache, "GUEST_SOURCES", copy)
    return copy


def test_digest_is_stable(default, guest_copy: Path) -> None:
    recipe, lock = default
    assert image_digest(recipe, lock) == image_digest(load_recipe(None), lock)


def test_guest_source_change_changes_digest(default, guest_copy: Path) -> None:
    recipe, lock = default
    before = image_digest(recipe, lock)
    agent = sorted((guest_copy / "agent").glob("*.c"))[0]
    agent.write_text(agent.read_text() + "\n/* changed */\n")
    assert image_digest(recipe, lock) != before
    module = guest_copy / "module" / "Kbuild"
    changed = image_digest(recipe, lock)
    module.write_text(module.read_text() + "# changed\n")
    assert image_digest(recipe, lock) != changed


def test_new_source_file_changes_digest_but_hidden_files_do_not(default, guest_copy) -> None:
    recipe, lock = default
    before = image_digest(recipe, lock)
    (guest_copy / "agent" / ".swap").write_text("editor junk")
    (guest_copy / "agent" / "__pycache__").mkdir()
    (guest_copy / "agent" / "__pycache__" / "x.pyc").write_text("junk")
    assert image_digest(recipe, lock) == before
    (guest_copy / "agent" / "extra.c").write_text("int extra;\n")
    assert image_digest(recipe, lock) != before


def test_abi_change_changes_digest(default, guest_copy, monkeypatch) -> None:
    recipe, lock = default
    before = image_digest(recipe, lock)
    original = cache.render_c_header
    monkeypatch.setattr(cache, "render_c_header", lambda: original() + "#define WH_NEW 1u\n")
    assert image_digest(recipe, lock) != before


def test_init_script_recipe_and_lock_change_digest(default, guest_copy, tmp_path) -> None:
    recipe, lock = default
    before = image_digest(recipe, lock)
    other_init = tmp_path / "init.sh"
    other_init.write_text(recipe.init_script.read_text() + "# changed\n")
    assert image_digest(replace(recipe, init_script=other_init), lock) != before
    assert image_digest(replace(recipe, kernel_cmdline=("console=ttyS0",)), lock) != before
    first = replace(lock.packages[0], sha256="0" * 64)
    assert image_digest(recipe, replace(lock, packages=(first,) + lock.packages[1:])) != before
    # the description does not shape the image
    assert image_digest(replace(recipe, description="other words"), lock) == before


def _fill_marker(folder: Path) -> None:
    (folder / "payload").write_text("data")
    (folder / ".complete").touch()


def test_cached_folder_fills_once(tmp_path: Path) -> None:
    calls = []

    def fill(folder: Path) -> None:
        calls.append(folder)
        _fill_marker(folder)

    first = cached_folder(tmp_path, "k1", ".complete", fill)
    second = cached_folder(tmp_path, "k1", ".complete", fill)
    assert first == second == tmp_path / "k1"
    assert len(calls) == 1 and (first / "payload").read_text() == "data"
    assert not list(tmp_path.glob(f"{BUILD_PREFIX}*"))


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_fill_leaves_nothing(tmp_path: Path, failure: BaseException) -> None:
    def fill(folder: Path) -> None:
        (folder / "half").write_text("half written")
        raise failure

    with pytest.raises(type(failure)):
        cached_folder(tmp_path, "k2", ".complete", fill)
    assert not (tmp_path / "k2").exists()
    assert not list(tmp_path.glob(f"{BUILD_PREFIX}*"))


def test_fill_that_forgets_its_marker_is_not_published(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="without .complete"):
        cached_folder(tmp_path, "k3", ".complete", lambda folder: None)
    assert not (tmp_path / "k3").exists()


def _fill_in_process(root: str, counter: str, barrier) -> None:
    def fill(folder: Path) -> None:
        with open(counter, "a") as handle:
            handle.write("filled\n")
        time.sleep(1.0)  # keep the lock while the other process asks for the folder
        _fill_marker(folder)

    barrier.wait()
    cached_folder(Path(root), "shared", ".complete", fill)


def test_two_processes_fill_one_folder_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    counter = tmp_path / "counter"
    workers = [context.Process(target=_fill_in_process,
                               args=(str(tmp_path / "root"), str(counter), barrier))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert counter.read_text() == "filled\n"
    assert (tmp_path / "root" / "shared" / "payload").read_text() == "data"


def test_abandoned_build_folders_are_removed_unless_in_use(tmp_path: Path) -> None:
    abandoned = tmp_path / "img" / f"{BUILD_PREFIX}aaaaaaaaaaaaaaaa-x1"
    busy = tmp_path / "img" / f"{BUILD_PREFIX}bbbbbbbbbbbbbbbb-x2"
    abandoned.mkdir(parents=True)
    busy.mkdir()
    with exclusive(tmp_path / "img", "b" * 64):
        assert remove_abandoned_builds(tmp_path) == 1
    assert not abandoned.exists() and busy.exists()


def _leftover_work_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("wdfhil-image-*")}


@pytest.fixture
def pins_at_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pin counts as cached, so build_image asks apt nothing (the lock policy
    is tested against a fake apt in test_image_lock_policy.py)."""
    monkeypatch.setattr(builder, "_have_locally", lambda lock: lambda pin: True)


def test_interrupted_build_leaves_no_image_and_no_temp_folder(tmp_path, monkeypatch,
                                                              pins_at_hand) -> None:
    before = _leftover_work_dirs()

    def interrupted(self: ImageBuild) -> None:
        (self.output / "initramfs.cpio.gz").write_bytes(b"half")
        (self.work / "scratch").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageBuild, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_image(cache_root=tmp_path)
    assert not list(tmp_path.rglob(MANIFEST))
    assert not list(tmp_path.rglob(f"{BUILD_PREFIX}*"))
    assert not list(tmp_path.rglob("initramfs.cpio.gz"))
    assert _leftover_work_dirs() <= before


def test_second_build_is_a_cache_hit(tmp_path, monkeypatch, pins_at_hand) -> None:
    """The cache plumbing of build_image, with a stand-in for the slow build steps
    (the real build is checked in tests/images)."""
    runs = []
    real_run = ImageBuild.run

    def fake_run(self: ImageBuild) -> None:
        runs.append(self.digest)
        for name in ("vmlinuz", "initramfs.cpio.gz", "client_key"):
            (self.output / name).write_bytes(b"stand-in")
        from guest_images.image import GuestImage
        GuestImage(self.recipe.name, self.digest, self.output / "vmlinuz",
                   self.output / "initramfs.cpio.gz", ("console=ttyS0",),
                   self.output / "client_key", "ssh-ed25519 AAAA", "root", "WDFHIL-READY",
                   self.release, "/usr/bin/wdfhil-agent",
                   "/lib/modules/wdfhil/wdfhil_pci.ko").with_file_records().write_manifest()

    assert real_run is not fake_run
    monkeypatch.setattr(ImageBuild, "run", fake_run)
    messages: list[str] = []
    first = build_image(cache_root=tmp_path, progress=messages.append)
    second = build_image(cache_root=tmp_path, progress=messages.append)
    assert runs == [first.digest]
    assert first == second
    assert any("is in the cache" in message for message in messages)
