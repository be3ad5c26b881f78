"""The TUI over the run store (headless, Pilot), and runs in detached workers that outlive it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import addition_rows, train_steps, write_recipe
from rich.text import Text

from workbench.core import progress
from workbench.core.common import tail
from workbench.core.records import Artifact, TrainLog
from workbench.core.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.run import RunScreen


def finished_run(home: Path) -> None:
    store = Store(home / "workbench.db")
    store.upsert_run("done-run", "done-run", {"name": "done-run"}, "recipes/x.yaml", os.getpid())
    for name in ("data", "train"):
        store.start_stage("done-run", name, "k")
        store.finish_stage("done-run", name, "done")
    store.start_stage("done-run", "merge", "k")
    store.finish_stage("done-run", "merge", "failed", "OSError: [Errno 28] No space left on device\nmore")
    for step in range(1, 9):
        log = {"step": step, "total_steps": 8, "loss": 1 / step, "learning_rate": 1e-3, "eta_s": 8 - step}
        store.add_event("done-run", "train", "train_log", log)
    store.replace_artifacts("done-run", "train", [Artifact("adapter", "adapter", "/x/adapter", 3 * 2**20)])
    store.set_run_status("done-run", "failed")
    (home / "done-run").mkdir(parents=True)
    (home / "done-run" / "worker.log").write_text("[data] ok\nstep 1\rstep 2\rstep 8\n[merge] FAILED\n")


def test_progress_lines_on_fixed_records(tmp_path: Path) -> None:
    finished_run(tmp_path)
    store = Store(tmp_path / "workbench.db")
    log = TrainLog(step=34, total_steps=64, loss=0.1234, learning_rate=5e-4, tokens_per_s=112.4, eta_s=150)
    running = store.stages("done-run")[:1]
    assert progress.pipeline(store.stages("done-run")) == "data✓ train✓ merge✗ export· eval· bench· report·"
    store.set_run_status("done-run", "running")  # its worker (this process) is training again
    store.start_stage("done-run", "train", "k")
    assert progress.pipeline(store.stages("done-run"), log).startswith("data✓ train 34/64 merge✗")
    assert progress.marks(store.stages("done-run"), log) == "✓…✗···· train 34/64"  # fits the Runs table
    store.finish_stage("done-run", "train", "done")
    assert progress.marks(store.stages("done-run")) == "✓✓✗···· merge failed"
    assert progress.training_line(log) == "training: step 34/64 · loss 0.1234 · lr 5.00e-04 · 112 tok/s · ETA 2m30s"
    assert tail(tmp_path / "done-run" / "worker.log")[-2:] == ["step 8", "[merge] FAILED"]
    assert running and tail(tmp_path / "missing.log") == []
    assert [progress.age(s) for s in (-1, 42, 60, 3599, 7200, 86400 * 3)] == ["0s", "42s", "1m", "59m", "2h", "3d"]
    newest = store.last_train_log("done-run", "train")
    assert newest is not None and (newest.step, newest.stage) == (8, "train")  # the newest of the 8 logged
    assert store.last_train_log("done-run", "eval") is None


def test_runs_and_run_screens_at_80x24(tmp_path: Path) -> None:
    finished_run(tmp_path)

    async def drive() -> None:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.query_one("#runs")
            assert table.row_count == 1
            assert table.get_row("done-run")[:2] == ["done-run", "failed"]
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, RunScreen)
            stages = app.screen.query_one("#stages")
            assert [stages.get_row_at(i)[:2] for i in range(stages.row_count)] == [
                ["data", "done"],
                ["train", "done"],
                ["merge", "failed"],
            ]
            note = Text.from_markup(stages.get_row_at(2)[3]).plain  # as the table draws it
            assert note == "OSError: [Errno 28] No space left on device"  # brackets shown, not read as markup
            assert "step 8/8" in str(app.screen.query_one("#training").render())
            assert app.screen.query_one("#log").lines[-1] == "[merge] FAILED"
            await pilot.press("2")  # the loss/lr curve tab
            assert app.screen.query_one("#tabs").active == "curve-tab"
            assert app.screen.plotted == 8
            assert app.screen.query_one("#curve").region.height > 10  # the plot fills the tab
            await pilot.press("4")
            assert app.screen.query_one("#artifacts").get_row("adapter") == ["train", "adapter", "3.0", "/x/adapter"]
            await pilot.press("c")  # no live worker: a warning, nothing else
            await pilot.press("escape")
            assert not isinstance(app.screen, RunScreen)

    asyncio.run(drive())


DPO = ({"rewards/margins": 0.0, "rewards/accuracies": 0.5}, {"rewards/margins": 0.61, "rewards/accuracies": 0.75},
       {"rewards/margins": 1.3456, "rewards/accuracies": 0.9375})  # fmt: skip


def tuned_run(home: Path, tune_status: str = "running") -> Store:
    """A run past its supervised training, preference tuning (DPO) with 3 of its steps logged."""
    store = Store(home / "workbench.db")
    recipe = {"name": "tuned", "tune": {"objective": "dpo"}}
    store.upsert_run("tuned", "tuned", recipe, "recipes/tuned.yaml", os.getpid())
    for name in ("data", "train"):
        store.start_stage("tuned", name, "k")
        store.finish_stage("tuned", name, "done")
    for step in range(1, 5):
        log = {"step": step, "total_steps": 4, "loss": 2 / step, "learning_rate": 1e-3, "tokens_per_s": 250.0}
        store.add_event("tuned", "train", "train_log", {**log, "metrics": {"mean_token_accuracy": 0.5}})
    store.start_stage("tuned", "tune", "k")
    for step, (loss, metrics) in enumerate(zip((0.693, 0.55, 0.412), DPO, strict=True), 1):
        log = {"step": step, "total_steps": 3, "loss": loss, "learning_rate": 5e-6, "eta_s": 3 - step}
        store.add_event("tuned", "tune", "train_log", {**log, "metrics": {**metrics, "logps/chosen": -40.0}})
    if tune_status != "running":
        store.finish_stage("tuned", "tune", tune_status)
    (home / "tuned").mkdir(parents=True)
    (home / "tuned" / "worker.log").write_text("[tune] dpo\n")
    return store


def test_headline_metrics_of_each_objective() -> None:
    def logs(*keys: str) -> list[TrainLog]:
        return [TrainLog(step=1, total_steps=1, loss=1.0, metrics=dict.fromkeys(keys, 0.1))]

    dpo = logs("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen")
    grpo = logs("reward", "reward_std", "kl", "rewards/exact_match/mean", "completions/mean_length")
    kto = logs("kl", "rewards/chosen", "rewards/rejected", "rewards/margins")
    reward_model = logs("min_reward", "mean_reward", "max_reward", "accuracy", "margin")
    assert progress.headline_keys("tune", dpo) == ["rewards/margins", "rewards/accuracies"]
    assert progress.headline_keys("tune", grpo) == ["reward", "kl"]
    assert progress.headline_keys("tune", kto) == ["rewards/margins", "kl"]  # KTO logs no accuracies
    assert progress.headline_keys("reward", reward_model) == ["accuracy", "margin"]
    assert progress.headline_keys("reward", logs("mean_reward")) == ["mean_reward"]
    assert progress.headline_keys("train", logs("mean_token_accuracy", "entropy")) == []  # loss and lr only
    assert progress.headline_keys("tune", [TrainLog(step=1, total_steps=1, loss=1.0)]) == []  # no metrics logged
    assert [progress.figure(v) for v in (0, 0.5, 1.3456, 0.0012, -0.25)] == ["0.00", "0.50", "1.35", "0.0012", "-0.25"]


def test_progress_follows_the_training_stage_running(tmp_path: Path) -> None:
    store = tuned_run(tmp_path)
    stages = store.stages("tuned")
    logs = {name: store.train_logs("tuned", stage=name) for name in ("train", "tune")}
    assert progress.training_stage(stages, logs) == "tune"
    assert progress.training_stage(stages, {"train": logs["train"]}) == "tune"  # running, nothing logged yet
    assert progress.training_stage(stages[:2], logs) == "tune"  # none running: the last that logged
    assert progress.training_stage(stages[:2], {"train": logs["train"]}) == "train"
    assert progress.training_stage(stages[:2], {}) is None
    label = progress.stage_label("tune", progress.run_recipe(store.run("tuned").recipe_json))
    assert label == "tune (dpo)" and progress.stage_label("reward", {"tune": {"objective": "dpo"}}) == "reward"
    assert progress.run_recipe("not json") == {} and progress.stage_label("tune", {}) == "tune"
    assert progress.training_line(logs["tune"][-1], label) == (
        "tune (dpo) step 3/3 · loss 0.4120 · margin 1.35 · acc 0.94 · lr 5.00e-06 · ETA 0s"
    )
    assert progress.training_line(None, label) == "tune (dpo): no steps logged yet"
    assert progress.training_line(logs["train"][-1], "train").startswith("training: step 4/4 · loss 0.5000 · lr")
    assert progress.pipeline(stages, logs["tune"][-1]) == "data✓ train✓ tune 3/3 merge· export· eval· bench· report·"


def test_run_screen_follows_preference_tuning_with_its_metrics(tmp_path: Path) -> None:
    store = tuned_run(tmp_path)

    async def drive() -> None:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("enter")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, RunScreen)
            assert sorted(screen.train_logs) == ["train", "tune"]
            assert [len(screen.train_logs[name]) for name in ("train", "tune")] == [4, 3]
            line = str(screen.query_one("#training").render())
            assert line.startswith("tune (dpo) step 3/3 · loss 0.4120 · margin 1.35 · acc 0.94")
            await pilot.press("2")
            await pilot.pause()
            assert (screen.plotted_stage, screen.plotted) == ("tune", 3)
            drawn = screen.query_one("#curve").render().plain
            assert "tune (dpo) loss (left) and margin, acc (right)" in drawn
            store.add_event("tuned", "tune", "train_log", {"step": 4, "total_steps": 4, "loss": 0.3,
                            "metrics": {"rewards/margins": 2.5, "rewards/accuracies": 1.0}})  # fmt: skip
            store.finish_stage("tuned", "tune", "done")
            screen.refresh_run()
            assert "step 4/4 · loss 0.3000 · margin 2.50 · acc 1.00" in str(screen.query_one("#training").render())
            assert (screen.plotted_stage, screen.plotted) == ("tune", 4)

    asyncio.run(drive())


def test_show_prints_a_line_per_training_stage(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from workbench.cli import main

    store = tuned_run(tmp_path, "done")
    for step, accuracy, margin in ((1, 0.6, 0.1), (2, 0.9, 0.8)):
        metrics = {"accuracy": accuracy, "margin": margin, "mean_reward": 0.2}
        store.add_event("tuned", "reward", "train_log", {"step": step, "total_steps": 2, "loss": 1 - 0.35 * step,
                        "metrics": metrics})  # fmt: skip
    store.set_run_status("tuned", "done")
    assert main(["--home", str(tmp_path), "show", "tuned"]) == 0
    lines = capsys.readouterr().out.splitlines()
    trained = lines.index("training: step 4/4, loss 2.0000 -> 0.5000, 250.0 tokens/s")
    assert lines[trained + 1] == "reward: step 2/2, loss 0.6500 -> 0.3000, accuracy 0.60 -> 0.90, margin 0.10 -> 0.80"
    assert (
        "tune (dpo): step 3/3, loss 0.6930 -> 0.4120, rewards/margins 0.00 -> 1.35, rewards/accuracies 0.50 -> 0.94"
        in lines
    )


async def until(pilot, condition, seconds: float = 60) -> None:  # noqa: ANN001
    """Let the app run until `condition()` holds (answers and pulls come from other processes)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the app"
        await pilot.pause(0.1)


