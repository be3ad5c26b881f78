"""The app's screens. Each derives from `AppScreen`, whose `workbench` is the app with its type (the run
store, the runs home); a screen asks the app to act by posting a message (`CancelRun`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message
from textual.screen import Screen

if TYPE_CHECKING:
    from workbench.tui.app import WorkbenchApp


class CancelRun(Message):
    """Ask the app to stop a run's worker; it says how that went."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


class AppScreen(Screen[None]):
    @property
    def workbench(self) -> WorkbenchApp:
        from workbench.tui.app import WorkbenchApp

        app = self.app
        assert isinstance(app, WorkbenchApp), "workbench screens run inside WorkbenchApp"
        return app
