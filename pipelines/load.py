"""Load a pipeline file: safe YAML, `--set` overrides, validation errors a person can act on."""

from __future__ import annotations

import copy
import os
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.errors import SpecError, did_you_mean
from pipelines.spec import Pipeline


def load(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Pipeline:
    """Read, override and validate a pipeline file; every failure is a SpecError naming the field and the fix."""
    raw, lines = read_yaml(path)
    raw = apply_overrides(raw, overrides)
    return validate(raw, source=path, lines=lines)


def read_yaml(path: str) -> tuple[dict, dict[tuple, int]]:
    """The YAML mapping in `path` and the line number of every key path in it."""
    if not os.path.exists(path):
        raise SpecError(f"{path}: no such file. Give the path of a pipeline YAML, e.g. pipelines/examples/tiny.yaml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(f"{path}: YAML syntax error at {where}: {exc.problem}. Fix the YAML there.") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with 'name' and 'stages' at the top, got {type(raw).__name__}")
    return raw, _key_lines(node)


def _key_lines(node: Any, path: tuple = ()) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            lines[sub] = key.start_mark.line + 1
            lines.update(_key_lines(value, sub))
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines[(*path, i)] = value.start_mark.line + 1
            lines.update(_key_lines(value, (*path, i)))
    return lines


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b=c` overrides to a copy of the raw spec. Values are parsed as YAML (`3`, `true`, `[a, b]`).

    A path that starts with a stage name is taken under `stages` (`--set pretrain.schedule.steps=5`).
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value_text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set '{item}': expected KEY=VALUE, e.g. --set pretrain.schedule.steps=200")
        parts: list[Any] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        if parts[0] not in Pipeline.model_fields and parts[0] in (raw.get("stages") or {}):
            parts.insert(0, "stages")
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError:
            value = value_text
        _set_path(raw, parts, value, item)
    return raw


def _set_path(raw: Any, parts: list[Any], value: Any, item: str) -> None:
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node[part] if _has(node, part) else None
        if nxt is None:
            if not isinstance(node, dict):
                raise SpecError(f"--set '{item}': '{'.'.join(map(str, parts[: i + 1]))}' is not a mapping or list")
            node[part] = nxt = {}
        node = nxt
    last = parts[-1]
    if isinstance(node, list) and not (isinstance(last, int) and last < len(node)):
        raise SpecError(f"--set '{item}': index {last} is out of range for a list of {len(node)}")
    if not isinstance(node, (dict, list)):
        raise SpecError(f"--set '{item}': '{'.'.join(map(str, parts[:-1]))}' is a value, not a mapping")
    node[last] = value


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and part < len(node)


def validate(raw: dict, source: str = "<spec>", lines: dict[tuple, int] | None = None) -> Pipeline:
    try:
        return Pipeline.model_validate(raw)
    except ValidationError as exc:
        messages = [_explain(err, raw, lines or {}) for err in exc.errors()]
        unique = list(dict.fromkeys(messages))
        raise SpecError(f"{source}: {len(unique)} error(s)\n  " + "\n  ".join(unique)) from None


def _explain(err: dict, raw: dict, lines: dict[tuple, int]) -> str:
    path = _raw_path(err["loc"], raw)
    where = ".".join(str(p) for p in path) or "(top level)"
    line = lines.get(tuple(path))
    suffix = f" (line {line})" if line else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        fields = _fields_at(path[:-1], raw)
        return f"{where}: unknown field{did_you_mean(str(path[-1]), fields)}{suffix}"
    if kind == "union_tag_invalid":
        tag, expected = err["ctx"]["tag"], _kinds()
        return f"{where}.kind: unknown stage kind '{tag}'{did_you_mean(tag, expected)} (valid: {', '.join(expected)})"
    if kind == "union_tag_not_found":
        return f"{where}: missing 'kind'; set one of: {', '.join(_kinds())}{suffix}"
    if kind == "missing":
        return f"{where}: required field is missing{suffix}"
    message = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{where}: {message}{shown}{suffix}"


def _raw_path(loc: tuple, raw: Any) -> list[Any]:
    """The location in the user's YAML: pydantic adds the union tag ('pretrain') after a stage's name; drop it."""
    path, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and node.get("kind") == part:
            continue  # discriminator tag inserted by pydantic
        else:
            path.append(part)
            node = None
    return path


def _fields_at(path: list[Any], raw: Any) -> list[str]:
    """Field names of the model at `path` in the spec, for did-you-mean suggestions."""
    model: Any = Pipeline
    node = raw
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        model = _step(model, part, node)
        if model is None:
            return []
    return list(model.model_fields) if _is_model(model) else []


def _step(annotation: Any, part: Any, node: Any) -> Any:
    annotation = _unwrap(annotation, node)
    if _is_model(annotation):
        field = annotation.model_fields.get(part)
        return _unwrap(field.annotation, node) if field else None
    origin = typing.get_origin(annotation)
    if origin in (dict, list, tuple):
        return _unwrap(typing.get_args(annotation)[-1], node)
    return None


def _unwrap(annotation: Any, node: Any) -> Any:
    """Strip Optional/Annotated; for a union of models pick the one whose `kind` matches the YAML."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if _is_model(a)]
        kind = node.get("kind") if isinstance(node, dict) else None
        for m in models:
            field = m.model_fields.get("kind")
            if field is not None and kind in typing.get_args(field.annotation):
                return m
        others = [a for a in typing.get_args(annotation) if a is not type(None)]
        return models[0] if len(models) == 1 else (others[0] if len(others) == 1 else annotation)
    return annotation


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _kinds() -> list[str]:
    from pipelines.spec import STAGE_KINDS

    return sorted(STAGE_KINDS)


def json_schema() -> dict:
    """JSON Schema of the pipeline file, for editors (`llmctl schema`)."""
    schema = Pipeline.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llmctl pipeline"
    return schema
