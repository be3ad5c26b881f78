"""Models: the registry's base models (which are local, where the rest come from) and any other
checkpoint in the models folder; `p` pulls one in a background process."""

from __future__ import annotations

import asyncio
from asyncio.subprocess import DEVNULL, STDOUT

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from workbench.core import models
from workbench.core.common import child_env, last_line
from workbench.pipeline import launcher
from workbench.tui.screens import AppScreen
from workbench.tui.tables import cell, selected_row

COLUMNS = ("model", "params", "local", "size", "license")


def rows() -> list[dict[str, str]]:
    """Registry models first (the default marked), then unregistered checkpoints in the models folder."""
    default, entries = models.load_registry()
    found = []
    for entry in entries.values():
        local = entry.is_local
        found.append(
            {
                "name": entry.name,
                "model": entry.name + (" (default)" if entry.name == default else ""),
                "params": entry.params or "",
                "local": "yes" if local else "no",
                "size": f"{models.folder_size(entry.local_dir) / 2**20:.0f} MiB" if local else "",
                "license": entry.license or "",
                "from": f"{entry.source} {entry.package or entry.hub_id}",
            }
        )
    for folder in models.local_folders():
        if folder.name not in entries:
            size = f"{models.folder_size(folder) / 2**20:.0f} MiB"
            found.append(
                {
                    "name": folder.name,
                    "model": folder.name,
                    "params": "",
                    "local": "yes",
                    "size": size,
                    "license": "",
                    "from": f"folder {folder}",
                }
            )
    return found


class ModelsScreen(AppScreen):
    DEFAULT_CSS = """
    #models { height: 1fr; }
    #model-info, #pull-status { height: auto; padding: 0 1; }
    """
    BINDINGS = [
        Binding("p", "pull", "Pull"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.pulling: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield Static(id="model-info", markup=False)
        yield Static(id="pull-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "workbench · models"
        table = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        self.refresh_models()

    def refresh_models(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        self.found = {row["name"]: row for row in rows()}
        for name, row in self.found.items():
            table.add_row(*(cell(row[column]) for column in COLUMNS), key=name)
        table.move_cursor(row=cursor)

    def selected(self) -> str | None:
        return selected_row(self.query_one(DataTable))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = self.found[str(event.row_key.value)]
        self.query_one("#model-info", Static).update(f"from {row['from']}\nin a recipe: base_model: {row['name']}")

    def action_pull(self) -> None:
        name = self.selected()
        if name is None:
            return
        _, entries = models.load_registry()
        if name not in entries:
            self.notify(f"{name} is a local folder, not a registry model", severity="warning", markup=False)
        elif entries[name].is_local:
            self.notify(f"{name} is already local", markup=False)
        elif name in self.pulling:
            self.notify(f"{name} is being pulled already", markup=False)
        else:
            self.pulling.add(name)
            self.query_one("#pull-status", Static).update(f"pulling {name}…")
            self.pull(name)

    @work(group="pull")
    async def pull(self, name: str) -> None:
        """`workbench models pull` in its own session, output to a log file: a pull loads torch, which the
        app never imports, and it finishes (atomically) even if the app is closed meanwhile."""
        log = self.workbench.home / "pulls" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            process = await asyncio.create_subprocess_exec(
                *launcher.CLI,
                "models",
                "pull",
                name,
                stdin=DEVNULL,
                stdout=out,
                stderr=STDOUT,
                start_new_session=True,
                env=child_env(),
            )
        await process.wait()
        self.pulling.discard(name)
        output = last_line(log.read_text(errors="replace"), "no output")
        if process.returncode == 0:
            message = f"pulled {name}: {output}"
        else:
            message = f"pulling {name} failed: {output} (log: {log})"
        self.query_one("#pull-status", Static).update(message)
        self.notify(message, severity="information" if process.returncode == 0 else "error", markup=False)
        self.refresh_models()
