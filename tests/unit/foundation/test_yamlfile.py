"""The YAML loader must point every error at file, line and field."""

from __future__ import annotations

import pytest

from wdfhil.errors import ConfigError
from wdfhil.units import parse_size
from wdfhil.yamlfile import (YamlList, YamlMap, load_yaml_file, load_yaml_mapping,
                             load_yaml_text, reject_unknown_keys, take)


def write(tmp_path, text: str):
    path = tmp_path / "thing.yaml"
    path.write_text(text)
    return path


def test_mapping_knows_key_lines(tmp_path):
    doc = load_yaml_mapping(write(tmp_path, "a: 1\n\nb:\n  c: [1, 2]\n  d:\n    - x\n    - y\n"))
    assert isinstance(doc, YamlMap) and doc.file.endswith("thing.yaml")
    assert doc.line_of("a") == 1 and doc.line_of("b") == 3
    assert doc["b"].line_of("d") == 5
    assert isinstance(doc["b"]["d"], YamlList) and doc["b"]["d"].line_of(1) == 7


def test_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_yaml_file(write(tmp_path, "a: 1\nb: [unclosed\nc: 3\n"))
    assert info.value.file.endswith("thing.yaml") and info.value.line in (2, 3, 4)
    assert "thing.yaml:" in str(info.value)


def test_duplicate_key_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(write(tmp_path, "a: 1\nb: 2\na: 3\n"))
    assert info.value.line == 3 and info.value.field == "a"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError):
        load_yaml_mapping(write(tmp_path, "- 1\n- 2\n"))


def test_take_checks_type_choices_and_conversion(tmp_path):
    doc = load_yaml_mapping(write(tmp_path, "machine: pc\ncpus: yes\nmemory: 12Q\nname: n\n"))
    assert take(doc, "machine", str, choices=["pc", "q35"]) == "pc"
    with pytest.raises(ConfigError) as info:
        take(doc, "cpus", int)
    assert (info.value.line, info.value.field) == (2, "cpus")
    with pytest.raises(ConfigError) as info:
        take(doc, "memory", (str, int), convert=parse_size)
    assert (info.value.line, info.value.field) == (3, "memory") and "12Q" in str(info.value)
    with pytest.raises(ConfigError) as info:
        take(doc, "machine", str, choices=["q35"])
    assert info.value.line == 1
    with pytest.raises(ConfigError) as info:
        take(doc, "absent", str)
    assert "required" in str(info.value)
    assert take(doc, "absent", str, default="d") == "d"


def test_unknown_keys_are_refused_with_their_line(tmp_path):
    doc = load_yaml_mapping(write(tmp_path, "machine: pc\nmemroy: 1G\n"))
    with pytest.raises(ConfigError) as info:
        reject_unknown_keys(doc, {"machine", "memory"})
    assert (info.value.line, info.value.field) == (2, "memroy")


def test_text_source_name_is_used():
    with pytest.raises(ConfigError) as info:
        load_yaml_text("a: [", "inline.yaml")
    assert str(info.value).startswith("inline.yaml:")
