"""Per-image SSH keys, generated at build time with the ``cryptography`` library.

Each image gets its own client key (an OpenSSH-format Ed25519 private key
that paramiko loads; its public half goes into the guest's
``authorized_keys``) and its own dropbear host key, whose public line the
orchestrator pins instead of trusting whatever answers on the forwarded
port. The host key is written in dropbear's own format directly (it is two
length-prefixed strings), so no dropbear tool has to run on the build host.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_RAW = serialization.Encoding.Raw


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _public_line(key: Ed25519PrivateKey, comment: str) -> str:
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


@dataclass(frozen=True)
class ClientKey:
    private_openssh: bytes   # "-----BEGIN OPENSSH PRIVATE KEY-----" ...
    public_line: str         # "ssh-ed25519 AAAA... comment"

    def write(self, path: Path) -> None:
        """Write the private key 0600 from the start (never briefly world-readable)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.private_openssh)
        os.chmod(path, 0o600)
        path.with_name(path.name + ".pub").write_text(self.public_line + "\n")


@dataclass(frozen=True)
class HostKey:
    dropbear: bytes          # dropbear's private key file format
    public_line: str         # "ssh-ed25519 AAAA..." for pinning


def generate_client_key(comment: str) -> ClientKey:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return ClientKey(private, _public_line(key, comment))


def generate_host_key() -> HostKey:
    """An Ed25519 host key in dropbear's format: string "ssh-ed25519", then one
    string holding the 32-byte seed followed by the 32-byte public key."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    blob = _ssh_string(b"ssh-ed25519") + _ssh_string(seed + public)
    return HostKey(blob, _public_line(key, ""))
