"""Where in the driver a framework call came from.

Findings and object histories name the *driver's* file:line, not the
framework's: the call site is the first frame outside this package (the
demo counts as a driver). ``sys._getframe`` walking costs well under a
microsecond; ``inspect.stack()`` would read source files and cost
milliseconds, so it is never used.
"""

from __future__ import annotations

import os
import sys

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


def driver_site() -> CallSite:
    """The innermost frame on the stack that is not framework code."""
    frame = _getframe(1)
    known = _is_internal
    while frame is not None:
        filename = frame.f_code.co_filename
        internal = known.get(filename)
        if internal is None:
            internal = _classify(filename)
        if not internal:
            return (filename, frame.f_lineno)
        frame = frame.f_back
    return UNKNOWN_SITE


def format_site(site: CallSite | None) -> str:
    """``file:line`` with the path shortened relative to the working directory."""
    if site is None:
        return "<unknown>"
    filename, line = site
    try:
        rel = os.path.relpath(filename)
        if not rel.startswith(".."):
            filename = rel
    except ValueError:
        pass
    return f"{filename}:{line}"
