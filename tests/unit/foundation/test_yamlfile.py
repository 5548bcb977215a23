"""The YAML loader must point every error at file, line and field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdfhil.errors import ConfigError
from wdfhil.units import parse_size
from wdfhil.yamlfile import (YamlList, YamlMap, brief, load_yaml_file, load_yaml_mapping,
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


# -- hostile files: a clear ConfigError, never a crash, a recursion or a memory blow-up ----
def alias_bomb(levels: int = 9) -> str:
    """The classic "billion laughs": a few hundred bytes, 9**levels strings expanded."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = [f"{letters[0]}: &{letters[0]} [" + ", ".join(['"lol"'] * 9) + "]"]
    for prev, name in zip(letters, letters[1:levels]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_nul_byte_is_a_config_error_with_line_and_field(tmp_path):
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"machine: pc\nmemory: 256M\x00\npool: {}\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(path)
    assert (info.value.line, info.value.field) == (2, "memory")
    assert "U+0000" in str(info.value) and f"{path}:2:" in str(info.value)


def test_bytes_that_are_not_utf8_are_a_config_error_with_line_and_field(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"machine: pc\npool:\n  base: 64M\n  note: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(path)
    assert (info.value.line, info.value.field) == (4, "pool.note")
    assert "not UTF-8" in str(info.value) and "0xe9" in str(info.value)


@pytest.mark.parametrize("text", [
    "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "a: " + "{x: " * 50_000 + "1" + "}" * 50_000 + "\n",
    "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n",
], ids=["flow-lists", "flow-maps", "block-maps"])
def test_deep_nesting_is_refused_before_python_recurses(text):
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "deep.yaml")
    assert "nested more than" in str(info.value) and info.value.line is not None
    assert info.value.field.startswith(("a", "k0"))


def test_an_alias_bomb_is_refused_while_it_is_read(tmp_path):
    text = alias_bomb() + "machine: *i\n"
    assert len(text) < 600
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(write(tmp_path, text))
    assert "alias" in str(info.value) and info.value.line is not None and info.value.field
    assert len(str(info.value)) < 300


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError) as info:
        load_yaml_text("a: &x [1, *x]\n", "rec.yaml")
    assert (info.value.line, info.value.field) == (1, "a[1]")


def test_a_moderate_alias_in_a_wrongly_typed_field_gives_a_short_message(tmp_path):
    """Below the expansion bound (9**4 strings), yet no message needs all of it."""
    doc = load_yaml_mapping(write(tmp_path, alias_bomb(4) + "machine: *d\n"))
    with pytest.raises(ConfigError) as info:
        take(doc, "machine", str)
    assert (info.value.line, info.value.field) == (5, "machine")
    assert "expected str, got YamlList [[[[" in str(info.value) and len(str(info.value)) < 300


def test_ordinary_aliases_still_work():
    doc = load_yaml_text("base: &b {size: 64M}\npool: *b\nother: {<<: *b, base: 1}\n", "ok.yaml")
    assert doc["pool"] is doc["base"] and doc["other"] == {"size": "64M", "base": 1}


def test_a_file_too_large_for_a_config_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n" + "# padding\n" * 120_000)
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping(path)
    assert "larger than" in str(info.value) and info.value.file == str(path)


def test_dev_zero_is_refused():
    with pytest.raises(ConfigError) as info:
        load_yaml_mapping("/dev/zero")
    assert "larger than" in str(info.value) and info.value.file == "/dev/zero"


def test_nested_fields_name_their_parents(tmp_path):
    doc = load_yaml_mapping(write(tmp_path, "pool:\n  base: 16Q\n  bass: 1\n"
                                            "items:\n  - name: x\n  - name: [1]\n"))
    with pytest.raises(ConfigError) as info:
        take(doc["pool"], "base", (str, int), convert=parse_size)
    assert (info.value.line, info.value.field) == (2, "pool.base")
    assert f"{doc.file}:2: field 'pool.base'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        reject_unknown_keys(doc["pool"], {"base", "size"})
    assert (info.value.line, info.value.field) == (3, "pool.bass")
    with pytest.raises(ConfigError) as info:
        take(doc["items"][1], "name", str)
    assert (info.value.line, info.value.field) == (6, "items[1].name")
    assert doc["items"].field_name(0) == "items[0]"


def test_brief_is_bounded_whatever_the_value():
    shared: list = ["lol"] * 9
    for _ in range(30):  # 9**30 strings if printed in full
        shared = [shared] * 9
    text = brief(shared)
    assert text.startswith("[[[[") and text.endswith("...") and len(text) <= 63
    assert brief("x" * 10_000_000).endswith("...") and brief({"a": 1}) == "{'a': 1}"


@pytest.mark.parametrize("text,field,words", [
    ("memory: " + "1" * 5000 + "\n", "memory", "more than 100 characters"),
    ("a: " + ":".join(["59"] * 100_000) + "\n", "a", "more than 100 characters"),  # base 60
    ("pool:\n  when: 2001-13-45\n", "pool.when", "month must be in 1..12"),
    ("a: [1, {b: !!int zz}]\n", "a[1].b", "invalid literal"),
    ("a: !<tag:yaml.org,2002:int> ''\n", "a", "cannot read this value"),  # IndexError
    ("a:\n  b: !!timestamp x\n", "a.b", "cannot read this value"),         # AttributeError
    ("a: !!map x\n", "a", "expected a mapping, found a scalar"),          # ValueError
    ("a: !!seq x\n", "a", "expected a sequence, found a scalar"),
], ids=["5000-digits", "sexagesimal", "bad-date", "bad-int-tag", "empty-int", "bad-timestamp",
        "scalar-map", "scalar-seq"])
def test_values_pyyaml_cannot_build_are_config_errors(text, field, words):
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "v.yaml")
    assert info.value.field == field and words in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#?,. \n\t0123456789\x00\x85")),
            max_size=200),
))
def test_any_input_is_data_or_a_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "any.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    try:
        load_yaml_file(path)
    except ConfigError as error:
        assert error.file == str(path)
