"""YAML files whose every value remembers its file and line.

Recipes, guest configs and scenarios are written by people; when one is
wrong the error must point at the file, the line and the field. PyYAML's
SafeLoader knows the position of every node while it builds the document,
so the loader here keeps it: mappings become :class:`YamlMap` (a ``dict``
that knows the line of each key and its own dotted place in the document,
so errors say ``pool.base``) and sequences :class:`YamlList`.
:func:`take` reads one field with its type, choices and default, and raises
:class:`~wdfhil.errors.ConfigError` naming file, line and field.

A file is hostile until read: its size (:data:`MAX_FILE_BYTES`), nesting
(:data:`MAX_DEPTH`) and size with every alias expanded (:data:`MAX_NODES`,
which stops "billion laughs" alias bombs) are bounded while it is read, and
undecodable or unprintable bytes are a ConfigError with their line, so no
file makes the loader crash, recurse or eat memory. Values in messages go
through :func:`brief`, never an unbounded ``repr()``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml

from wdfhil.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()

# Bounds for any file people write (configs, recipes, scenarios, locks are a
# few KiB). Parsing is pure Python: 1 MiB takes a fraction of a second.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64          # nested mappings/sequences (the composer recurses per level)
MAX_NODES = 100_000     # nodes of the document with every alias expanded
MAX_NUMBER_CHARS = 100  # YAML 1.1 base-60 ints (1:2:3...) cost quadratic time in their length
BRIEF_CHARS = 60        # how much of a value an error message shows


def brief(value: Any, limit: int = BRIEF_CHARS) -> str:
    """A short, bounded rendering of ``value`` for messages.

    ``repr()`` of a value read from a file may be huge (an alias bomb is a
    few hundred bytes of YAML and gigabytes of text); this walks only as far
    as ``limit`` characters need, whatever the value's shape.
    """
    parts: list[str] = []
    room = [limit]

    def put(text: str) -> bool:
        if room[0] <= 0:
            return False
        parts.append(text[:room[0]])
        room[0] -= len(text)
        return room[0] > 0

    def walk(item: Any, depth: int) -> bool:
        if isinstance(item, (str, bytes)):
            return put(repr(item[:limit + 1]))
        if isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 256:
            return put(f"<{item.bit_length()}-bit int>")
        if isinstance(item, (bool, int, float)) or item is None:
            return put(repr(item))
        if isinstance(item, dict):
            if depth > 3:
                return put("{...}")
            if not put("{"):
                return False
            for index, (key, child) in enumerate(item.items()):
                if (index and not put(", ")) or not walk(key, depth + 1) or not put(": ") \
                        or not walk(child, depth + 1):
                    return False
            return put("}")
        if isinstance(item, (list, tuple)):
            if depth > 3:
                return put("[...]")
            if not put("["):
                return False
            for index, child in enumerate(item):
                if (index and not put(", ")) or not walk(child, depth + 1):
                    return False
            return put("]")
        return put(f"<{type(item).__name__}>")

    if walk(value, 0):
        return "".join(parts)
    return "".join(parts)[:limit] + "..."


class YamlMap(dict):
    """A mapping read from a YAML file; knows where it and each key stand.

    ``path`` is its dotted place in the document (``""`` at the top,
    ``pool``, ``packages[2]``): errors about its keys name the full field.
    """

    file: str
    line: int
    key_lines: dict[Any, int]
    path: str = ""

    def line_of(self, key: Any) -> int:
        """Line of ``key`` (1-based), or of the mapping itself when absent."""
        return self.key_lines.get(key, self.line)

    def field_name(self, key: Any) -> str:
        """The full dotted name of ``key`` (``pool.base``)."""
        return f"{self.path}.{key}" if self.path else str(key)

    def error(self, key: str | None, message: str, value: Any = None) -> ConfigError:
        """A ConfigError pointing at ``key`` of this mapping (or the mapping)."""
        line = self.line_of(key) if key is not None else self.line
        field = self.field_name(key) if key is not None else (self.path or None)
        return ConfigError(message, file=self.file, line=line, field=field, value=value)


class YamlList(list):
    """A sequence read from a YAML file; knows where it and each item stand."""

    file: str
    line: int
    item_lines: list[int]
    path: str = ""

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line

    def field_name(self, index: int) -> str:
        """The full name of item ``index`` (``kernel_args[1]``)."""
        return f"{self.path}[{index}]"


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader that builds YamlMap/YamlList carrying positions, and bounds
    nesting and alias expansion while it composes the document."""

    source_name = "<yaml>"

    def __init__(self, stream: str) -> None:
        self._fields: list[str] = []  # the dotted place being composed, one part a level
        self._expanded: dict[int, int] = {}  # id(node) -> nodes it stands for, expanded
        self._node_fields: dict[int, str] = {}  # id(node) -> its dotted place, for errors
        super().__init__(stream)

    def _node_error(self, node: yaml.Node, message: str) -> ConfigError:
        return ConfigError(message, file=self.source_name, line=node.start_mark.line + 1,
                           field=self._node_fields.get(id(node)) or None)

    def _limit_error(self, message: str, mark: Any) -> ConfigError:
        return ConfigError(message, file=self.source_name,
                           line=mark.line + 1 if mark is not None else None,
                           field="".join(self._fields).lstrip(".") or None)

    def compose_node(self, parent, index):  # type: ignore[override]
        # PyYAML passes the key node as ``index`` for a mapping's value, the
        # position for a sequence item, and None for a mapping's key.
        if isinstance(index, yaml.ScalarNode):
            part = f".{str(index.value)[:40]}"
        elif isinstance(index, int):
            part = f"[{index}]"
        else:
            part = ""
        self._fields.append(part)
        try:
            return self._compose_bounded(parent, index)
        finally:
            self._fields.pop()

    def _compose_bounded(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._expanded:
                raise self._limit_error(f"alias *{event.anchor} refers to a node that "
                                        f"contains it", event.start_mark)
            return super().compose_node(parent, index)
        if len(self._fields) > MAX_DEPTH:
            raise self._limit_error(f"nested more than {MAX_DEPTH} levels deep",
                                    event.start_mark)
        node = super().compose_node(parent, index)
        size = 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                size += self._expanded[id(key)] + self._expanded[id(value)]
        elif isinstance(node, yaml.SequenceNode):
            for child in node.value:
                size += self._expanded[id(child)]
        if size > MAX_NODES:
            raise self._limit_error(f"more than {MAX_NODES} values once its aliases are "
                                    f"expanded (an alias bomb?)", node.start_mark)
        self._expanded[id(node)] = size
        self._node_fields[id(node)] = "".join(self._fields).lstrip(".")
        return node

    def construct_object(self, node, deep=False):  # type: ignore[override]
        # PyYAML's constructors raise plain ValueError, TypeError, IndexError,
        # AttributeError... on values such as 2001-13-45, a 5000-digit int or
        # an empty !!int: name the value's place instead.
        try:
            return super().construct_object(node, deep)
        except (ConfigError, yaml.YAMLError):
            raise
        except Exception as exc:
            raise self._node_error(node, f"cannot read this value: {str(exc)[:120]}"
                                   ) from None

    def construct_yaml_int(self, node):  # type: ignore[override]
        self._check_number_length(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):  # type: ignore[override]
        self._check_number_length(node)
        return super().construct_yaml_float(node)

    def _check_number_length(self, node: yaml.ScalarNode) -> None:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise self._node_error(node, f"a number written with more than {MAX_NUMBER_CHARS} "
                                   f"characters")

    def construct_yaml_map(self, node: yaml.MappingNode):  # type: ignore[override]
        if not isinstance(node, yaml.MappingNode):  # e.g. a scalar tagged !!map
            raise self._node_error(node, f"expected a mapping, found a {node.id}")
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
                raise ConfigError(f"key {brief(key)} appears twice in one mapping",
                                  file=self.source_name, line=key_node.start_mark.line + 1,
                                  field=str(key)[:40])
            data[key] = self.construct_object(value_node, deep=True)
            data.key_lines[key] = key_node.start_mark.line + 1

    def construct_yaml_seq(self, node: yaml.SequenceNode):  # type: ignore[override]
        if not isinstance(node, yaml.SequenceNode):
            raise self._node_error(node, f"expected a sequence, found a {node.id}")
        data = YamlList()
        data.file = self.source_name
        data.line = node.start_mark.line + 1
        data.item_lines = [child.start_mark.line + 1 for child in node.value]
        yield data
        data.extend(self.construct_sequence(node, deep=True))


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _LocatingLoader.construct_yaml_map)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _LocatingLoader.construct_yaml_seq)
_LocatingLoader.add_constructor("tag:yaml.org,2002:int", _LocatingLoader.construct_yaml_int)
_LocatingLoader.add_constructor("tag:yaml.org,2002:float", _LocatingLoader.construct_yaml_float)


