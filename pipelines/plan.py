"""The plan: stages in order with their references checked, each with a cache key and output location.

A cache key hashes the stage's resolved config, the keys of the stages it reads, fingerprints of the files it
reads and the code its runner imports (pipelines.code), so changing any of them re-runs that stage and everything
downstream of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines import storage
from pipelines.artifacts import MARKER
from pipelines.code import PROJECT
from pipelines.errors import SpecError, did_you_mean
from pipelines.spec import Pipeline, StageBase
from pipelines.spec.tracking import is_registered


@dataclass(frozen=True)
class PlannedStage:
    name: str
    kind: str
    uri: str
    cache_key: str
    inputs: dict[str, str]  # referenced stage name -> its output uri
    config: dict[str, Any]
    runner: str = ""  # "module:function", from the stage kind's spec class
    always_run: bool = False

    @property
    def marker_uri(self) -> str:
        return storage.join(self.uri, MARKER)


@dataclass(frozen=True)
class Plan:
    pipeline: str
    run_id: str
    storage: str
    code_version: str
    spec: dict[str, Any]
    stages: list[PlannedStage] = field(default_factory=list)

    @property
    def run_uri(self) -> str:
        return storage.join(self.storage, self.pipeline, "runs", self.run_id)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        stages = [PlannedStage(**s) for s in data["stages"]]
        return cls(**{**data, "stages": stages})


def resolve(pipeline: Pipeline, base_dir: str | None = None) -> Pipeline:
    """A new Pipeline whose local paths are absolute, so the job reads the same files wherever it runs."""
    names = set(pipeline.stages)
    stages = {name: _resolve_stage(stage, names, base_dir) for name, stage in pipeline.stages.items()}
    return pipeline.model_copy(update={"storage": storage.absolute(pipeline.storage, base_dir), "stages": stages})


def _resolve_stage(stage: StageBase, names: set[str], base_dir: str | None) -> StageBase:
    update: dict[str, Any] = {}
    for field_name in type(stage).reference_fields:
        value = getattr(stage, field_name)
        if isinstance(value, str):
            update[field_name] = value if value in names or is_registered(value) else storage.absolute(value, base_dir)
        elif isinstance(value, (list, tuple)):
            update[field_name] = [v if v in names else storage.absolute(v, base_dir) for v in value]
    return stage.model_copy(update=update)


def check_references(pipeline: Pipeline) -> None:
    """Every reference names an earlier stage (or is a path); no cycles."""
    names = list(pipeline.stages)
    _check_cycles(pipeline)
    for position, (name, stage) in enumerate(pipeline.stages.items()):
        for path, value in stage.reference_values():
            where = f"stages.{name}.{path}"
            if value == name:
                raise SpecError(f"{where}: stage '{name}' refers to itself; name an earlier stage")
            if value in pipeline.stages:
                if names.index(value) > position:
                    raise SpecError(
                        f"{where}: refers to '{value}', which comes later in the file; stages run in file order — "
                        f"move '{value}' above '{name}'"
                    )
            elif not _looks_like_path(value):
                raise SpecError(f"{where}: no stage named '{value}'{did_you_mean(value, names)}")


def _check_cycles(pipeline: Pipeline) -> None:
    names = set(pipeline.stages)
    # self-references get their own message in check_references
    edges = {n: [r for r in s.references(names).values() if r != n] for n, s in pipeline.stages.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in edges[node]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [node, dep]
                raise SpecError(f"stages form a cycle: {' -> '.join(cycle)}; remove one of these references")
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in pipeline.stages:
        if name not in state:
            visit(name, [name])


def _looks_like_path(value: str) -> bool:
    return any(c in value for c in "/\\*?") or "://" in value or value.startswith((".", "~")) or "." in value


def build(pipeline: Pipeline, base_dir: str | None = None, check_inputs: bool = True) -> Plan:
    """Check references, resolve paths, and key every stage. Raises SpecError on a bad reference or input."""
    check_references(pipeline)
    resolved = resolve(pipeline, base_dir)
    version = PROJECT.version()
    names = set(resolved.stages)
    keys: dict[str, str] = {}
    uris: dict[str, str] = {}
    planned = []
    for name, stage in resolved.stages.items():
        refs = stage.references(names)
        files = _input_fingerprints(name, stage, names) if check_inputs else {}
        payload = {
            "kind": stage.kind,
            "config": stage.model_dump(mode="json", exclude={"tracking"}),  # where it is logged changes no output
            "inputs": {path: keys[ref] for path, ref in refs.items()},
            "files": files,
            "code": PROJECT.version(type(stage).runner),
        }
        keys[name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        uris[name] = storage.join(resolved.storage, resolved.name, name, keys[name])
        planned.append(
            PlannedStage(
                name=name,
                kind=stage.kind,
                uri=uris[name],
                cache_key=keys[name],
                inputs={ref: uris[ref] for ref in refs.values()},
                config=stage.model_dump(mode="json"),
                runner=type(stage).runner,
                always_run=type(stage).always_run,
            )
        )
    spec = resolved.model_dump(mode="json")
    run_hash = hashlib.sha256(json.dumps({"spec": spec, "code": version}, sort_keys=True).encode()).hexdigest()
    return Plan(resolved.name, f"{resolved.name}-{run_hash[:8]}", resolved.storage, version, spec, planned)


def _input_fingerprints(name: str, stage: StageBase, names: set[str]) -> dict[str, Any]:
    prints: dict[str, Any] = {}
    for path, value in stage.reference_values():
        if value in names or is_registered(value):  # a registered version never changes: its name is its print
            continue
        matches = storage.expand(value)
        if not matches:
            raise SpecError(
                f"stages.{name}.{path}: nothing matches '{value}'. Fix the path, or create the input first "
                f"(the demo corpus: `make demo-data`)."
            )
        prints[path] = [storage.fingerprint(m) for m in matches]
    return prints
