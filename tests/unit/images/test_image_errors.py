"""Clear errors: a missing host tool, a package apt cannot give, a pin that went away."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest_images import apt
from guest_images.guest_programs import AGENT_SOURCES, compile_agent, write_abi_header
from wdfhil.errors import ImageBuildError

needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian host")


def test_missing_tool_names_tool_and_package(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImageBuildError) as info:
        compile_agent(AGENT_SOURCES, write_abi_header(tmp_path).parent, tmp_path / "agent")
    assert "'gcc'" in str(info.value) and "apt-get install gcc" in str(info.value)
    with pytest.raises(ImageBuildError, match="'make'.*apt-get install make"):
        apt.require_tool("make")


def test_failing_tool_shows_command_and_output(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError) as info:
        apt.run_tool(["sh", "-c", "echo broken >&2; exit 3"], what="testing a tool")
    message = str(info.value)
    assert "testing a tool failed (exit 3)" in message and "broken" in message
    assert "command: sh -c" in message


def test_compile_error_is_an_image_build_error(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    sources = tmp_path / "agent"
    sources.mkdir()
    (sources / "bad.c").write_text("int main(void) { return undefined_name; }\n")
    with pytest.raises(ImageBuildError,
                       match="(?s)compiling the guest agent failed.*undefined_name"):
        compile_agent(sources, tmp_path, tmp_path / "out")


@needs_apt
def test_unknown_package() -> None:
    with pytest.raises(ImageBuildError, match="no installable version of package "
                                              "'wdfhil-no-such-package'"):
        apt.show("wdfhil-no-such-package")


@needs_apt
def test_pinned_version_gone_tells_to_relock(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError) as info:
        apt.fetch_deb("busybox-static", "0.0-wdfhil-bogus", "amd64", "0" * 64, tmp_path,
                      relock_hint="re-pin with `wdfhil image lock debian12-cloud`")
    message = str(info.value)
    assert "busybox-static=0.0-wdfhil-bogus" in message
    assert "wdfhil image lock debian12-cloud" in message
    assert not list(tmp_path.iterdir()), "no partial download is left"


def test_damaged_cached_deb_is_not_used(tmp_path: Path, monkeypatch) -> None:
    """A cached .deb whose hash is wrong is thrown away and fetched again."""
    cached = tmp_path / apt.deb_file_name("busybox-static", "1:1.0", "amd64")
    cached.write_bytes(b"damaged")
    fetched = []

    def fake_run_tool(args, *, what, cwd=None, env=None):
        fetched.append(args)
        (Path(cwd) / "busybox-static_1%3a1.0_amd64.deb").write_bytes(b"good")
        return ""

    monkeypatch.setattr(apt, "run_tool", fake_run_tool)
    good = apt.sha256_of(_write(tmp_path / "x", b"good"))
    path = apt.fetch_deb("busybox-static", "1:1.0", "amd64", good, tmp_path, relock_hint="")
    assert path == cached and path.read_bytes() == b"good" and len(fetched) == 1
    # a download whose hash differs from the pin is refused
    with pytest.raises(ImageBuildError, match="does not match the pinned"):
        apt.fetch_deb("busybox-static", "1:1.0", "amd64", "1" * 64, tmp_path,
                      relock_hint="re-pin")
    assert not path.exists() or apt.sha256_of(path) != "1" * 64


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
