"""Per-image keys: paramiko loads the client key; the dropbear host key is well formed."""

from __future__ import annotations

import base64
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import paramiko
import pytest

from guest_images.keys import generate_client_key, generate_host_key


def test_client_key_loads_in_paramiko_and_is_private(tmp_path: Path) -> None:
    key = generate_client_key("wdfhil-test")
    path = tmp_path / "client_key"
    key.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = paramiko.Ed25519Key.from_private_key_file(str(path))
    assert f"{loaded.get_name()} {loaded.get_base64()} wdfhil-test" == key.public_line
    assert (tmp_path / "client_key.pub").read_text().strip() == key.public_line


def test_keys_differ_every_time() -> None:
    assert generate_client_key("a").public_line != generate_client_key("a").public_line
    assert generate_host_key().public_line != generate_host_key().public_line


def _ssh_strings(blob: bytes) -> list[bytes]:
    parts, offset = [], 0
    while offset < len(blob):
        (length,) = struct.unpack_from(">I", blob, offset)
        parts.append(blob[offset + 4:offset + 4 + length])
        offset += 4 + length
    return parts


def test_host_key_is_dropbear_format_of_the_pinned_public_key() -> None:
    key = generate_host_key()
    kind, secret = _ssh_strings(key.dropbear)
    assert kind == b"ssh-ed25519" and len(secret) == 64
    algorithm, encoded = key.public_line.split()
    assert algorithm == "ssh-ed25519"
    assert _ssh_strings(base64.b64decode(encoded)) == [b"ssh-ed25519", secret[32:]]


def test_dropbearkey_reads_the_host_key(tmp_path: Path) -> None:
    """Cross-check with dropbear's own tool when the host has it."""
    tool = shutil.which("dropbearkey")
    if tool is None:
        pytest.skip("dropbearkey is not installed")
    key = generate_host_key()
    path = tmp_path / "host_key"
    path.write_bytes(key.dropbear)
    out = subprocess.run([tool, "-y", "-f", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert key.public_line in out
