"""`workbench tui` (or `workbench` alone): the app. Screens read the run store; runs are started and
stopped through detached workers (workbench.pipeline.launcher), so closing the app never stops a run."""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from workbench.core.store import Store
from workbench.pipeline import launcher
from workbench.tui.screens import CancelRun
from workbench.tui.screens.runs import RunsScreen


class WorkbenchApp(App[None]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses defined elsewhere find it too
    TITLE = "workbench"

    def __init__(self, home: Path) -> None:
        super().__init__()
        self.home = Path(home)
        self.store = Store(self.home / "workbench.db")

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())

    def on_cancel_run(self, message: CancelRun) -> None:
        run_id = message.run_id
        if launcher.cancel(self.store, run_id):
            self.notify(f"asked {run_id} to stop; it saves what it can resume from", markup=False)
        else:
            self.notify(f"{run_id} has no live worker", severity="warning", markup=False)
