"""The published JSON Schema and the validator come from one definition; this
holds them to the same answers on good and bad files (jsonschema validates the
data PyYAML reads; the loader validates the same file)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from orchestrator.scenario import SCHEMA_FILE, builtin_scenarios, json_schema, load_scenario
from wdfhil.errors import ConfigError

from bad_scenarios import BAD, GOOD

VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def test_the_published_file_is_the_generated_schema():
    """Regenerate with: wdfhil scenarios --schema > orchestrator/scenarios/scenario.schema.json"""
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()
    jsonschema.Draft202012Validator.check_schema(json_schema())


def _schema_errors(text: str) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))]


@pytest.mark.parametrize("path", builtin_scenarios(), ids=lambda p: p.name)
def test_both_accept_every_builtin_scenario(path):
    load_scenario(path)
    assert _schema_errors(path.read_text()) == []


def test_both_accept_the_good_example(tmp_path):
    path = tmp_path / "good.scenario.yaml"
    path.write_text(GOOD)
    load_scenario(path)
    assert _schema_errors(GOOD) == []


@pytest.mark.parametrize("case_id,text,line,field,words,schema", BAD, ids=[b[0] for b in BAD])
def test_both_refuse_each_bad_file(tmp_path, case_id, text, line, field, words, schema):
    path = tmp_path / "bad.scenario.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_scenario(path)
    if schema:
        assert _schema_errors(text), f"the JSON Schema accepts {case_id}"
    else:   # names and files: only the loader can check them; the schema accepts the shape
        assert _schema_errors(text) == [], f"{case_id} should be a shape the schema accepts"


def test_every_step_kind_and_top_level_key_is_in_the_schema():
    schema = json_schema()
    assert set(schema["properties"]) == {"description", "guests", "tags", "device", "driver", "steps",
                                         "expect"}
    assert schema["additionalProperties"] is False
    kinds = {option["title"] for option in schema["properties"]["steps"]["items"]["oneOf"]}
    assert {"alloc", "write", "read", "verify", "watch", "submit", "guest_program", "io_read",
            "io_write", "io_ioctl", "io_stress", "WdfMemoryCreate", "mdl_dma",
            "WdfRequestComplete"} <= kinds
