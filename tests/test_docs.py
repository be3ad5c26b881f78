"""The docs site and the README: every page is in the nav and every nav entry exists, the recipe reference
shows every field of the schema with a description, the README stays a front door whose links resolve.
(`make docs` builds the site with `mkdocs build --strict`, which checks the links between pages.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
import yaml
from pydantic import BaseModel, Field

from workbench.core import recipe_reference
from workbench.core.recipe import Recipe

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def nav_pages(entries: list[Any]) -> list[str]:
    """The page files a MkDocs nav names, nested sections included."""
    pages: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def config() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_nav_names_every_page_and_every_entry_exists() -> None:
    named = nav_pages(config()["nav"])
    on_disk = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    assert sorted(named) == on_disk
    assert len(named) == len(set(named)), "a page is in the nav twice"


def test_the_root_guides_are_included_not_copied() -> None:
    # ARCHITECTURE.md and CONTRIBUTING.md stay at the root; the site includes them whole
    for page, root_file in (("architecture.md", "ARCHITECTURE.md"), ("contributing.md", "CONTRIBUTING.md")):
        assert (DOCS / page).read_text(encoding="utf-8").strip() == f'--8<-- "{root_file}"'
        assert (ROOT / root_file).is_file()


def test_every_recipe_field_has_a_description() -> None:
    assert recipe_reference.undocumented() == []


def section_text(markdown: str, anchor: str) -> str:
    """The part of the reference under one section's heading."""
    start = markdown.index(f"{{ #{anchor} }}")
    end = markdown.find("\n## ", start)
    return markdown[start : end if end != -1 else None]


def test_the_reference_shows_every_field_of_every_section() -> None:
    markdown = recipe_reference.markdown()
    sections = recipe_reference.sections()
    documented = {section.model for section in sections}
    for section in sections:
        text = section_text(markdown, section.anchor)
        if section.same_as is not None:
            assert f"(#{recipe_reference.anchor(section.same_as)})" in text
            continue
        names = [name for name, info in section.model.model_fields.items() if not info.exclude]
        assert [field.name for field in section.fields] == names
        for field in section.fields:
            assert f"| `{field.name}` | {field.type} | {field.default} |" in text
            assert field.description and field.type and field.default
    assert documented == reachable(Recipe), "a section of the schema is missing from the reference"
    assert len([section for section in sections if section.same_as is None]) == len(documented)


def reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    """Every section class a recipe can hold, found from the annotations' own arguments."""
    found = {model}
    for info in model.model_fields.values():
        stack: list[Any] = [info.annotation]
        while stack:
            kind = stack.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found |= reachable(kind)
            stack += get_args(kind)
    return found


def test_the_reference_spells_types_and_defaults_as_a_recipe_does() -> None:
    by_path = {field.path: field for field in recipe_reference.fields()}
    assert by_path["train.method"].type == "one of `lora`, `qlora`, `full`"
    assert by_path["train.method"].default == "`lora`"
    assert by_path["train.epochs"].type == "number or `auto`"
    assert by_path["train.max_steps"].type == "integer or `null` (> 0)"
    assert by_path["export.gguf"].default == "`[f16, q8_0, q4_k_m]`"
    assert by_path["data.path"].default == "required"
    assert by_path["tune"].default == "`null`"
    assert "section" in by_path["train.lora"].type and "#train-lora" in by_path["train.lora"].type
    # a model format is a registered name, not a Literal: the reference still lists the built-in ones
    assert by_path["bench.cpu"].type == "list, each one of `hf`, `gguf`, `gptq`, `awq`, `nf4` (or a plugin's format)"


class Undescribed(BaseModel):
    """A section with one field nobody described."""

    known: int = Field(default=1, description="described")
    bare: Literal["a", "b"] = "a"


def test_a_field_without_a_description_is_reported() -> None:
    assert recipe_reference.undocumented(Undescribed) == ["bare"]


