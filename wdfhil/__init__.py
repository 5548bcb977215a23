"""Shared foundation of wdfhil: the error hierarchy, YAML files with line
numbers and private folders. Every other package may import it; it imports
none of them (data flows one way)."""

from wdfhil.errors import (
    ConfigError,
    DeviceProtocolError,
    GuestError,
    ImageBuildError,
    LaunchError,
    WdfhilError,
)

__all__ = [
    "ConfigError",
    "DeviceProtocolError",
    "GuestError",
    "ImageBuildError",
    "LaunchError",
    "WdfhilError",
]
