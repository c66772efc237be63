"""Cache keys follow the code a stage really runs: its runner's import closure within the project."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from pipelines.code import PROJECT, PROJECT_PACKAGES, CodeIndex
from pipelines.spec import STAGE_CLASSES
from tests.conftest import ROOT

RUNNERS = sorted({cls.runner for cls in STAGE_CLASSES})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the project's packages to edit."""
    root = tmp_path_factory.mktemp("tree")
    for package in PROJECT_PACKAGES:
        shutil.copytree(f"{ROOT}/{package}", root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _touch(root, rel: str) -> None:
    with open(root / rel, "a") as f:
        f.write("\n# edited\n")


@pytest.mark.parametrize("runner", RUNNERS)
def test_editing_the_closure_changes_the_key_and_nothing_else_does(tree, runner):
    module = runner.partition(":")[0]
    closure = PROJECT.closure(module)
    inside = [f for f in closure if f.endswith(".py") and f.startswith(("jobs/", "services/"))]
    outside = [f for f in PROJECT.all_files() if f.endswith(".py") and f not in closure]
    assert inside and outside, (runner, closure)
    for rel, changes in [(inside[-1], True), (outside[0], False), (outside[-1], False)]:
        before = CodeIndex(str(tree)).version(runner)
        _touch(tree, rel)
        after = CodeIndex(str(tree)).version(runner)
        assert (after != before) is changes, f"{runner}: editing {rel} {'should' if changes else 'should not'} rekey"


def test_the_tokenizer_follows_what_it_imports():
    tokenizer = PROJECT.closure("jobs.tokenizer")
    assert "jobs/train/sources.py" in tokenizer, "jobs.tokenizer imports jobs.train.sources"
    assert "jobs/tokenizer.py" not in PROJECT.closure("jobs.train.pretrain"), "no other stage runs the tokenizer"
    assert "services/app.py" in PROJECT.closure("services.stage") and "jobs/train/loop.py" not in PROJECT.closure(
        "services.stage"
    )


def test_lazy_and_relative_imports_count(tmp_path):
    (tmp_path / "jobs" / "toy").mkdir(parents=True)
    (tmp_path / "jobs" / "__init__.py").write_text("")
    (tmp_path / "jobs" / "toy" / "__init__.py").write_text("")
    (tmp_path / "jobs" / "toy" / "stage.py").write_text("def run(ctx):\n    from .helper import f\n    return f()\n")
    (tmp_path / "jobs" / "toy" / "helper.py").write_text("import torch\nfrom jobs.toy import table\n")
    (tmp_path / "jobs" / "toy" / "table.py").write_text("X = 1\n")
    (tmp_path / "jobs" / "toy" / "prompts.yaml").write_text("a: 1\n")
    (tmp_path / "jobs" / "toy" / "unused.py").write_text("")
    closure = CodeIndex(str(tmp_path)).closure("jobs.toy.stage")
    assert closure == ("jobs/__init__.py", "jobs/toy/__init__.py", "jobs/toy/helper.py", "jobs/toy/prompts.yaml",
                       "jobs/toy/stage.py", "jobs/toy/table.py")  # fmt: skip


def _modules(package: str):
    for path in sorted((Path(ROOT) / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), str(path)


def test_layers_point_one_way():
    """cli -> cluster/services -> pipelines; nothing but a stage's own runner module imports jobs."""
    runners = {cls.runner.partition(":")[0] for cls in STAGE_CLASSES}
    wrong = []
    for package, forbidden in [("pipelines", ("jobs", "cluster", "services", "cli")), ("cluster", ("jobs", "cli")),
                               ("services", ("jobs", "cli")), ("cli", ("jobs",))]:  # fmt: skip
        for module, path in _modules(package):
            if module in runners:
                continue
            imported = PROJECT.imports(module, path) | _cli_imports(path)
            wrong += [f"{module} imports {m}" for m in imported if m.split(".")[0] in forbidden]
    assert not wrong, wrong


def _cli_imports(path: str) -> set[str]:
    """`cli` is not a stage package, so PROJECT does not follow it; its own imports of `cli` modules."""
    tree = ast.parse(Path(path).read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cli")}
