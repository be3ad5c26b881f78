"""The import rule of ARCHITECTURE.md, checked on the source: every `import workbench…` (at the top of a
module or inside a function) goes down the layers, never up or sideways where the rule says no."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# the layers, bottom up, by top-level package; a module may import its own package and anything lower
LAYERS = [
    {"core", "data", "workers"},  # foundation: records, the store, recipes, files, child processes
    {"train", "export", "eval", "bench", "report", "chat", "doctor", "qat", "serve"},  # engines: the work
    {"pipeline"},  # recipe -> engine -> store: stages, runner, launcher, sweeps, servers, publish, slurm
    {"cli", "tui"},  # surfaces
]  # fmt: skip
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ENGINES = LAYERS[1]

# The engine -> engine imports there are, each with its reason; anything else between engines is a finding.
ENGINE_IMPORTS = {
    ("bench", "workbench.export.llamacpp_tools"): "llama-bench sits beside the converter's llama.cpp tools",
    ("bench", "workbench.doctor.llama_build"): "a bench result records how llama.cpp was built",
    ("doctor", "workbench.export.llamacpp_tools"): "the GGUF probe quantizes with the exporter's llama-quantize",
    ("serve", "workbench.export.llamacpp_tools"): "llama-server is built and found with the other llama.cpp tools",
    ("export", "workbench.chat.stream"): "the smoke check answers with the chat's own streamer",
    ("train", "workbench.qat.modules"): "quantization-aware training swaps in QAT's fake-quantized modules",
    ("export", "workbench.serve.ollama"): "a GGUF ships with its Ollama Modelfile and llama-server command",
    ("export", "workbench.qat.check"): "a quantization-aware run's GGUF gets the grid check",
    ("export", "workbench.qat.mixture"): "a K-quant QAT run's file is held to the types it trained on",
    ("export", "workbench.eval.fidelity"): "quantization trials are scored with the eval's fidelity meter",
    ("export", "workbench.eval.llamacpp_lm"): "quantization trials read logits as the eval stage reads them",
}


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


def stage_of(module: str) -> str:
    """The stage a `workbench.pipeline.stages.<stage>…` module belongs to ("" for the package itself)."""
    parts = module.split(".")
    return parts[3] if parts[1:3] == ["pipeline", "stages"] and len(parts) > 3 else ""


def allowed_between_engines(source: str, target: str) -> bool:
    return any(top(source) == here and (target + ".").startswith(there + ".") for here, there in ENGINE_IMPORTS)


def violations() -> list[str]:
    problems = []
    for source, target in imports():
        here, there = top(source), top(target)
        if here == there or there == "":
            stage = stage_of(target)  # stages never import each other
            # the package and a rank's entry (stages.ranks) run stages by name
            dispatchers = ("", "base", "ranks")
            if stage and stage_of(source) not in (*dispatchers, stage) and stage != "base":
                problems.append(f"{source} imports another stage: {target}")
            continue
        if here not in LAYER or there not in LAYER:
            problems.append(f"{source} -> {target}: add the package to a layer in tests/test_imports.py")
        elif LAYER[there] > LAYER[here]:
            problems.append(f"{source} imports upwards: {target}")
        elif here == "report" and LAYER[there] != 0:
            problems.append(f"{source}: the report reads records only, not {target}")
        elif here in ENGINES and there in ENGINES and not allowed_between_engines(source, target):
            problems.append(f"{source} imports another engine: {target} (not in ENGINE_IMPORTS)")
    return problems


def test_every_import_goes_down_the_layers() -> None:
    assert imports(), "no imports found: the walk is broken"
    assert violations() == []


def test_the_rule_catches_what_it_forbids(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    package = tmp_path / "workbench"
    (package / "pipeline" / "stages").mkdir(parents=True)
    for engine in ("train", "report", "eval", "bench"):
        (package / engine).mkdir()
    (package / "train" / "loop.py").write_text("from workbench.pipeline.stages.base import StageContext\n")
    stage = "def f():\n    from workbench.pipeline.stages.data import read\n"
    (package / "pipeline" / "stages" / "eval.py").write_text(stage)
    (package / "report" / "x.py").write_text("import workbench.eval.summary\n")
    (package / "eval" / "y.py").write_text("from workbench.bench.timing import Stat\n")
    (package / "bench" / "z.py").write_text("from workbench.export.llamacpp_tools import tool\n")  # allowed
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert sorted(violations()) == [
        "workbench.eval.y imports another engine: workbench.bench.timing.Stat (not in ENGINE_IMPORTS)",
        "workbench.pipeline.stages.eval imports another stage: workbench.pipeline.stages.data.read",
        "workbench.report.x: the report reads records only, not workbench.eval.summary",
        "workbench.train.loop imports upwards: workbench.pipeline.stages.base.StageContext",
    ]


def test_the_surfaces_share_no_modules_but_lower_ones() -> None:
    """The CLI and the TUI are surfaces side by side: neither imports the other (the run view model both
    show is `workbench.core.progress`), except the CLI starting the TUI app or its web server."""
    starters = {"workbench.tui.app", "workbench.tui.web"}
    crossing = [
        (source, target)
        for source, target in imports()
        if {top(source), top(target)} == {"cli", "tui"} and not any(target.startswith(s) for s in starters)
    ]
    assert crossing == []


def defined_names(module: str) -> set[str] | None:
    """The names a workbench module defines or imports at its top level, and its submodules (None: no such
    module)."""
    base = PACKAGE.parent / module.replace(".", "/")
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.exists():
        return None
    names = {p.stem for p in base.iterdir() if p.suffix == ".py" or p.is_dir()} if base.is_dir() else set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.If | ast.Try):  # names defined under a version check or an import guard
            names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def test_every_workbench_import_names_something_that_exists() -> None:
    """After modules move between folders, an import inside a function (or in a benchmark script, which no
    test runs) would only fail when it runs: every `from workbench… import name` in the package, the tests
    and the benchmarks names a module that exists and a name it defines."""
    broken = []
    for folder in ("workbench", "tests", "benchmarks"):
        for path in sorted((PACKAGE.parent / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
                    names = defined_names(node.module)
                    missing = [a.name for a in node.names if names is None or a.name not in names]
                    if missing:
                        broken.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.module} {missing}")
                elif isinstance(node, ast.Import):
                    broken += [
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {a.name}"
                        for a in node.names
                        if a.name.startswith("workbench.") and defined_names(a.name) is None
                    ]
    assert broken == []
