"""Models: the registry's base models (which are local, where the rest come from) and any other
checkpoint in the models folder; `p` pulls one in a background process."""

from __future__ import annotations

import subprocess
import sys

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from workbench import models

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


class ModelsScreen(Screen):
    BINDINGS = [
        Binding("p", "pull", "Pull"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield Static(id="model-info")
        yield Static(id="pull-status")
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
            table.add_row(*(row[column] for column in COLUMNS), key=name)
        table.move_cursor(row=cursor)

    def selected(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = self.found[event.row_key.value]
        self.query_one("#model-info", Static).update(f"from {row['from']}\nin a recipe: base_model: {row['name']}")

    def action_pull(self) -> None:
        name = self.selected()
        if name is None:
            return
        _, entries = models.load_registry()
        if name not in entries:
            self.notify(f"{name} is a local folder, not a registry model", severity="warning")
        elif entries[name].is_local:
            self.notify(f"{name} is already local")
        else:
            self.query_one("#pull-status", Static).update(f"pulling {name}…")
            self.pull(name)

    @work(thread=True, group="pull")
    def pull(self, name: str) -> None:
        """In a child process: a pull loads torch, which the app never imports."""
        done = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "models", "pull", name], capture_output=True, text=True
        )
        if done.returncode == 0:
            message = f"pulled {name}: {done.stdout.strip()}"
        else:
            last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
            message = f"pulling {name} failed: {last[0]}"
        self.app.call_from_thread(self.pulled, message, done.returncode == 0)

    def pulled(self, message: str, ok: bool) -> None:
        self.query_one("#pull-status", Static).update(message)
        self.notify(message, severity="information" if ok else "error")
        self.refresh_models()
