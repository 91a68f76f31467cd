"""Recipe loading: safe YAML, line numbers, structure errors, JSON Schema."""

from __future__ import annotations

import json

import pytest

from engine.errors import RecipeError
from engine.recipe import load_recipe, load_recipe_text, recipe_json_schema

GOOD = """\
version: 1
name: smoke
sources:
  data: {catalog: lake, entry: raw/ramp}
steps:
  - id: total
    op: core.sum
    inputs: {data: data}
    params: {dims: [x]}
outputs:
  total: {zone: derived}
"""


def test_good_recipe_loads_with_line_numbers():
    loaded = load_recipe_text(GOOD, "good.yaml")
    assert loaded.recipe.steps[0].op == "core.sum"
    assert loaded.lines.line_of("steps", 0, "params", "dims") == 9
    assert loaded.lines.line_of("outputs", "total", "zone", "deeper") == 11


def test_unknown_key_names_file_line_and_suggests():
    text = GOOD.replace("params: {dims: [x]}", "parmas: {dims: [x]}")
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, "typo.yaml")
    message = str(info.value)
    assert "typo.yaml:9: steps[0].parmas: unknown key" in message
    assert "did you mean 'params'" in message


def test_all_structure_errors_are_reported_together():
    text = GOOD.replace("zone: derived", "zone: derivd").replace("version: 1", "version: 7")
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, "two.yaml")
    assert len(info.value.problems) == 2
    message = str(info.value)
    assert "two.yaml:1: version" in message and "found 7" in message
    assert "two.yaml:11: outputs.total.zone" in message and "'derived' or 'models'" in message


def test_python_object_tag_is_refused_without_constructing_anything(tmp_path):
    marker = tmp_path / "pwned"
    text = GOOD + f"evil: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(RecipeError, match=r"bad.yaml:12: evil: YAML tag .*python/object.* not allowed"):
        load_recipe_text(text, "bad.yaml")
    assert not marker.exists()


def test_custom_tag_is_refused():
    with pytest.raises(RecipeError, match="tag '!include' is not allowed"):
        load_recipe_text("version: 1\nname: x\nsteps: !include other.yaml\n", "tag.yaml")


def test_non_yaml_file_reports_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nname: [unclosed\nsteps: {\n")
    with pytest.raises(RecipeError, match=r"broken.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_binary_and_missing_files(tmp_path):
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(RecipeError, match="cannot read as UTF-8"):
        load_recipe(binary)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.yaml")


def test_scalar_document_is_not_a_recipe():
    with pytest.raises(RecipeError, match="expected a mapping with sources/steps/outputs, found a str"):
        load_recipe_text("just a string\n", "s.yaml")


def test_alias_bomb_is_refused_quickly():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i-1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    with pytest.raises(RecipeError, match="expands to more than"):
        load_recipe_text("\n".join(lines) + "\n", "bomb.yaml")


def test_empty_file():
    with pytest.raises(RecipeError, match="the file is empty; expected a mapping"):
        load_recipe_text("", "empty.yaml")


def test_schedule_needs_exactly_one_of_cron_or_interval():
    with pytest.raises(RecipeError, match="exactly one of 'cron' or 'interval'"):
        load_recipe_text(GOOD + "schedule: {}\n", "s.yaml")


def test_output_name_cannot_escape_the_zone():
    text = GOOD.replace("{zone: derived}", "{zone: derived, name: ../../etc}")
    with pytest.raises(RecipeError, match="must be a relative name inside the zone"):
        load_recipe_text(text, "esc.yaml")


def test_json_schema_describes_recipes():
    schema = recipe_json_schema()
    json.dumps(schema)
    assert schema["title"] == "ReplicaLake recipe"
    assert {"sources", "steps", "outputs", "schedule"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
