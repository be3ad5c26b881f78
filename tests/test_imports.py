"""The import rule of ARCHITECTURE.md, checked on the source: every `import workbench…` (at the top of a
module or inside a function) goes down the layers, never up or sideways where the rule says no."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# the layers, bottom up; a module may import its own package and anything in a lower layer
LAYERS = [
    {"errors", "common", "paths", "safe", "yamlfile", "fsutil", "devices", "recipe", "records", "store", "models",
     "variants", "parity", "preflight", "data", "workers", "runlock"},  # foundation: records, files, children
    {"train", "merge", "export", "eval", "bench", "report", "chat", "doctor", "qat", "serve"},  # engines: the work
    {"stages", "runner", "launcher", "sweep", "servers", "publish", "slurm"},  # the pipeline: recipe -> engine -> store
    {"cli", "tui"},  # surfaces
]  # fmt: skip
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every workbench import in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found += [(module, name) for name in names if name.startswith("workbench.")]
    return found


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def violations() -> list[str]:
    problems = []
    for source, target in imports():
        here, there = top(source), top(target)
        if here == there or there == "":
            if here == "stages" and there == "stages":  # stages never import each other
                stage = target.split(".")[2] if target.count(".") >= 2 else ""
                # the package and a rank's entry (stages.ranks) run stages by name
                dispatchers = ("workbench.stages", "workbench.stages.base", "workbench.stages.ranks")
                if source not in dispatchers and stage not in ("base", ""):
                    problems.append(f"{source} imports another stage: {target}")
            continue
        if here not in LAYER or there not in LAYER:
            problems.append(f"{source} -> {target}: add the package to a layer in tests/test_imports.py")
        elif LAYER[there] > LAYER[here]:
            problems.append(f"{source} imports upwards: {target}")
        elif here == "report" and LAYER[there] != 0:
            problems.append(f"{source}: the report reads records only, not {target}")
    return problems


def test_every_import_goes_down_the_layers() -> None:
    assert imports(), "no imports found: the walk is broken"
    assert violations() == []


def test_the_rule_catches_what_it_forbids(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    package = tmp_path / "workbench"
    (package / "stages").mkdir(parents=True)
    (package / "train").mkdir()
    (package / "report").mkdir()
    (package / "train" / "loop.py").write_text("from workbench.stages.base import StageContext\n")
    (package / "stages" / "eval.py").write_text("def f():\n    from workbench.stages.data import read\n")
    (package / "report" / "x.py").write_text("import workbench.eval.summary\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert sorted(violations()) == [
        "workbench.report.x: the report reads records only, not workbench.eval.summary",
        "workbench.stages.eval imports another stage: workbench.stages.data.read",
        "workbench.train.loop imports upwards: workbench.stages.base.StageContext",
    ]
