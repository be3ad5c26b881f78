"""New run: pick a recipe, override fields (`section.field=value`, one per line, as `--set` on the
command line), check them with the same validation as `workbench recipe validate`, and launch the run
in a detached worker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Input, Label, Static, TextArea

from workbench.core.common import flat
from workbench.core.errors import RunError
from workbench.core.paths import BadName, check_name
from workbench.pipeline import launcher
from workbench.tui.screens import AppScreen

if TYPE_CHECKING:
    from workbench.core.recipe import Recipe  # pydantic: loaded when a recipe is checked, not at start-up


def recipe_files(folder: Path = Path("recipes")) -> list[Path]:
    """The recipes folder's YAML files, the quickstart first (it runs anywhere)."""
    found = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    return sorted(found, key=lambda path: path.name != "quickstart.yaml")


def changes(before: Recipe, after: Recipe) -> list[tuple[str, Any, Any]]:
    """The fields the overrides changed, as `section.field`, old and new value."""
    old, new = flat(before.model_dump(mode="json")), flat(after.model_dump(mode="json"))
    return [(key, old.get(key), new[key]) for key in new if old.get(key) != new[key]]


class NewRunScreen(AppScreen):
    BINDINGS = [
        Binding("ctrl+r", "launch", "Validate and launch", priority=True),
        Binding("f5", "validate", "Validate", priority=True),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def compose(self) -> ComposeResult:
        found = recipe_files()
        yield Header()
        with VerticalScroll():
            yield Label("Recipe file" + (f" (in recipes/: {', '.join(p.name for p in found)})" if found else ""))
            yield Input(value=str(found[0]) if found else "", placeholder="recipes/quickstart.yaml", id="recipe")
            yield Label("Run name (default: the recipe's name)")
            yield Input(placeholder="run id", id="run-id")
            yield Label("Overrides, one per line: section.field=value")
            yield TextArea(id="overrides", soft_wrap=True)
            yield Static(id="problems", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "workbench · new run"
        self.query_one("#recipe", Input).focus()

    def overrides(self) -> list[str]:
        text = self.query_one("#overrides", TextArea).text
        return [line.strip() for line in text.splitlines() if line.strip()]

    def validated(self) -> tuple[Path, str] | None:
        """The recipe and run id when the recipe validates; else its problems are shown."""
        from workbench.core.recipe import RecipeError, load_recipe

        path = Path(self.query_one("#recipe", Input).value.strip())
        problems = self.query_one("#problems", Static)
        try:
            recipe = load_recipe(path, self.overrides())
        except RecipeError as exc:
            problems.update(exc.report())
            return None
        run_id = self.query_one("#run-id", Input).value.strip() or recipe.name
        try:
            check_name(run_id)
        except BadName as exc:
            problems.update(str(exc))
            return None
        lines = [f"ok: recipe {recipe.name!r}, base model {recipe.base_model}, run {run_id!r}"]
        lines += [f"  {key}: {old!r} → {new!r}" for key, old, new in changes(load_recipe(path), recipe)]
        problems.update("\n".join(lines))
        return path, run_id

    def action_validate(self) -> None:
        self.validated()

    def action_launch(self) -> None:
        checked = self.validated()
        if checked is None:
            return
        path, run_id = checked
        try:
            launcher.launch(path, self.workbench.home, run_id, self.overrides())
        except RunError as exc:  # the run has a live worker
            self.query_one("#problems", Static).update(str(exc))
            return
        from workbench.tui.screens.run import RunScreen

        self.app.switch_screen(RunScreen(run_id))
