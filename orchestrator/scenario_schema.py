"""A small schema language whose one definition both validates a scenario read
with :mod:`wdfhil.yamlfile` (errors name file, line and field) and becomes
the published JSON Schema (editors with a YAML language server complete and
check scenario files from it).

Why not a JSON Schema library for validation: its errors know JSON pointers,
not lines; walking our own nodes over :class:`~wdfhil.yamlfile.YamlMap`
keeps every message at ``file:line: field 'steps[3].write.buffer': ...``.
``tests/unit/scenarios/test_schema_agreement.py`` holds the two views to the
same answers on good and bad files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from wdfhil.errors import ConfigError
from wdfhil.units import parse_size
from wdfhil.yamlfile import YamlList, YamlMap, brief

_NO_DEFAULT: Any = object()


@dataclass(frozen=True)
class Place:
    """Where a value stands: its container and key (or index), for errors."""

    container: Any
    key: Any

    @property
    def field(self) -> str:
        if isinstance(self.container, (YamlMap, YamlList)):
            return self.container.field_name(self.key)
        return str(self.key)

    @property
    def line(self) -> int | None:
        if isinstance(self.container, (YamlMap, YamlList)):
            return self.container.line_of(self.key)
        return None

    @property
    def file(self) -> str | None:
        return getattr(self.container, "file", None)

    def error(self, message: str, value: Any = None) -> ConfigError:
        return ConfigError(message, file=self.file, line=self.line, field=self.field, value=value)


class Checked(dict):
    """A checked mapping; ``source`` is the YamlMap it came from (for later errors)."""

    source: YamlMap

    def error(self, key: str | None, message: str, value: Any = None) -> ConfigError:
        return self.source.error(key, message, value)


class Node:
    """One kind of value. ``check`` returns the Python value or raises ConfigError."""

    description: str = ""

    def check(self, value: Any, place: Place) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _doc(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            schema["description"] = self.description
        return schema


def _type_name(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, (YamlMap, YamlList)) else (
        "mapping" if isinstance(value, YamlMap) else "list")


@dataclass
class Int(Node):
    minimum: int | None = None
    maximum: int | None = None
    description: str = ""
    choices: tuple[int, ...] | None = None

    def check(self, value: Any, place: Place) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise place.error(f"expected an integer, got {_type_name(value)} {brief(value)}", value)
        if self.choices is not None and value not in self.choices:
            raise place.error(f"{value} is not one of {', '.join(map(str, self.choices))}", value)
        if self.minimum is not None and value < self.minimum:
            raise place.error(f"must be at least {self.minimum} (got {value})", value)
        if self.maximum is not None and value > self.maximum:
            raise place.error(f"must be at most {self.maximum} (got {value})", value)
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return self._doc(schema)


SIZE_PATTERN = r"^\s*(0[xX][0-9a-fA-F]+|[0-9]+\s*([KMGTkmgt]([iI]?[bB])?|[bB])?)\s*$"


@dataclass
class Size(Node):
    """A byte count: an integer, or a string like ``4K``, ``1M``, ``0x1000``."""

    minimum: int = 0
    maximum: int | None = None
    description: str = ""

    def check(self, value: Any, place: Place) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise place.error(f"expected a size (4096, 4K, 1M, 0x1000), got "
                              f"{_type_name(value)} {brief(value)}", value)
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise place.error(str(exc), value) from None
        if size < self.minimum:
            raise place.error(f"must be at least {self.minimum} (got {size})", value)
        if self.maximum is not None and size > self.maximum:
            raise place.error(f"must be at most {self.maximum} (got {size})", value)
        return size

    def json_schema(self) -> dict[str, Any]:
        number: dict[str, Any] = {"type": "integer", "minimum": self.minimum}
        if self.maximum is not None:
            number["maximum"] = self.maximum
        return self._doc({"anyOf": [number, {"type": "string", "pattern": SIZE_PATTERN}]})


@dataclass
class Number(Node):
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""

    def check(self, value: Any, place: Place) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise place.error(f"expected a number, got {_type_name(value)} {brief(value)}", value)
        if self.minimum is not None and value < self.minimum:
            raise place.error(f"must be at least {self.minimum} (got {value})", value)
        if self.maximum is not None and value > self.maximum:
            raise place.error(f"must be at most {self.maximum} (got {value})", value)
        return float(value)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return self._doc(schema)


@dataclass
class Bool(Node):
    description: str = ""

    def check(self, value: Any, place: Place) -> bool:
        if not isinstance(value, bool):
            raise place.error(f"expected true or false, got {_type_name(value)} {brief(value)}",
                              value)
        return value

    def json_schema(self) -> dict[str, Any]:
        return self._doc({"type": "boolean"})


@dataclass
class Str(Node):
    choices: tuple[str, ...] | None = None
    pattern: str | None = None           # a regular expression (search), same in both views
    pattern_hint: str = ""
    description: str = ""

    def check(self, value: Any, place: Place) -> str:
        import re

        if not isinstance(value, str):
            raise place.error(f"expected a string, got {_type_name(value)} {brief(value)}", value)
        if self.choices is not None and value not in self.choices:
            raise place.error(f"{brief(value)} is not one of {', '.join(self.choices)}", value)
        if self.pattern is not None and not re.search(self.pattern, value):
            raise place.error(f"{brief(value)} is not {self.pattern_hint or self.pattern}", value)
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        return self._doc(schema)


@dataclass
class List(Node):
    item: Node
    min_items: int = 0
    description: str = ""

    def check(self, value: Any, place: Place) -> list[Any]:
        if not isinstance(value, list):
            raise place.error(f"expected a list, got {_type_name(value)} {brief(value)}", value)
        if len(value) < self.min_items:
            raise place.error(f"needs at least {self.min_items} item(s)", value)
        return [self.item.check(child, Place(value, index)) for index, child in enumerate(value)]

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item.json_schema()}
        if self.min_items:
            schema["minItems"] = self.min_items
        return self._doc(schema)


@dataclass
class Map(Node):
    """A mapping from free keys (matching ``key``) to values of one kind."""

    key: Str
    value: Node
    description: str = ""

    def check(self, value: Any, place: Place) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise place.error(f"expected a mapping, got {_type_name(value)} {brief(value)}", value)
        out = {}
        for key, child in value.items():
            key_place = Place(value, key)
            self.key.check(key, key_place)
            out[key] = self.value.check(child, key_place)
        return out

    def json_schema(self) -> dict[str, Any]:
        return self._doc({"type": "object", "propertyNames": self.key.json_schema(),
                          "additionalProperties": self.value.json_schema()})


@dataclass
class Field:
    node: Node
    required: bool = False
    default: Any = _NO_DEFAULT


@dataclass
class Obj(Node):
    """A mapping with known fields; unknown keys are errors."""

    fields: Mapping[str, Field]
    description: str = ""
    # A check across fields (e.g. "one of these two"): a predicate over the checked
    # dict, the message, and the field to blame. Both views enforce it: the JSON
    # Schema through ``schema_extra``.
    rules: tuple[tuple[Callable[[dict[str, Any]], bool], str, str], ...] = ()
    schema_extra: Mapping[str, Any] = field(default_factory=dict)

    def check(self, value: Any, place: Place) -> Checked:
        if not isinstance(value, YamlMap):
            if isinstance(value, dict):     # built in Python, not read from a file
                value = _as_yaml_map(value, place)
            else:
                raise place.error(f"expected a mapping, got {_type_name(value)} {brief(value)}",
                                  value)
        for key in value:
            if key not in self.fields:
                raise value.error(str(key), f"unknown field (known: "
                                  f"{', '.join(self.fields) or 'none'})", key)
        out = Checked()
        out.source = value
        for name, spec in self.fields.items():
            if name in value:
                out[name] = spec.node.check(value[name], Place(value, name))
            elif spec.required:
                raise value.error(name, "required field is missing")
            elif spec.default is not _NO_DEFAULT:
                out[name] = spec.default
        for predicate, message, blame in self.rules:
            if not predicate(out):
                raise value.error(blame if blame in value else None, message)
        return out

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: _with_default(spec) for name, spec in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, spec in self.fields.items() if spec.required]
        if required:
            schema["required"] = required
        schema.update(self.schema_extra)
        return self._doc(schema)


@dataclass
class OneKey(Node):
    """A mapping with exactly one key that says what it is (a step:
    ``- write: {buffer: src, device_offset: 0}``)."""

    kinds: Mapping[str, Obj]
    what: str = "step"
    description: str = ""

    def check(self, value: Any, place: Place) -> tuple[str, dict[str, Any]]:
        if not isinstance(value, dict) or len(value) != 1:
            raise place.error(f"each {self.what} is a mapping with exactly one key, the "
                              f"{self.what}'s kind (one of {', '.join(self.kinds)})", value)
        (kind, body), = value.items()
        if kind not in self.kinds:
            target = value if isinstance(value, YamlMap) else None
            if target is not None:
                raise target.error(str(kind), f"unknown {self.what} (known: "
                                   f"{', '.join(self.kinds)})", kind)
            raise place.error(f"unknown {self.what} {brief(kind)}", kind)
        return kind, self.kinds[kind].check(body, Place(value, kind))

    def json_schema(self) -> dict[str, Any]:
        return self._doc({"oneOf": [
            {"type": "object", "properties": {kind: node.json_schema()}, "required": [kind],
             "additionalProperties": False, "title": kind}
            for kind, node in self.kinds.items()]})


def _with_default(spec: Field) -> dict[str, Any]:
    schema = spec.node.json_schema()
    if spec.default is not _NO_DEFAULT and isinstance(spec.default, (int, float, str, bool)):
        schema["default"] = spec.default
    return schema


def _as_yaml_map(value: Mapping[str, Any], place: Place) -> YamlMap:
    data = YamlMap(value)
    data.file = place.file or "<python>"
    data.line = place.line or 0
    data.key_lines = {}
    data.path = place.field if place.container is not None else ""
    return data


@dataclass
class Value(Node):
    """Any YAML value (a driver's keyword arguments: numbers, strings, lists, mappings),
    handed on as plain Python values; the receiver checks it."""

    description: str = ""

    def check(self, value: Any, place: Place) -> Any:
        return plain(value)

    def json_schema(self) -> dict[str, Any]:
        return self._doc({})


@dataclass
class Either(Node):
    """An integer or a string (an IOCTL code given as a number or by its name): the
    value's type picks the node, so each error is that node's own."""

    number: Int
    name: Str
    description: str = ""

    def check(self, value: Any, place: Place) -> Any:
        if isinstance(value, str):
            return self.name.check(value, place)
        if isinstance(value, int) and not isinstance(value, bool):
            return self.number.check(value, place)
        raise place.error(f"expected an integer or a name, got {_type_name(value)} "
                          f"{brief(value)}", value)

    def json_schema(self) -> dict[str, Any]:
        return self._doc({"anyOf": [self.number.json_schema(), self.name.json_schema()]})


def plain(value: Any) -> Any:
    """A checked value as plain dicts and lists (for FaultPlan.from_config, JSON, a
    driver's options)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
