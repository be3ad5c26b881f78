"""Runs: every run in the store with its status and stage pipeline, refreshed every second."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header

from workbench.core import progress
from workbench.tui.screens import AppScreen, CancelRun
from workbench.tui.tables import cell, selected_row


class RunsScreen(AppScreen):
    """`space` marks runs; `v` compares the marked runs side by side (or the highlighted run's variants)."""

    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("space", "mark", "Mark"),
        Binding("v", "compare", "Compare"),
        Binding("n", "new", "New run"),
        Binding("c", "cancel", "Cancel run"),
        Binding("m", "models", "Models"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.marked: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = "workbench · runs"
        table = self.query_one(DataTable)
        table.add_columns("run", "status", "since", "stages")
        self.refresh_runs()
        self.set_interval(1.0, self.refresh_runs)

    def refresh_runs(self) -> None:
        store = self.workbench.store
        table = self.query_one(DataTable)
        seen = set()
        for run in store.runs():
            run_id = run.id
            seen.add(run_id)
            stages = store.stages(run_id)
            running = next((s.name for s in stages if s.status == "running" and s.name in progress.TRAINING), "train")
            last = store.last_train_log(run_id, running)
            cells = (
                f"* {run_id}" if run_id in self.marked else run_id,
                store.live_status(run),
                progress.age(time.time() - run.updated),  # since its status last changed
                progress.marks(stages, last),
            )
            if run_id in table.rows:
                for column, value in zip(table.columns, cells, strict=True):
                    table.update_cell(run_id, column, cell(value), update_width=True)
            else:
                table.add_row(*map(cell, cells), key=run_id)
        for key in [k for k in table.rows if k.value not in seen]:
            table.remove_row(key)
        self.marked = [run_id for run_id in self.marked if run_id in seen]
        self.sub_title = "" if seen else "no runs yet: n starts one"

    def selected(self) -> str | None:
        return selected_row(self.query_one(DataTable))

    def action_open(self) -> None:
        from workbench.tui.screens.run import RunScreen

        run_id = self.selected()
        if run_id:
            self.app.push_screen(RunScreen(run_id))

    def action_mark(self) -> None:
        run_id = self.selected()
        if run_id:
            if run_id in self.marked:
                self.marked.remove(run_id)
            else:
                self.marked.append(run_id)
            self.refresh_runs()

    def action_compare(self) -> None:
        if len(self.marked) > 1:
            from workbench.tui.screens.compare_runs import CompareRunsScreen

            self.app.push_screen(CompareRunsScreen(list(self.marked)))
        elif run_id := (self.marked[0] if self.marked else self.selected()):
            from workbench.tui.screens.compare import CompareScreen

            self.app.push_screen(CompareScreen(run_id))

    def action_new(self) -> None:
        from workbench.tui.screens.new_run import NewRunScreen

        self.app.push_screen(NewRunScreen())

    def action_models(self) -> None:
        from workbench.tui.screens.models import ModelsScreen

        self.app.push_screen(ModelsScreen())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_cancel(self) -> None:
        run_id = self.selected()
        if run_id:
            self.post_message(CancelRun(run_id))
