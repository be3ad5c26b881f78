"""Run: its stage pipeline with times and errors, live training progress and its curve (the training stage
running, else the last that logged: supervised training's loss and lr, a reward model's or preference
tuning's loss and headline metrics), the worker's log tail, the run's artifacts and its servers (one tab
each, keys 1-5). `s` serves the variant selected in the artifacts tab (else the CPU recommendation), `x`
stops the run's servers."""

from __future__ import annotations

import os
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Log, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from workbench.core import progress
from workbench.core.common import tail
from workbench.core.records import Artifact, TrainLog
from workbench.tui.screens import CancelRun
from workbench.tui.tables import cell, selected_row
from workbench.tui.tabs import NumberedTabs, tab_keys

TABS = ("stages", "curve", "log", "artifacts", "serve")


def dash(value: int | None) -> object:
    return "-" if value is None else value


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
        Binding("s", "serve", "Serve"),
        Binding("x", "stop_serving", "Stop serving"),
        Binding("q", "app.quit", "Quit"),
        *tab_keys(TABS),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.log_lines: list[str] = []
        self.train_logs: dict[str, list[TrainLog]] = {}  # by training stage (train, reward, tune)
        self.last_log_id = 0
        self.plotted = 0  # how many logs of the `plotted_stage` the curve shows
        self.plotted_stage: str | None = None
        self.recipe: dict[str, Any] | None = None
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
            with TabPane("5 Serve", id="serve-tab"):
                yield Static(id="serving", markup=False)
                yield DataTable(id="servers", cursor_type="none")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"workbench · {self.run_id}"
        self.query_one("#stages", DataTable).add_columns("stage", "status", "time", "note")
        self.query_one("#artifacts", DataTable).add_columns("stage", "artifact", "MiB", "path")
        self.query_one("#servers", DataTable).add_columns(
            "server", "status", "URL", "variant", "backend", "API key", "requests", "busy", "queued", "tok/s"
        )
        self.refresh_run()
        self.set_interval(1.0, self.refresh_run)

    def refresh_run(self) -> None:
        store = self.workbench.store
        run = store.run(self.run_id)
        if run is None:
            self.query_one("#summary", Static).update(f"run {self.run_id}: waiting for its worker to start")
            return
        stages = store.stages(self.run_id)
        for train_log in store.train_logs(self.run_id, after=self.last_log_id):
            self.last_log_id = train_log.id
            if train_log.stage in progress.TRAINING:
                self.train_logs.setdefault(train_log.stage, []).append(train_log)
        if self.recipe is None:
            self.recipe = progress.run_recipe(run.recipe_json)
        training = progress.training_stage(stages, self.train_logs)  # the one running, else the last that logged
        logs = self.train_logs.get(training, []) if training else []
        last = logs[-1] if logs else None
        label = progress.stage_label(training, self.recipe) if training else None
        self.query_one("#summary", Static).update(
            f"{self.run_id} · {store.live_status(run)} · {run.recipe_path or run.name}\n"
            + progress.pipeline(stages, last)
        )
        table = self.query_one("#stages", DataTable)
        table.clear()
        for stage in stages:
            note = (stage.error or "").splitlines()[0][:60] if stage.error else ""
            table.add_row(*map(cell, (stage.name, stage.status, progress.duration(stage.seconds), note)))
        self.query_one("#training", Static).update(progress.training_line(last, label))
        self.plot_curve(training, label)
        self.show_artifacts(store.artifacts(self.run_id))
        self.show_servers()
        lines = tail(self.workbench.home / self.run_id / "worker.log")
        if lines != self.log_lines:
            log = self.query_one("#log", Log)
            log.clear()
            log.write_lines(lines)
            self.log_lines = lines

    def plot_curve(self, stage: str | None, label: str | None) -> None:
        logs = self.train_logs.get(stage, []) if stage else []
        if (stage, len(logs)) == (self.plotted_stage, self.plotted):
            return
        self.plotted_stage, self.plotted = stage, len(logs)
        widget = self.query_one("#curve", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        steps = [log.step for log in logs]
        keys = progress.headline_keys(stage, logs) if stage else []
        if keys:  # a reward model's or preference tuning's own numbers on the right
            names = ", ".join(progress.SHORT.get(key, key) for key in keys)
            plt.title(f"{label} loss (left) and {names} (right) by step")
        else:
            title = "training loss (left) and learning rate (right) by step"
            if stage and stage != "train":
                title = f"{label} loss (left) and learning rate (right) by step"
            qat = self.workbench.store.last_event(self.run_id, "train", "qat_on") if stage == "train" else None
            if qat:  # quantization-aware training: where the rounding was switched on
                plt.vline(qat["step"])
                title += f"; {qat['target']} rounding from step {qat['step']}"
            plt.title(title)
        plt.plot(steps, [log.loss for log in logs], label="loss", marker="braille")
        for key, marker in zip(keys, ("dot", "hd"), strict=False):
            having = [log for log in logs if key in log.metrics]
            values = [log.metrics[key] for log in having]
            plt.plot([log.step for log in having], values, label=progress.SHORT.get(key, key), yside="right",
                     marker=marker)  # fmt: skip
        rates = [log.learning_rate for log in logs]
        if not keys and all(rate is not None for rate in rates):
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

    def show_servers(self) -> None:
        from workbench.pipeline import servers

        table = self.query_one("#servers", DataTable)
        table.clear()
        for server in self.workbench.store.servers(self.run_id):
            done = servers.activity(server) if server.status == "running" else None
            speed = f"{done.tokens_per_s:.1f}" if done and done.tokens_per_s is not None else "-"
            row = (server.id, server.status, server.url, server.variant, server.backend, server.api_key or "-",
                   done.requests if done else "-", dash(done.busy if done else None),
                   dash(done.queued if done else None), speed)  # fmt: skip
            table.add_row(*map(cell, row))

    def say_serving(self, text: str) -> None:
        self.query_one("#serving", Static).update(text)

    def action_serve(self) -> None:
        """Serve the variant under the cursor in the artifacts tab, else the CPU recommendation, in a thread
        (loading the model takes a while); the Serve tab shows it."""
        tabs = self.query_one(TabbedContent)
        wanted = selected_row(self.query_one("#artifacts", DataTable)) if tabs.active == "artifacts-tab" else None
        tabs.active = "serve-tab"
        self.say_serving(f"starting a server for {wanted or 'the CPU recommendation'} ...")
        self.run_worker(lambda: self.serve(wanted), thread=True, exclusive=True, group="serve")

    def serve(self, wanted: str | None) -> None:
        from workbench.core.errors import WorkbenchError
        from workbench.core.store import Store
        from workbench.pipeline import servers

        store = Store(self.workbench.store.path)  # this thread's own connection
        home = self.workbench.home
        try:
            candidate = servers.choose(store, home, self.run_id, wanted, None if wanted else "cpu")
            server = servers.start(store, home, self.run_id, candidate)
            key = f" · API key {server.api_key}" if server.api_key else ""
            text = f"serving {server.variant} at {server.url} (model {server.model!r}){key} · x stops it"
        except Exception as exc:  # noqa: BLE001 - shown on the screen; the app goes on
            text = f"could not serve: {exc.message() if isinstance(exc, WorkbenchError) else exc}"
        finally:
            store.close()
        self.app.call_from_thread(self.say_serving, text)

    def action_stop_serving(self) -> None:
        from workbench.pipeline import servers

        running = [s for s in self.workbench.store.servers(self.run_id) if s.status == "running"]
        for server in running:
            servers.stop(self.workbench.store, server)
        self.say_serving(f"stopped {len(running)} server(s)" if running else "no server of this run is running")
        self.show_servers()

    def action_cancel(self) -> None:
        self.post_message(CancelRun(self.run_id))

    def action_compare(self) -> None:
        from workbench.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(self.run_id))

    def action_arena(self) -> None:
        from workbench.tui.screens.chat import ChatScreen

        self.app.push_screen(ChatScreen(self.run_id))
