"""Which source code a stage runs: the import closure of its runner module within the project, read with `ast`.

A stage's cache key hashes these files (and the data files beside them), so it changes exactly when the code it
ran did: editing the serving code does not retrain a model, and a change to `jobs/train/sources.py` reruns the
tokenizer that imports it. Imports inside functions count (llmctl imports heavy modules lazily); an import of a
module outside the project (torch, ray) does not. The closure is computed once per process and root.
"""

from __future__ import annotations

import ast
import hashlib
import os
from functools import lru_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_PACKAGES = ("pipelines", "jobs", "cluster", "services")
DATA_SUFFIXES = (".yaml", ".yml", ".json", ".jinja", ".html", ".txt")  # templates and tables a module may read


class CodeIndex:
    """Source files of the project under `root`, and the import closure of any of its modules."""

    def __init__(self, root: str = ROOT):
        self.root = root
        self.closure = lru_cache(maxsize=None)(self._closure)
        self.imports = lru_cache(maxsize=None)(self._imports)
        self.digest = lru_cache(maxsize=None)(self._digest)

    def module_file(self, module: str) -> str | None:
        """The file of a project module (`jobs.train` -> jobs/train/__init__.py), or None outside the project."""
        if module.split(".")[0] not in PROJECT_PACKAGES:
            return None
        base = os.path.join(self.root, *module.split("."))
        for path in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(path):
                return path
        return None

    def _imports(self, module: str, path: str) -> frozenset[str]:
        """Every project module `path` imports, at any depth of its code, with the packages above each."""
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module, node.level, package)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from jobs.data import stage`
        with_parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 2)}
        return frozenset(m for m in with_parents if self.module_file(m) is not None)

    def _closure(self, module: str) -> tuple[str, ...]:
        """Files of `module`, everything it imports transitively within the project, and their packages."""
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        todo, seen = [module, *parents], {}
        while todo:
            name = todo.pop()
            path = self.module_file(name)
            if path is None or name in seen:
                continue
            seen[name] = path
            todo.extend(self.imports(name, path) - seen.keys())
        files = set(seen.values())
        for folder in {os.path.dirname(p) for p in files}:  # data files beside the modules, not in subfolders
            files.update(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(DATA_SUFFIXES))
        return tuple(sorted(os.path.relpath(f, self.root) for f in files))

    def _digest(self, files: tuple[str, ...]) -> str:
        digest = hashlib.sha256()
        for rel in files:
            digest.update(rel.encode())
            with open(os.path.join(self.root, rel), "rb") as f:
                digest.update(f.read())
        return digest.hexdigest()[:12]

    def version(self, runner: str | None = None) -> str:
        """Hash of the code a runner ("module:function") runs; of every project source file without one."""
        if runner is None:
            return self.digest(self.all_files())
        return self.digest(self.closure(runner.partition(":")[0]))

    def all_files(self) -> tuple[str, ...]:
        found = []
        for package in PROJECT_PACKAGES:
            for dirpath, _, filenames in os.walk(os.path.join(self.root, package)):
                found += [os.path.join(dirpath, f) for f in filenames if f.endswith((".py", *DATA_SUFFIXES))]
        return tuple(sorted(os.path.relpath(f, self.root) for f in found))


def _absolute(module: str | None, level: int, package: str) -> str:
    if not level:
        return module or ""
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join([*base, module] if module else base)


PROJECT = CodeIndex()
