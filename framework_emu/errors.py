"""Errors of the emulator itself (as opposed to bug checks of the emulated machine).

A driver that passes something the emulator cannot represent (a Python
``bytes`` where the framework must write, a buffer shorter than the length it
claims, a pool type that does not exist) gets an :class:`ArgumentError` naming
the argument and its value: that is a mistake in the test, not a driver bug the
emulated machine would exhibit.
"""

from __future__ import annotations

from wdfhil.errors import ConfigError, WdfhilError


class ArgumentError(ConfigError):
    """An API argument the emulator cannot accept (names the field and its value)."""


class FrameworkStateError(WdfhilError):
    """The emulated framework is not in a state where the call makes sense (e.g. unloaded)."""