def _wait_for(condition, seconds: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the worker"
        time.sleep(0.1)


def test_cancel_without_a_live_worker_is_a_clear_error(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from workbench.cli import main

    finished_run(tmp_path)
    assert main(["--home", str(tmp_path), "cancel", "done-run"]) == 2
    assert "no live worker" in capsys.readouterr().err


def test_compare_screen_shows_the_recommendation_sorts_and_draws_pareto_charts(tmp_path: Path) -> None:
    from test_report import KLDS, MERGED, SCORES, fill_store, metrics

    from workbench.tui.screens.compare import CompareScreen

    store = Store(tmp_path / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    store.replace_metrics("lora", metrics(SCORES) + KLDS)

    async def drive() -> None:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("enter")  # Runs -> Run
            await pilot.press("v")  # Run -> Compare
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, CompareScreen)
            assert "CPU: Q8_0.gguf" in str(screen.query_one("#recommendation").render())
            grid = screen.query_one("#comparison")
            assert grid.row_count == 8

            def first() -> str:
                return grid.coordinate_to_cell_key((0, 0)).row_key.value

            for _ in range(screen.headers.index("size MiB") + 1):
                await pilot.press("s")
            assert first() == f"{MERGED}-Q4_K_M.gguf"  # smallest first; the base row (no size) last
            await pilot.press("r")
            assert first() == MERGED  # largest first; rows without a size stay last

            assert set(screen.charts) == {"size", "fidelity", "cpu"}  # no GPU measurements: no GPU chart
            size = screen.charts["size"]
            assert [p.label for p in size.front] == [p.label for p in size.points if p.on_front]
            assert size.front[0].label == "Q4_K_M.gguf"  # the smallest variant always starts the front
            await pilot.press("2")
            await pilot.pause()
            drawn = screen.query_one("#size-chart").render().plain
            assert "Q4_K_M" in drawn and "Pareto front" in drawn and "size (MiB)" in drawn
            fidelity = screen.charts["fidelity"]  # the size–fidelity frontier: none both smaller and closer
            for point in fidelity.points:
                dominated = any(o.x <= point.x and o.y <= point.y and (o.x, o.y) != (point.x, point.y)
                                for o in fidelity.points)  # fmt: skip
                assert point.on_front == (not dominated)
            await pilot.press("3")
            await pilot.pause()
            assert "KLD to the merged model" in screen.query_one("#fidelity-chart").render().plain
            await pilot.press("5")
            assert screen.query_one("#compare-tabs").active == "fidelity-tab"  # its tab is hidden: nothing happens

    asyncio.run(drive())


def test_marked_runs_open_side_by_side(tmp_path: Path) -> None:
    from test_report import MERGED, SCORES, fill_store

    from workbench.tui.screens.compare_runs import CompareRunsScreen

    store = Store(tmp_path / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    fill_store(store, "qlora", {**SCORES, f"{MERGED}-Q4_K_M.gguf": 0.88}, "qlora")

    async def drive() -> None:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("space", "down", "space")
            assert app.screen.marked == ["qlora", "lora"]  # newest run first in the list
            assert app.screen.query_one("#runs").get_row("lora")[0] == "* lora"
            await pilot.press("v")
            screen = app.screen
            assert isinstance(screen, CompareRunsScreen) and screen.run_ids == ["qlora", "lora"]
            grid = screen.query_one("#runs-comparison")
            assert grid.get_row("Q4_K_M.gguf") == ["Q4_K_M.gguf", "0.880 (-0.020)", "0.850 (-0.050)", "qlora"]
            assert [c.label.plain for c in grid.columns.values()][1:3] == ["qlora (qlora)", "lora (lora)"]

    asyncio.run(drive())


def test_a_run_started_from_the_tui_outlives_it_and_is_cancelled_from_it(tmp_path: Path, tiny_model: Path) -> None:
    """New run validates like the CLI and launches; the app closes, training goes on; the reopened app
    shows the same run live and cancels it."""
    from textual.widgets import Input, TextArea

    from workbench.cli import main

    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(72)))
    recipe = write_recipe(tmp_path, tiny_model, data, train={"max_steps": 3000, "checkpoint_every": 5})
    home = tmp_path / "runs"

    async def launch() -> None:
        app = WorkbenchApp(home)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("n")
            screen = app.screen
            screen.query_one("#recipe", Input).value = str(recipe)
            screen.query_one("#overrides", TextArea).text = "train.max_step=10\n"
            await pilot.press("ctrl+r")
            problems = str(screen.query_one("#problems").render())
            assert "train.max_step" in problems and "max_steps" in problems  # did-you-mean, nothing launched
            assert not (home / "tiny").exists()
            screen.query_one("#overrides", TextArea).text = "train.max_steps=2000\n"
            await pilot.press("f5")  # validate only: says what the overrides change
            assert "train.max_steps: 3000 → 2000" in str(screen.query_one("#problems").render())
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert isinstance(app.screen, RunScreen) and app.screen.run_id == "tiny"
            _wait_for(lambda: (home / "workbench.db").exists() and len(train_steps(home)) >= 2)
            await pilot.pause(1.2)  # one refresh later the Run screen shows the live training
            assert "step" in str(app.screen.query_one("#training").render())

    async def reopen_and_cancel() -> str:
        app = WorkbenchApp(home)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            row = app.screen.query_one("#runs").get_row("tiny")
            await pilot.press("c")
            return row[1] + " " + row[3]

    def live() -> bool:
        return Store.live_status(Store(home / "workbench.db").run("tiny")) == "running"

    try:
        asyncio.run(launch())  # the app has closed
        pid = Store(home / "workbench.db").run("tiny").pid
        assert os.getsid(pid) != os.getsid(0)  # its own session: a closing terminal does not reach it
        assert main(["--home", str(home), "run", str(recipe)]) == 2  # one worker per run: a second is refused
        after_close = len(train_steps(home))
        _wait_for(lambda: len(train_steps(home)) >= after_close + 3)  # no app; training goes on
        seen = asyncio.run(reopen_and_cancel())
        assert seen.startswith("running ") and " train " in seen  # the same run, live
        _wait_for(lambda: not live(), 60)
    finally:
        if (home / "workbench.db").exists() and live():
            os.killpg(Store(home / "workbench.db").run("tiny").pid, 9)
    store = Store(home / "workbench.db")
    assert store.recipe(store.run("tiny"))["train"]["max_steps"] == 2000  # the override reached the run
    assert store.run("tiny").status == "interrupted"
    assert store.stage("tiny", "train").status == "interrupted"
    assert list((home / "tiny" / ".work").glob("train-*/checkpoints/checkpoint-*"))  # what the next run resumes from
    assert "interrupted" in (home / "tiny" / "worker.log").read_text()


def test_chat_arena_answers_side_by_side_and_a_broken_variant_fails_alone(
    tmp_path: Path, tiny_ggufs: dict[str, Path]
) -> None:
    from test_chat import CHAT, arena_run, llama_cpp_reference

    from workbench.pipeline import candidates as chat
    from workbench.tui.screens.chat import Answer, ChatScreen

    arena_run(
        tmp_path,
        [
            {"name": "t-Q4_0.gguf", "format": "gguf", "path": str(tmp_path / "missing.gguf"), "status": "done"},
            {"name": "t-F16.gguf", "format": "gguf", "path": str(tiny_ggufs["f16"]), "status": "done"},
            {"name": "t-NF4", "format": "nf4", "path": "/n", "status": "failed"},
        ],
    )

    async def drive() -> list[Answer]:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("enter", "a")  # Runs -> Run -> Chat arena
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            assert "2 variants" in str(screen.query_one("#chat-info").render())  # the failed export cannot answer
            assert "'You are a calculator.'" in str(screen.query_one("#chat-info").render())
            await pilot.press(*CHAT[-1]["content"], "enter")
            panels = list(screen.query(Answer))
            await until(pilot, lambda: all(p.border_subtitle not in ("waiting", "generating") for p in panels))
            widths = [p.region.width for p in panels]
            assert widths[0] == widths[1] == 40  # side by side, sharing the 80 columns
            return panels

    broken, good = asyncio.run(drive())  # the broken one asked first: the next still answers
    assert good.border_title == "t-F16.gguf" and (
        good.border_subtitle.endswith("tok/s") or good.border_subtitle == "done"
    )
    assert good.text == llama_cpp_reference(tiny_ggufs["f16"], chat.MAX_TOKENS)
    assert broken.border_subtitle == "FAILED" and not broken.text


def test_models_screen_lists_registry_and_local_folders_and_reports_a_failed_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.tui.screens.models import ModelsScreen

    monkeypatch.setenv("WORKBENCH_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub pull cannot work here: its error must show
    for name in ("qwen2.5-0.5b-instruct", "my-checkpoint"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text("{}")
    (tmp_path / "models" / "my-checkpoint" / "model.safetensors").write_bytes(b"\0" * 3 * 2**20)

    async def drive() -> None:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("m")
            screen = app.screen
            assert isinstance(screen, ModelsScreen)
            table = screen.query_one("#models")
            assert table.get_row("smollm2-135m-instruct")[:3] == ["smollm2-135m-instruct (default)", "135M", "no"]
            assert table.get_row("qwen2.5-0.5b-instruct")[2] == "yes"
            assert table.get_row("my-checkpoint")[2:4] == ["yes", "3 MiB"]  # not in the registry, still listed
            info = screen.query_one("#model-info")
            assert "base_model: smollm2-135m-instruct" in str(info.render())
            await pilot.press("down", "p")  # smollm2-360m-instruct: from the hub
            status = screen.query_one("#pull-status")
            assert "pulling smollm2-360m-instruct" in str(status.render())
            await until(pilot, lambda: "failed" in str(status.render()))
            assert "pulling smollm2-360m-instruct failed: error: smollm2-360m-instruct: could not download" in str(
                status.render()
            )
            assert "base_model: smollm2-360m-instruct" in str(info.render())  # the cursor stayed
            assert table.get_row("smollm2-360m-instruct")[2] == "no"

    asyncio.run(drive())


def test_chat_arena_stop_kills_the_model_process(tmp_path: Path, tiny_llama_256: Path) -> None:
    from test_chat import arena_run

    from workbench.tui.screens.chat import Answer, ChatScreen

    arena_run(tmp_path, [{"name": "t", "format": "hf", "path": str(tiny_llama_256), "status": "done"}])

    async def drive() -> tuple[int | None, str]:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = ChatScreen("arena")
            await app.push_screen(screen)
            assert screen.query_one("#variants").selected == []  # an hf variant is not picked by default
            screen.query_one("#variants").focus()
            await pilot.press("space")
            assert screen.query_one("#variants").selected == [0]
            screen.query_one("#prompt").focus()
            await pilot.press(*"hello", "enter")
            await until(pilot, lambda: screen.running is not None)
            process = screen.running.process
            await pilot.press("f2")  # while torch is still loading
            process.wait(timeout=10)
            return process.returncode, screen.query_one(Answer).border_subtitle

    returncode, subtitle = asyncio.run(drive())
    assert returncode == -signal.SIGTERM and subtitle == "stopped"


def test_the_app_never_imports_torch_transformers_or_numpy() -> None:
    import subprocess
    import sys

    screens = ", ".join(["runs", "run", "compare", "compare_runs", "chat", "models", "new_run"])
    code = (
        "import sys, workbench.cli, workbench.pipeline.candidates, workbench.tui.app, workbench.tui.web\n"
        f"from workbench.tui.screens import {screens}\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_compare_shows_what_a_qat_run_recovered_against_its_twin(tmp_path: Path) -> None:
    from test_report import MERGED, SCORES, fill_store

    from workbench.tui.screens.compare_runs import CompareRunsScreen

    store = Store(tmp_path / "workbench.db")
    fill_store(store, "plain", SCORES, "lora")
    fill_store(store, "qat", {**SCORES, f"{MERGED}-Q8_0.gguf": 0.895}, "lora")
    recipe = {"name": "qat", "train": {"method": "lora", "qat": {"target": "q8_0"}}, "eval": {"tasks": ["heldout"]}}
    store.upsert_run("qat", "qat", recipe, None, 1)

    async def drive() -> None:
        app = WorkbenchApp(tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            app.push_screen(CompareRunsScreen(["qat", "plain"]))
            await pilot.pause()
            table = app.screen.query_one("#runs-recovered")
            assert table.display and table.row_count == 1
            row = table.get_row_at(0)
            assert row[:3] == ["qat", "plain", "Q8_0.gguf"] and row[5] == "50%"  # (0.010 - 0.005) / 0.010
            assert "recovered" in str(app.screen.query_one("#runs-legend").render())

    asyncio.run(drive())
