"""Where in the driver a framework call came from.

Findings and object histories name the *driver's* file:line, not the
framework's: the call site is the first frame outside this package (the
demo counts as a driver). ``sys._getframe`` walking costs well under a
microsecond; ``inspect.stack()`` would read source files and cost
milliseconds, so it is never used.

A frame's ``f_lineno`` is not free either: CPython 3.11 finds it by
scanning the code object's line table from the start, so its cost grows
with the size of the driver's function. The line of a given instruction
of a given code object never changes, so it is remembered by instruction
offset (a small int: no arithmetic, one probe), together with the code
object it belongs to; a hit needs that very object (an identity check; the
entry keeps the object alive, so its id cannot be reused). Another code
object calling from the same offset just replaces the entry. The memory is
bounded and simply starts over when full.

Walking is not free either: each frame ``f_back`` reaches is materialised as a
frame object (CPython 3.11), which is copied out again when that frame returns
(~2.5k instructions a frame). An entry point the driver calls directly uses
caller_site(), which looks at the caller's frame alone (``sys._getframe(2)``
skips the frames between without materialising them) and walks only when that
frame is not a known driver site; a framework helper that has the site already
takes it as an argument rather than walking again from deeper down.
"""

from __future__ import annotations

import os
import sys
from types import CodeType, FrameType

CallSite = tuple[str, int]
"""(filename, line) of a driver call: a plain tuple because it is stored for every object."""

UNKNOWN_SITE: CallSite = ("<unknown>", 0)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_DRIVER_FILES_IN_PACKAGE = (os.path.join(_PACKAGE_DIR, "demo.py"),)
_is_internal: dict[str, bool] = {}
_getframe = sys._getframe


def _classify(filename: str) -> bool:
    path = os.path.abspath(filename)
    internal = path.startswith(_PACKAGE_DIR) and path not in _DRIVER_FILES_IN_PACKAGE
    _is_internal[filename] = internal
    return internal


_SITE_MEMORY_LIMIT = 8192
_sites: dict[int, tuple[CodeType, CallSite | None]] = {}
"""instruction offset -> (the code object last seen there, its driver site or None for framework code)."""


def _resolve(frame: FrameType) -> CallSite | None:
    """The site of ``frame`` (None for framework code), remembered for its offset."""
    code = frame.f_code
    filename = code.co_filename
    internal = _is_internal.get(filename)
    if internal is None:
        internal = _classify(filename)
    site = None if internal else (filename, frame.f_lineno)
    if len(_sites) >= _SITE_MEMORY_LIMIT:
        _sites.clear()
    _sites[frame.f_lasti] = (code, site)
    return site


def driver_site() -> CallSite:
    """The innermost frame on the stack that is not framework code."""
    frame = _getframe(1)
    sites = _sites
    while frame is not None:
        known = sites.get(frame.f_lasti)
        site = known[1] if known is not None and known[0] is frame.f_code else _resolve(frame)
        if site is not None:
            return site
        frame = frame.f_back
    return UNKNOWN_SITE


def caller_site() -> CallSite:
    """driver_site() as seen from a framework entry point, quickest when the driver
    called that entry point directly (the common case: one lookup, no walk)."""
    try:
        frame = _getframe(2)
    except ValueError:  # called from the bottom of a thread's stack, by C code
        return driver_site()
    known = _sites.get(frame.f_lasti)
    if known is not None and known[0] is frame.f_code and known[1] is not None:
        return known[1]
    return driver_site()


_short_names: dict[tuple[str, str], str] = {}
"""(filename, working directory) -> the name format_site shows: os.path.relpath costs
about 10 us, and messages naming a site are built on every guest I/O request."""


def format_site(site: CallSite | None) -> str:
    """``file:line`` with the path shortened relative to the working directory."""
    if site is None:
        return "<unknown>"
    filename, line = site
    key = (filename, os.getcwd())
    short = _short_names.get(key)
    if short is None:
        short = filename
        try:
            rel = os.path.relpath(filename)
            if not rel.startswith(".."):
                short = rel
        except ValueError:
            pass
        if len(_short_names) >= _SITE_MEMORY_LIMIT:
            _short_names.clear()
        _short_names[key] = short
    return f"{short}:{line}"