def _name_fields(root: Any) -> None:
    """Give every mapping and list its dotted place (first place wins for aliases)."""
    seen: set[int] = set()
    pending = [(root, "")]
    while pending:
        node, path = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, YamlMap):
            node.path = path
            pending.extend((value, f"{path}.{key}" if path else str(key))
                           for key, value in node.items()
                           if isinstance(value, (YamlMap, YamlList)))
        elif isinstance(node, YamlList):
            node.path = path
            pending.extend((value, f"{path}[{index}]") for index, value in enumerate(node)
                           if isinstance(value, (YamlMap, YamlList)))


def _line_at(text: str, position: int) -> int:
    return text.count("\n", 0, max(0, position)) + 1


_UNPRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD"
                          "\U00010000-\U0010FFFF]")


def _field_at_line(text: str, line: int) -> str | None:
    """The field a bad line belongs to, found by parsing the text with its bad
    characters replaced (best effort: None when even that does not parse)."""
    try:
        data = load_yaml_text(_UNPRINTABLE.sub("\uFFFD", text), "<field search>")
    except ConfigError:
        return None
    best: tuple[int, str] | None = None
    pending = [data]
    seen: set[int] = set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, YamlMap):
            places = [(node.line_of(key), node.field_name(key), value)
                      for key, value in node.items()]
        elif isinstance(node, YamlList):
            places = [(node.line_of(i), node.field_name(i), value) for i, value in enumerate(node)]
        else:
            continue
        for where, name, value in places:
            if where <= line and (best is None or where >= best[0]):
                best = (where, name)
            pending.append(value)
    return best[1] if best else None


