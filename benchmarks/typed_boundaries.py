"""How much of what crosses module and process boundaries is typed: the `Any` in the signatures of public
functions that another top-level package calls, and the worker tasks whose job and result are dataclasses.

    python benchmarks/typed_boundaries.py [REV ...]     # e.g. a28216c HEAD; no REV: the working tree

Prints one line per revision, read from git (`git show REV:path`), so two revisions compare in one run.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources(rev: str | None) -> dict[str, str]:
    """module name -> source text of every workbench module at `rev` (None: the working tree)."""
    if rev is None:
        files = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in (ROOT / "workbench").rglob("*.py")}
    else:
        listing = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", rev, "workbench"], cwd=ROOT, capture_output=True, text=True
        )
        names = [n for n in listing.stdout.split() if n.endswith(".py")]
        show = lambda n: subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
        files = {n: show(n).stdout for n in names}
    modules = {}
    for path, text in files.items():
        parts = path.removesuffix(".py").split("/")
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = text
    return modules


def package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3]) if len(parts) > 2 and parts[1] in ("core", "pipeline") else ".".join(parts[:2])


def imported_names(modules: dict[str, str]) -> set[tuple[str, str]]:
    """(module, name) pairs that a module of another package imports with `from module import name`."""
    found = set()
    for module, text in modules.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
                for alias in node.names:
                    if package(node.module) != package(module):
                        found.add((node.module, alias.name))
    return found


def count(rev: str | None) -> tuple[int, int, int]:
    """(functions crossing a package boundary, `Any` in their signatures, `dict[str, Any]` among them)."""
    modules = sources(rev)
    crossing = imported_names(modules)
    functions = anys = dicts = 0
    for module, text in modules.items():
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef) and (module, node.name) in crossing:
                defs = [d for d in node.body if isinstance(d, ast.FunctionDef) and not d.name.startswith("_")]
            elif isinstance(node, ast.FunctionDef) and (module, node.name) in crossing:
                defs = [node]
            else:
                continue
            for function in defs:
                arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
                annotations = [a.annotation for a in arguments if a.annotation] + [function.returns]
                texts = [ast.unparse(a) for a in annotations if a is not None]
                functions += 1
                anys += sum(t.count("Any") for t in texts)
                dicts += sum(t.count("dict[str, Any]") for t in texts)
    return functions, anys, dicts


def untyped_tasks(rev: str | None) -> tuple[int, int]:
    """(worker tasks, those whose function takes or returns `dict[str, Any]`), read from workers/tasks.py."""
    modules = sources(rev)
    targets = [
        node.value
        for node in ast.walk(ast.parse(modules["workbench.workers.tasks"]))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[\w.]+:\w+", node.value)
    ]
    untyped = 0
    for target in targets:
        module, _, name = target.partition(":")
        for node in ast.parse(modules.get(module, "")).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                signature = ast.unparse(node.args) + " -> " + (ast.unparse(node.returns) if node.returns else "")
                untyped += "dict[str, Any]" in signature
    return len(targets), untyped


def main() -> None:
    revisions: list[str | None] = [*sys.argv[1:]] or [None]
    for rev in revisions:
        functions, anys, dicts = count(rev)
        tasks, untyped = untyped_tasks(rev)
        print(f"{rev or 'working tree'}: {functions} functions cross a package boundary; "
              f"`Any` {anys} times in their signatures, {dicts} of them `dict[str, Any]`; "
              f"{untyped} of {tasks} worker tasks take or return `dict[str, Any]`")  # fmt: skip


if __name__ == "__main__":
    main()
