"""Pool tags: the four bytes poolmon shows, and the driver's default tag.

A tag is stored and displayed as four bytes in memory order (``b"Echo"``).
A C driver writes the same tag as the character constant ``'ohcE'`` (the
ULONG 0x6F686345): both forms are accepted wherever a tag is an argument.
"""

from __future__ import annotations

from .errors import ArgumentError

FX_TAG = b"FxDr"  # the framework's own tag, used when the service name gives none
WDF_DRIVER_GLOBALS_NAME_LEN = 32
DDK_DEFAULT_TAG = b"Ddk "  # ' kdD': rejected as a DriverPoolTag by WdfDriverCreate


def tag_bytes(tag: int | bytes | str, *, field: str = "PoolTag") -> bytes:
    """Normalise a tag argument to four display-order bytes (0 stays b'\\0\\0\\0\\0')."""
    if type(tag) is bytes and len(tag) == 4:
        return tag
    if isinstance(tag, str):
        tag = tag.encode("latin-1")
    if isinstance(tag, (bytes, bytearray)):
        if len(tag) > 4:
            raise ArgumentError("a pool tag has at most four bytes", field=field, value=bytes(tag))
        return bytes(tag).ljust(4, b"\0")
    if isinstance(tag, int) and 0 <= tag <= 0xFFFFFFFF:
        return tag.to_bytes(4, "little")
    raise ArgumentError("a pool tag is a ULONG or up to four bytes", field=field, value=tag)


def tag_value(tag: bytes) -> int:
    """The ULONG a C driver would pass for display-order ``tag``."""
    return int.from_bytes(tag, "little")


def format_tag(tag: bytes) -> str:
    """Printable tag, non-printing bytes as ``\\xNN``, e.g. ``Abc\\x00``."""
    return "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in tag)


def driver_name_from_registry_path(registry_path: str) -> str:
    """The framework's DriverName: the last component of the registry path (31 chars max).

    Real behaviour [S]: a path without a backslash yields the name "WDF".
    A bare service name given to :class:`Framework` is turned into a full
    ``...\\Services\\<name>`` path first, so it is not subject to this.
    """
    cut = registry_path.rfind("\\")
    if cut <= 0:
        return "WDF"
    return registry_path[cut + 1:][:WDF_DRIVER_GLOBALS_NAME_LEN - 1]


def default_driver_tag(driver_name: str) -> bytes:
    """The tag WdfDriverCreate derives from the driver name [S].

    Skip a leading "WDF" (any case); two or fewer characters left give
    "FxDr"; otherwise the first up to four characters, three characters
    giving three bytes and a zero byte.
    """
    name = driver_name.encode("latin-1", "replace")
    if len(name) >= 3 and name[:3].lower() == b"wdf":
        name = name[3:]
    if len(name) <= 2:
        return FX_TAG
    return name[:4].ljust(4, b"\0")