def load_yaml_text(text: str, source_name: str) -> Any:
    """Parse YAML text; every failure becomes a ConfigError with file and line."""
    loader = None
    try:
        loader = _LocatingLoader(text)
        loader.source_name = source_name
        data = loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        line = _line_at(text, exc.position)
        raise ConfigError(f"the file holds a character YAML does not allow "
                          f"(U+{exc.character:04X}; a binary file?)", file=source_name,
                          line=line, field=_field_at_line(text, line)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"YAML syntax error: {exc.problem or exc}", file=source_name,
                          line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {brief(str(exc), 200)}", file=source_name) from None
    except ConfigError:
        raise
    except RecursionError:  # a bound above should always come first
        raise ConfigError("nested too deeply", file=source_name) from None
    except Exception as exc:  # PyYAML has more ways to fail on odd input than it documents
        raise ConfigError(f"cannot read the file as YAML ({type(exc).__name__}: "
                          f"{str(exc)[:120]})", file=source_name) from None
    finally:
        if loader is not None:
            loader.dispose()
    _name_fields(data)
    return data


def read_text_bounded(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 text file's content, refusing more than ``limit`` bytes (so
    ``/dev/zero`` or a 50 MB file fails at once) and bytes that are not UTF-8."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", file=str(path)) from None
    if len(data) > limit:
        raise ConfigError(f"the file is larger than {limit >> 10} KiB: not a config "
                          f"written by a person", file=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"the file is not UTF-8 text (byte {data[exc.start]:#04x} at "
                          f"offset {exc.start})", file=str(path), line=line,
                          field=_field_at_line(data.decode("utf-8-sig", "replace"), line)
                          ) from None


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing, huge or binary file is a ConfigError too."""
    return load_yaml_text(read_text_bounded(path), str(path))


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
        raise mapping.error(key, f"expected {names}, got {type(value).__name__} {brief(value)}",
                            value)
    if choices is not None:
        choices = list(choices)
        if value not in choices:
            raise mapping.error(key, f"{brief(value)} is not one of "
                                f"{', '.join(map(str, choices))}", value)
    if convert is not None:
        try:
            return convert(value)
        except ValueError as exc:
            raise mapping.error(key, str(exc), value) from None
    return value
