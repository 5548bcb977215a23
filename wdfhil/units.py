"""Sizes as people write them in configs ("256M", "1G", 4096, "0x1000")."""

from __future__ import annotations

import re

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DECIMAL = re.compile(r"([0-9]+) *([KMGT]?)")
_HEX = re.compile(r"0X([0-9A-F]+)")
HINT = "write whole bytes, with an optional K, M, G or T (powers of 1024): 4096, 256M, 1G, 0x1000"
_SHOWN = 40                  # characters of a bad value a message repeats


def _shown(text: str) -> str:
    """The value as the user wrote it, for a message that already names the field
    (``field 'memory': 1.5G is not a size``): no Python quotes, but bounded, and
    escaped where it would not print on one line."""
    text = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string with an optional K/M/G/T suffix (powers of 1024,
    ``KiB``/``KB`` too) or ``0x`` hex.

    Raises ValueError whose message names the value as written and how to write a
    size; callers (orchestrator.guest_config, the scenario schema) put the file,
    line and field in front of it.
    """
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} (a yes/no value) is not a size; {HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; a size is 0 or more")
        return value
    written = str(value).strip()
    if not written:
        raise ValueError(f"an empty value is not a size; {HINT}")
    text = written.upper().removesuffix("IB").removesuffix("B")
    hexadecimal = _HEX.fullmatch(text)
    if hexadecimal:
        return int(hexadecimal.group(1), 16)
    decimal = _DECIMAL.fullmatch(text)
    if decimal is None:
        if text.startswith("-") and _DECIMAL.fullmatch(text[1:].strip()):
            raise ValueError(f"{_shown(written)} is negative; a size is 0 or more")
        raise ValueError(f"{_shown(written)} is not a size; {HINT}")
    return int(decimal.group(1)) * _SUFFIXES[decimal.group(2)]


def format_size(size: int) -> str:
    """The shortest exact K/M/G spelling of ``size`` (for logs and kernel args)."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SUFFIXES[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)
