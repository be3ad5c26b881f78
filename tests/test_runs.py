"""Runs are accounted for: a dead worker reads `crashed` (also when its pid was reused), one worker per run,
`cancel` signals only the process it started, the store's schema version, unfinished work never thrown
away, and every refusal printed as one message."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import addition_rows, train_steps, write_recipe
from transformers import TrainerCallback

from workbench.cli import main
from workbench.core.recipe import load_recipe
from workbench.core.records import ItemScores, Metric, RunRecord, TrainLog
from workbench.core.store import BASELINE, SCHEMA_VERSION, Store, StoreError
from workbench.pipeline import launcher
from workbench.pipeline.runner import run_recipe
from workbench.pipeline.stages.base import StageInterrupted

CLI = [sys.executable, "-m", "workbench.cli"]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(addition_rows(72)))
    return path


def wait_for(condition, seconds: float = 120) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_two_detached_starts_of_one_run_one_is_refused(tmp_path: Path, tiny_model: Path, data_file: Path) -> None:
    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 500, "checkpoint_every": 100})
    home = tmp_path / "runs"
    command = [*CLI, "--home", str(home), "run", str(path), "--detach"]
    starts = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), *p.communicate()) for p in starts]
    try:
        assert sorted(code for code, _, _ in results) == [0, 2]
        refused = next(err for code, _, err in results if code == 2)
        assert "run tiny is already running (pid " in refused
        store = Store(home / "workbench.db")
        assert wait_for(lambda: store.run("tiny") is not None and store.live_status(store.run("tiny")) == "running")
        assert main(["--home", str(home), "run", str(path)]) == 2  # a foreground start is refused too
    finally:
        store = Store(home / "workbench.db")
        pid = launcher.live_worker(store, "tiny")
        assert launcher.cancel(store, "tiny")
    stopped = wait_for(lambda: store.live_status(store.run("tiny")) == "interrupted", 60)
    assert stopped, (pid, store.live_status(store.run("tiny")), store.stages("tiny"), store.log_tail("tiny", 30))


def test_cancel_never_signals_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        store = Store(tmp_path / "workbench.db")
        store.upsert_run("r", "r", {"name": "r"}, None, stranger.pid)
        store.db.execute("UPDATE runs SET pid_started = pid_started - 1000 WHERE id='r'")  # an earlier process
        assert store.live_status(store.run("r")) == "crashed"
        assert not launcher.cancel(store, "r")
        time.sleep(0.2)
        assert stranger.poll() is None  # untouched

        store.upsert_run("r", "r", {"name": "r"}, None, stranger.pid)  # now it really is the worker
        assert store.live_status(store.run("r")) == "running" and launcher.cancel(store, "r")
        assert stranger.wait(5) == -15
    finally:
        stranger.kill()


def test_an_old_store_is_migrated_and_a_newer_one_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "workbench.db"
    old = sqlite3.connect(path)  # a store as the first versions wrote it: no user_version, no pid_started
    old.executescript(BASELINE)
    old.execute(
        "INSERT INTO runs (id, name, recipe, status, created, updated, pid) VALUES ('a', 'a', '{}', 'done', 1, 2, 1)"
    )
    old.commit()
    old.close()
    store = Store(path)
    assert store.version() == SCHEMA_VERSION == 5
    assert store.run("a").status == "done" and store.run("a").pid_started is None
    assert store.servers() == []  # version 3's table is there
    # version 4: lm-eval's direction of each metric and per-item values
    store.replace_metrics("a", [Metric("m", "reference", "t", "acc", 0.5, None, True)],
                          [ItemScores("m", "t", "acc", {0: 1.0, 7: 0.0})])  # fmt: skip
    assert store.metrics("a")[0].higher_is_better is True
    assert store.items("a") == [ItemScores("m", "t", "acc", {0: 1.0, 7: 0.0})]
    store.upsert_run("b", "b", {"name": "b"}, None, os.getpid())
    assert store.live_status(store.run("b")) == "running"
    store.close()

    newer = sqlite3.connect(path)
    newer.execute("PRAGMA user_version=99")
    newer.close()
    with pytest.raises(StoreError, match=r"written by a newer workbench \(store version 99; this one reads up to 5\)"):
        Store(path)
    assert main(["--home", str(tmp_path), "runs"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "newer workbench" in err and "Traceback" not in err


class InterruptAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.step:
            raise KeyboardInterrupt  # as Ctrl-C does, between two steps


def interrupted_training(path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]) -> None:
    import trl

    original = trl.SFTTrainer.__init__

    def with_interrupt(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), InterruptAt(4)]
        original(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "__init__", with_interrupt)
    with pytest.raises((KeyboardInterrupt, StageInterrupted)):
        run_recipe(load_recipe(path, overrides), home, stages=["train"])
    monkeypatch.setattr(trl.SFTTrainer, "__init__", original)


def test_unfinished_training_continues_when_only_its_length_changed(
    tmp_path: Path, tiny_model: Path, data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 12, "checkpoint_every": 2})
    home = tmp_path / "runs"
    interrupted_training(path, home, monkeypatch, [])
    run_recipe(load_recipe(path, ["train.max_steps=14"]), home, stages=["train"])
    messages = [e["text"] for e in Store(home / "workbench.db").events("tiny", stage="train", kind="message")]
    assert any(m.startswith("continuing the unfinished work") and "train.max_steps: 12 -> 14" in m for m in messages)
    assert "resuming from checkpoint-4" in messages
    assert train_steps(home) == [1, 2, 3, 4, *range(5, 15)]  # continued, not started again


def test_unfinished_training_of_another_configuration_is_kept_aside(
    tmp_path: Path, tiny_model: Path, data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 12, "checkpoint_every": 2})
    home = tmp_path / "runs"
    interrupted_training(path, home, monkeypatch, [])
    work = list((home / "tiny" / ".work").glob("train-*"))
    assert len(work) == 1 and (work[0] / "checkpoints" / "checkpoint-4").is_dir()

    run_recipe(load_recipe(path, ["train.learning_rate=1e-3"]), home, stages=["train"])  # cannot continue that
    kept = list((home / "tiny" / ".work" / "kept").glob("train-*"))
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "checkpoint-4").is_dir()  # kept, not deleted
    messages = [e["text"] for e in Store(home / "workbench.db").events("tiny", stage="train", kind="message")]
    said = next(m for m in messages if "cannot continue" in m)
    assert "train.learning_rate: 0.005 -> 0.001" in said and str(kept[0]) in said
    assert train_steps(home)[-12:] == list(range(1, 13))  # trained from the start


def test_a_tiny_dataset_is_refused_in_the_data_stage_with_the_numbers(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(3)))
    path = write_recipe(tmp_path, tiny_model, data, data={"held_out": 0.1})
    home = tmp_path / "runs"
    assert main(["--home", str(home), "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.held_out is 0.1: of 3 usable rows none would be held out, but eval.tasks has heldout" in err
    assert "at least 6 rows give data.held_out 0.1 one row" in err
    assert Store(home / "workbench.db").stage("tiny", "data").status == "failed"
    assert not (home / "tiny" / "train").exists()

    path = write_recipe(
        tmp_path, tiny_model, data, data={"held_out": 0.1}, eval={"tasks": ["general"], "fidelity_rows": 0}
    )
    assert main(["--home", str(home), "run", str(path), "--stages", "data"]) == 0  # nothing evaluates on them


def test_a_preflight_refusal_is_one_message_not_a_traceback(
    tmp_path: Path,
    tiny_llama_256: Path,
    data_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from workbench.core import preflight

    path = write_recipe(tmp_path, tiny_llama_256, data_file, data={"max_length": 128}, train={"max_steps": 1})
    home = tmp_path / "runs"
    assert main(["--home", str(home), "run", str(path), "--stages", "train"]) == 0
    monkeypatch.setattr(preflight, "available_memory", lambda: 10_000_000)
    capsys.readouterr()
    assert main(["--home", str(home), "run", str(path), "--stages", "merge"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: merge refused before starting: needs ~") and "0.01 GB available" in err
    assert "Traceback" not in err


def test_a_checkpoint_past_a_shorter_length_is_kept_aside_not_resumed(
    tmp_path: Path, tiny_model: Path, data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 12, "checkpoint_every": 2})
    home = tmp_path / "runs"
    interrupted_training(path, home, monkeypatch, [])  # checkpoint-4
    run_recipe(load_recipe(path, ["train.max_steps=3"]), home, stages=["train"])
    messages = [e["text"] for e in Store(home / "workbench.db").events("tiny", stage="train", kind="message")]
    assert any(m.startswith("checkpoint-4 is past the 3 steps asked for; training from the start") for m in messages)
    assert train_steps(home)[-3:] == [1, 2, 3]  # a 3-step adapter, not the 4-step one under a 3-step key
    assert list((home / "tiny" / ".work" / "kept").glob("checkpoints-*/checkpoint-4"))


def test_a_stage_left_running_by_a_gone_worker_never_reads_running(tmp_path: Path) -> None:
    store = Store(tmp_path / "workbench.db")
    store.upsert_run("r", "r", {"name": "r"}, None, os.getpid())
    store.start_stage("r", "train", "key")  # the worker died here; a later run did only `--stages data`
    store.set_run_status("r", "done")
    (train,) = store.stages("r")
    assert train.status == "crashed" and "the next run redoes it" in train.error


def test_a_run_reads_as_a_record_and_a_broken_recipe_hides_no_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "workbench.db")
    store.upsert_run("old", "old", {"name": "old", "train": {"epochs": 2}}, "recipes/old.yaml", os.getpid())
    store.upsert_run("new", "new", {"name": "new"}, None, os.getpid())
    store.db.execute("UPDATE runs SET created = created + 1 WHERE id='new'")
    run = store.run("old")
    assert isinstance(run, RunRecord) and (run.id, run.name, run.recipe_path, run.status) == (
        "old", "old", "recipes/old.yaml", "running"
    )  # fmt: skip
    assert run.pid == os.getpid() and run.pid_started is not None and run.created <= run.updated
    assert store.recipe(run) == {"name": "old", "train": {"epochs": 2}} and store.run("nope") is None
    assert [r.id for r in store.runs()] == ["new", "old"]  # newest first
    store.db.execute("UPDATE runs SET recipe='{broken' WHERE id='old'")
    assert [r.id for r in store.runs()] == ["new", "old"]  # still listed; its recipe fails where it is read
    with pytest.raises(StoreError, match="table runs, run 'old', column recipe: not valid JSON"):
        store.recipe(store.run("old"))


def test_training_logs_of_old_and_new_stores_read_as_records(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from workbench.train.callbacks import StoreCallback

    store = Store(tmp_path / "workbench.db")
    store.upsert_run("r", "r", {"name": "r"}, None, os.getpid())

    class Recorder:
        def event(self, kind: str, **data: object) -> None:
            store.add_event("r", "tune", kind, data)

        def say(self, message: str) -> None: ...

    store.add_event("r", "train", "train_log", {"step": 1, "total_steps": 2, "loss": 2.5, "eta_s": 4})  # no metrics
    store.add_event("r", "train", "train_log", {"step": 2, "total_steps": 2, "loss": 1.5, "note": "kept"})
    callback = StoreCallback(Recorder(), total_steps=8)
    state = SimpleNamespace(global_step=0, epoch=0.0, num_input_tokens_seen=0, is_world_process_zero=True)
    callback.on_train_begin(None, state, None)
    state.global_step = 3
    logs = {"loss": 0.7, "learning_rate": 1e-4, "grad_norm": 0.5, "epoch": 0.4, "rewards/margins": 0.25, "flag": True}
    callback.on_log(None, state, None, logs)

    [written] = [event for event in store.events("r", stage="tune") if event["kind"] == "train_log"]
    assert set(written) - {"id", "stage", "ts", "kind"} == set(TrainLog.STORED)  # the keys stores always held
    first, second, tuned = store.train_logs("r")
    assert (first.step, first.loss, first.eta_s, first.metrics, first.extra) == (1, 2.5, 4.0, {}, {})
    assert second.extra == {"note": "kept"} and second.learning_rate is None and second.id > first.id
    assert (tuned.stage, tuned.step, tuned.total_steps, tuned.epoch) == ("tune", 3, 8, 0.4)
    assert tuned.metrics == {"rewards/margins": 0.25} and tuned.grad_norm == 0.5
    assert tuned.to_dict() == {k: v for k, v in written.items() if k not in {"id", "stage", "ts", "kind"}}
    assert second.to_dict()["note"] == "kept"  # written back as it came
    assert [log.step for log in store.train_logs("r", stage="train", after=first.id)] == [2]
    assert store.last_train_log("r", "tune") == tuned and store.last_train_log("r", "reward") is None

    store.add_event("r", "train", "train_log", {"step": "many", "total_steps": 2, "loss": 1.0})
    with pytest.raises(StoreError, match=r"table events, run 'r', stage 'train', event \d+, column data: step"):
        store.train_logs("r", stage="train")
