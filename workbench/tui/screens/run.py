"""Run: its stage pipeline with times and errors, live training progress and the worker's log tail."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Log, Static

from workbench.tui import progress


class RunScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("c", "cancel", "Cancel run"),
        Binding("v", "compare", "Compare variants"),
        Binding("a", "arena", "Chat arena"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.log_lines: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        yield DataTable(id="stages", cursor_type="none")
        yield Static(id="training")
        yield Log(id="log", max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"workbench · {self.run_id}"
        self.query_one("#stages", DataTable).add_columns("stage", "status", "time", "note")
        self.refresh_run()
        self.set_interval(1.0, self.refresh_run)

    def refresh_run(self) -> None:
        store = self.app.store  # type: ignore[attr-defined]
        run = store.run(self.run_id)
        if run is None:
            self.query_one("#summary", Static).update(f"run {self.run_id}: waiting for its worker to start")
            return
        stages = store.stages(self.run_id)
        logs = store.events(self.run_id, stage="train", kind="train_log")
        last = logs[-1] if logs else None
        status = store.live_status(run)
        self.query_one("#summary", Static).update(
            f"{self.run_id} · {status} · {run['recipe_path'] or run['name']}\n{progress.pipeline(stages, last)}"
        )
        table = self.query_one("#stages", DataTable)
        table.clear()
        for stage in stages:
            note = (stage.error or "").splitlines()[0][:60] if stage.error else ""
            table.add_row(stage.name, stage.status, progress.duration(stage.seconds), note)
        self.query_one("#training", Static).update(progress.training_line(last))
        lines = progress.tail(self.app.home / self.run_id / "worker.log")  # type: ignore[attr-defined]
        if lines != self.log_lines:
            log = self.query_one("#log", Log)
            log.clear()
            log.write_lines(lines)
            self.log_lines = lines

    def action_cancel(self) -> None:
        self.app.cancel_run(self.run_id)  # type: ignore[attr-defined]

    def action_compare(self) -> None:
        from workbench.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(self.run_id))

    def action_arena(self) -> None:
        from workbench.tui.screens.chat import ChatScreen

        self.app.push_screen(ChatScreen(self.run_id))
