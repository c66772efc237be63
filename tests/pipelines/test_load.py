"""Loading a pipeline file: every user mistake is one SpecError line naming the field and the fix."""

import textwrap

import pytest

from pipelines.errors import SpecError
from pipelines.load import apply_overrides, json_schema, load
from pipelines.spec import STAGE_KINDS


def write(tmp_path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


GOOD = """
name: tiny
stages:
  curate: {kind: data, inputs: [./corpus.jsonl]}
  tok: {kind: tokenizer, data: curate}
  pretrain: {kind: pretrain, data: curate, tokenizer: tok}
"""


def error_of(path: str, overrides=()) -> str:
    with pytest.raises(SpecError) as exc:
        load(path, overrides)
    return str(exc.value)


def test_valid_file_loads(tmp_path):
    p = load(write(tmp_path, GOOD))
    assert list(p.stages) == ["curate", "tok", "pretrain"]
    assert p.stages["curate"].kind == "data"


def test_missing_file(tmp_path):
    assert "no such file" in error_of(str(tmp_path / "nope.yaml"))


def test_yaml_syntax_error_names_the_line(tmp_path):
    msg = error_of(write(tmp_path, "name: tiny\nstages:\n  curate: {kind: data, inputs: [a\n"))
    assert "YAML syntax error at line" in msg


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, """
        name: tiny
        stages:
          curate:
            kind: data
            inputs: [./corpus.jsonl]
            text_feild: body
        """)
    assert "stages.curate.text_feild: unknown field — did you mean 'text_field'? (line 7)" in error_of(path)


def test_nested_unknown_key_suggests(tmp_path):
    path = write(tmp_path, GOOD)
    msg = error_of(path, ["curate.minhash.threshhold=0.5"])
    assert "stages.curate.minhash.threshhold: unknown field — did you mean 'threshold'?" in msg


def test_wrong_type_names_field_and_value(tmp_path):
    msg = error_of(write(tmp_path, GOOD), ["curate.max_doc_bytes=lots"])
    assert "stages.curate.max_doc_bytes:" in msg and "valid integer" in msg and "'lots'" in msg


def test_unknown_kind_lists_valid_kinds(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("kind: tokenizer", "kind: tokeniser")))
    assert "stages.tok.kind: unknown stage kind 'tokeniser' — did you mean 'tokenizer'?" in msg
    assert f"valid: {', '.join(sorted(STAGE_KINDS))})" in msg and "eval, grpo" in msg


def test_missing_kind(tmp_path):
    msg = error_of(write(tmp_path, "name: t\nstages:\n  a: {inputs: [x.jsonl]}\n"))
    assert "stages.a: missing 'kind'; set one of:" in msg


def test_top_level_not_a_mapping(tmp_path):
    assert "expected a mapping" in error_of(write(tmp_path, "- a\n- b\n"))


def test_bad_stage_name(tmp_path):
    msg = error_of(write(tmp_path, "name: t\nstages:\n  Bad Name: {kind: data, inputs: [x.jsonl]}\n"))
    assert "stage name 'Bad Name' is not allowed" in msg


def test_override_parses_yaml_values_and_stage_shorthand():
    raw = {"name": "t", "stages": {"a": {"kind": "data", "inputs": ["x"]}}}
    out = apply_overrides(raw, ["a.exact_dedup=false", "stages.a.inputs=[y, z]", "storage=s3://b/p"])
    assert out["stages"]["a"]["exact_dedup"] is False
    assert out["stages"]["a"]["inputs"] == ["y", "z"]
    assert out["storage"] == "s3://b/p"
    assert raw["stages"]["a"]["inputs"] == ["x"], "the user's dict is not mutated"


def test_override_without_equals_is_an_error():
    with pytest.raises(SpecError, match="expected KEY=VALUE, e.g. --set pretrain.schedule.steps=200"):
        apply_overrides({"name": "t", "stages": {}}, ["stages.a.steps"])


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(SpecError, match="'name' is a value, not a mapping"):
        apply_overrides({"name": "t", "stages": {}}, ["name.x=1"])


def test_json_schema_has_descriptions_for_every_field():
    schema = json_schema()
    assert schema["title"] == "llmctl pipeline"
    missing = []
    for def_name, definition in schema.get("$defs", {}).items():
        for field, prop in definition.get("properties", {}).items():
            if field != "kind" and "description" not in prop:
                missing.append(f"{def_name}.{field}")
    assert not missing, f"fields without a description: {missing}"
