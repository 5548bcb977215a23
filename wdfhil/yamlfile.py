"""YAML files whose every value remembers its file and line.

Recipes, guest configs and scenarios are written by people; when one is
wrong the error must point at the file, the line and the field. PyYAML's
SafeLoader knows the position of every node while it builds the document,
so the loader here keeps it: mappings become :class:`YamlMap` (a ``dict``
that knows the line of each key) and sequences :class:`YamlList`.
:func:`take` reads one field with its type, choices and default, and raises
:class:`~wdfhil.errors.ConfigError` naming file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml

from wdfhil.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()


class YamlMap(dict):
    """A mapping read from a YAML file; knows where it and each key stand."""

    file: str
    line: int
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        """Line of ``key`` (1-based), or of the mapping itself when absent."""
        return self.key_lines.get(key, self.line)

    def error(self, key: str | None, message: str, value: Any = None) -> ConfigError:
        """A ConfigError pointing at ``key`` of this mapping (or the mapping)."""
        line = self.line_of(key) if key is not None else self.line
        return ConfigError(message, file=self.file, line=line, field=key, value=value)


class YamlList(list):
    """A sequence read from a YAML file; knows where it and each item stand."""

    file: str
    line: int
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader that builds YamlMap/YamlList carrying positions."""

    source_name = "<yaml>"

    def construct_yaml_map(self, node: yaml.MappingNode):  # type: ignore[override]
        data = YamlMap()
        data.file = self.source_name
        data.line = node.start_mark.line + 1
        data.key_lines = {}
        yield data
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise ConfigError("a mapping key must be a plain value",
                                  file=self.source_name, line=key_node.start_mark.line + 1)
            if key in data:
                raise ConfigError(f"key '{key}' appears twice in one mapping",
                                  file=self.source_name, line=key_node.start_mark.line + 1,
                                  field=str(key))
            data[key] = self.construct_object(value_node, deep=True)
            data.key_lines[key] = key_node.start_mark.line + 1

    def construct_yaml_seq(self, node: yaml.SequenceNode):  # type: ignore[override]
        data = YamlList()
        data.file = self.source_name
        data.line = node.start_mark.line + 1
        data.item_lines = [child.start_mark.line + 1 for child in node.value]
        yield data
        data.extend(self.construct_sequence(node, deep=True))


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _LocatingLoader.construct_yaml_map)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _LocatingLoader.construct_yaml_seq)


def load_yaml_text(text: str, source_name: str) -> Any:
    """Parse YAML text; syntax errors become ConfigError with file and line."""
    loader = _LocatingLoader(text)
    loader.source_name = source_name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"YAML syntax error: {exc.problem or exc}", file=source_name,
                          line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=source_name) from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing file is a ConfigError too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", file=str(path)) from None
    return load_yaml_text(text, str(path))


def load_yaml_mapping(path: str | Path) -> YamlMap:
    """Read a YAML file whose top level must be a mapping."""
    data = load_yaml_file(path)
    if not isinstance(data, YamlMap):
        raise ConfigError("the top level must be a mapping of fields", file=str(path),
                          line=getattr(data, "line", 1))
    return data


def reject_unknown_keys(mapping: YamlMap, allowed: Iterable[str]) -> None:
    """Refuse keys nobody reads: a typo must not pass silently."""
    allowed = set(allowed)
    for key in mapping:
        if key not in allowed:
            raise mapping.error(str(key), f"unknown field (known: {', '.join(sorted(allowed))})",
                                key)


def take(
    mapping: YamlMap,
    key: str,
    kind: type[T] | tuple[type, ...],
    *,
    default: Any = _MISSING,
    choices: Iterable[Any] | None = None,
    convert: Callable[[Any], T] | None = None,
) -> T:
    """Read ``mapping[key]`` checked against ``kind``, ``choices`` and ``convert``.

    ``convert`` may raise ValueError; its message becomes the error's text.
    Booleans are not accepted where an int is asked (YAML's ``yes`` is not 1).
    """
    if key not in mapping:
        if default is _MISSING:
            raise mapping.error(key, "required field is missing")
        return default
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise mapping.error(key, f"expected {names}, got {type(value).__name__} {value!r}", value)
    if choices is not None:
        choices = list(choices)
        if value not in choices:
            raise mapping.error(key, f"{value!r} is not one of {', '.join(map(str, choices))}",
                                value)
    if convert is not None:
        try:
            return convert(value)
        except ValueError as exc:
            raise mapping.error(key, str(exc), value) from None
    return value
