"""Run: its stage pipeline with times and errors, live training progress and loss/lr curve, the worker's
log tail and the run's artifacts (one tab each, keys 1-4)."""

from __future__ import annotations

import os
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from workbench.common import tail
from workbench.records import Artifact
from workbench.tui import progress
from workbench.tui.screens import CancelRun
from workbench.tui.tables import cell
from workbench.tui.tabs import NumberedTabs, tab_keys

TABS = ("stages", "curve", "log", "artifacts")


class RunScreen(NumberedTabs):
    DEFAULT_CSS = """
    #summary, #training { height: auto; padding: 0 1; }
    #tabs { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("c", "cancel", "Cancel run"),
        Binding("v", "compare", "Compare variants"),
        Binding("a", "arena", "Chat arena"),
        Binding("q", "app.quit", "Quit"),
        *tab_keys(TABS),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.log_lines: list[str] = []
        self.train_logs: list[dict[str, Any]] = []
        self.plotted = 0
        self.artifact_rows: list[tuple[str, str, str, str]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary", markup=False)
        yield Static(id="training", markup=False)
        with TabbedContent(id="tabs"):
            with TabPane("1 Stages", id="stages-tab"):
                yield DataTable(id="stages", cursor_type="none")
            with TabPane("2 Loss", id="curve-tab"):
                yield PlotextPlot(id="curve")
            with TabPane("3 Log", id="log-tab"):
                yield Log(id="log", max_lines=500)
            with TabPane("4 Artifacts", id="artifacts-tab"):
                yield DataTable(id="artifacts", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"workbench · {self.run_id}"
        self.query_one("#stages", DataTable).add_columns("stage", "status", "time", "note")
        self.query_one("#artifacts", DataTable).add_columns("stage", "artifact", "MiB", "path")
        self.refresh_run()
        self.set_interval(1.0, self.refresh_run)

    def refresh_run(self) -> None:
        store = self.workbench.store
        run = store.run(self.run_id)
        if run is None:
            self.query_one("#summary", Static).update(f"run {self.run_id}: waiting for its worker to start")
            return
        stages = store.stages(self.run_id)
        after = self.train_logs[-1]["id"] if self.train_logs else 0
        self.train_logs += store.events(self.run_id, stage="train", kind="train_log", after=after)
        last = self.train_logs[-1] if self.train_logs else None
        self.query_one("#summary", Static).update(
            f"{self.run_id} · {store.live_status(run)} · {run['recipe_path'] or run['name']}\n"
            + progress.pipeline(stages, last)
        )
        table = self.query_one("#stages", DataTable)
        table.clear()
        for stage in stages:
            note = (stage.error or "").splitlines()[0][:60] if stage.error else ""
            table.add_row(*map(cell, (stage.name, stage.status, progress.duration(stage.seconds), note)))
        self.query_one("#training", Static).update(progress.training_line(last))
        self.plot_curve()
        self.show_artifacts(store.artifacts(self.run_id))
        lines = tail(self.workbench.home / self.run_id / "worker.log")
        if lines != self.log_lines:
            log = self.query_one("#log", Log)
            log.clear()
            log.write_lines(lines)
            self.log_lines = lines

    def plot_curve(self) -> None:
        if len(self.train_logs) == self.plotted:
            return
        self.plotted = len(self.train_logs)
        widget = self.query_one("#curve", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        title = "training loss (left) and learning rate (right) by step"
        qat = self.workbench.store.last_event(self.run_id, "train", "qat_on")
        if qat:  # quantization-aware training: where the rounding was switched on
            plt.vline(qat["step"])
            title += f"; {qat['target']} rounding from step {qat['step']}"
        plt.title(title)
        steps = [log["step"] for log in self.train_logs]
        plt.plot(steps, [log["loss"] for log in self.train_logs], label="loss", marker="braille")
        rates = [log.get("learning_rate") for log in self.train_logs]
        if all(rate is not None for rate in rates):
            plt.plot(steps, rates, label="lr", yside="right", marker="dot")
        widget.refresh()

    def show_artifacts(self, artifacts: list[Artifact]) -> None:
        rows = []
        for item in artifacts:
            path = os.path.relpath(item.path) if item.path.startswith(os.getcwd() + os.sep) else item.path
            rows.append((item.stage, item.name, f"{item.size / 2**20:.1f}", path))
        if rows == self.artifact_rows:
            return
        self.artifact_rows = rows
        table = self.query_one("#artifacts", DataTable)
        table.clear()
        for row in rows:
            table.add_row(*map(cell, row), key=row[1])

    def action_cancel(self) -> None:
        self.post_message(CancelRun(self.run_id))

    def action_compare(self) -> None:
        from workbench.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(self.run_id))

    def action_arena(self) -> None:
        from workbench.tui.screens.chat import ChatScreen

        self.app.push_screen(ChatScreen(self.run_id))
