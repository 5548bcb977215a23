"""Sizes as people write them in configs ("256M", "1G", 4096, "0x1000")."""

from __future__ import annotations

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string with an optional K/M/G/T suffix (powers of 1024).

    Raises ValueError with a readable message for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
    if text.startswith("0X"):
        return int(text, 16)
    number, suffix = text, ""
    if text and text[-1] in _SUFFIXES:
        number, suffix = text[:-1], text[-1]
    try:
        amount = int(number.strip())
    except ValueError:
        raise ValueError(f"not a size: {value!r} (write e.g. 4096, 256M, 1G)") from None
    if amount < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    return amount * _SUFFIXES[suffix]


def format_size(size: int) -> str:
    """The shortest exact K/M/G spelling of ``size`` (for logs and kernel args)."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SUFFIXES[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)