def test_the_reference_page_is_filled_in_at_build_time() -> None:
    page = (DOCS / "recipe-reference.md").read_text(encoding="utf-8")
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.MARKER in page
    built = hooks.on_page_markdown(page, page=None, config=None, files=None)
    assert hooks.MARKER not in built
    assert recipe_reference.markdown() in built
    assert config()["hooks"] == ["docs/hooks.py"]


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md", "ARCHITECTURE.md"])
def test_links_from_the_root_files_resolve(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert (ROOT / path).exists(), f"{name} links to {target}, which does not exist"


def test_the_readme_links_into_every_docs_section() -> None:
    targets = {target.split("#", 1)[0] for target in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))}
    pages = {f"docs/{page}" for page in nav_pages(config()["nav"])} - {"docs/architecture.md", "docs/contributing.md"}
    assert pages <= targets, f"README does not link {sorted(pages - targets)}"


# ---- the commands the README and the docs show --------------------------------------------------------------

FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INLINE = re.compile(r"`(workbench [^`]+)`")
PLACEHOLDER = re.compile(r"[A-Z]{2,}(?:_[A-Z]+)?\b|…|\.\.\.|\[")  # RUN, RECIPE, KEY=A,B, [--check]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) for each `workbench …` line of a code block and each inline example (one on the
    quickstart or a recipe file, naming no placeholder; a bare `workbench cancel` in a sentence names the
    command, it is no example), from the README and every docs page."""
    import shlex

    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
        lines += [
            m
            for m in INLINE.findall(text)
            if re.search(r" (quickstart|recipes/)", m) and not PLACEHOLDER.search(m.removeprefix("workbench "))
        ]
        for line in lines:
            line = line.strip().removeprefix("$ ").split("  #")[0].split(" # ")[0].strip()
            if line.startswith("workbench ") and not line.rstrip("\\").endswith(("|", "&&")):
                found.append((path.name, shlex.split(line)[1:]))
    return found


def quickstart_labels() -> list[str]:
    """The quickstart's variants as its last measured run named them (the comparison table of results.md)."""
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    table = text[text.index("## The comparison") :].split("\n\n")[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    return [row.split(" (")[0] for row in rows]


def test_every_documented_command_parses_and_names_a_quickstart_variant_exactly() -> None:
    """Each command the README and the docs show is one the CLI takes, and a variant it names on the
    quickstart is exactly one of the quickstart's variants — the plain file when it names a type
    (`--variant Q8_0` beside `adapter-on-Q8_0.gguf`)."""
    from workbench.cli import build_parser
    from workbench.pipeline import candidates

    commands = documented_commands()
    assert len(commands) > 30 and any(argv[:1] == ["serve"] for _, argv in commands)
    labels = quickstart_labels()
    assert {"Q8_0.gguf", "adapter-on-Q8_0.gguf", "merged"} <= set(labels), labels
    found = [candidates.Candidate(name=f"M-{label}", label=label, format="gguf", path=label) for label in labels]
    parser = build_parser()
    for page, argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exited:  # --help exits 0
            assert exited.code == 0, f"{page}: `workbench {' '.join(argv)}` is not a command the CLI takes"
            continue
        if getattr(args, "run", None) == "quickstart" and getattr(args, "variant", None):
            for wanted in [args.variant] if isinstance(args.variant, str) else args.variant:
                [picked] = candidates.pick(found, [wanted])
                if wanted.upper() in {label.removesuffix(".gguf") for label in labels}:
                    assert picked.label == f"{wanted.upper()}.gguf", (page, wanted)


def test_the_cheap_documented_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented commands that need no run and no model (validating a recipe, inspecting a data file,
    listing models, runs and servers) succeed as written, from the repository's root."""
    from workbench.cli import main

    monkeypatch.chdir(ROOT)
    cheap = [("recipe", "validate"), ("data", "inspect"), ("models", "list"), ("runs",), ("serve",)]
    ran = 0
    for page, argv in documented_commands():
        exists = all(Path(a).exists() for a in argv if a.endswith((".yaml", ".json", ".csv", ".jsonl")))
        if any(tuple(argv) == c or (tuple(argv[: len(c)]) == c and len(c) > 1) for c in cheap) and exists:
            assert main(["--home", str(tmp_path), *argv]) == 0, f"{page}: workbench {' '.join(argv)}"
            ran += 1
    assert ran >= 4
