"""Crash consistency of the run store, tested the way SQLite tests itself, and a full disk or a memory limit.

Kill points: a tiny run (data, train, merge) is started with a fault hook (tests/faults, `store:K:kill`)
that sends its worker SIGKILL just before its K-th write to the run store. Right after each kill no command
reads a false state (a stage `done` without its folder, anything `running` with no live worker), and the
run started again finishes with what an uninterrupted run makes: the same stage statuses, artifact rows,
data splits, adapter and merged weights (bit for bit: resumed training restores the RNG and data order),
and per-step losses. By default a deterministic spread of kill points; WORKBENCH_CRASH_ALL=1 tries every
write of the run. Each test prints its figures (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from conftest import addition_rows, write_recipe

from workbench import workers
from workbench.cli import main
from workbench.core.recipe import load_recipe
from workbench.core.store import Store
from workbench.pipeline.runner import run_recipe
from workbench.workers.selftest import SelfTestJob

STAGES = "data,train,merge"
FAULTS = Path(__file__).with_name("faults")
SPREAD = 6  # kill points tried by default, spread evenly over the run's writes
TIMING = {"train_runtime_s", "tokens_per_s"}  # in the train stage's summary and artifact: wall-clock figures
MEMORY_LIMIT_MB = 600  # below what importing torch maps, above what a bare worker needs


def faulted(**variables: str) -> dict[str, str]:
    """This environment with the fault hook loaded in every Python process started with it."""
    path = os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, **variables}


def start_run(home: Path, recipe: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`workbench run` as its own process (the one the hook counts writes in and kills)."""
    command = [sys.executable, "-m", "workbench.cli", "--home", str(home), "run", str(recipe), "--stages", STAGES]
    return subprocess.run(command, env=faulted(**variables), capture_output=True, text=True, timeout=600)


def run_again(home: Path, recipe: Path) -> None:
    assert main(["--home", str(home), "run", str(recipe), "--stages", STAGES]) == 0


def results(home: Path) -> dict[str, Any]:
    """What a finished run made, minus wall-clock figures."""
    store = Store(home / "workbench.db")
    try:
        run = store.run("tiny")
        artifacts = []
        for item in store.artifacts("tiny"):
            row = asdict(item)
            row["path"] = str(Path(row["path"]).relative_to(home))
            row["meta"] = {k: v for k, v in row["meta"].items() if k not in TIMING}
            row.pop("size")  # the adapter folder's size counts its timing figures' digits
            artifacts.append(row)
        return {
            "run": store.live_status(run),
            "stages": {stage.name: stage.status for stage in store.stages("tiny")},
            "artifacts": artifacts,
            "variants": [v.to_dict() for v in store.variants("tiny")],
            "metrics": store.metrics("tiny"),
            "files": files(home / "tiny"),
        }
    finally:
        store.close()


def files(run_dir: Path) -> dict[str, Any]:
    """The stages' files: bytes, except the training records that carry timings or set orders."""
    found: dict[str, Any] = {}
    for path in sorted(p for name in STAGES.split(",") for p in (run_dir / name).rglob("*") if p.is_file()):
        name = str(path.relative_to(run_dir))
        if path.name == "train_summary.json":
            found[name] = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}
        elif path.name == "adapter_config.json":  # target_modules is a set: its order follows the hash seed
            config = json.loads(path.read_text())
            found[name] = {**config, "target_modules": sorted(config["target_modules"])}
        elif path.name == "log_history.json":  # a resumed Trainer counts its own session's tokens and time
            keep = ("step", "loss", "grad_norm", "learning_rate", "epoch")
            found[name] = [{k: e.get(k) for k in keep} for e in json.loads(path.read_text()) if "loss" in e]
        else:
            found[name] = path.read_bytes()
    return found


def leftovers(run_dir: Path) -> list[str]:
    """Temporary folders of a stage (.tmp-*, .old-*) still there after a finished run."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".tmp-", ".old-")))


def assert_nothing_false(home: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    """After a kill: the store, `workbench runs` and `workbench show` all say crashed, never running, and
    every stage they say is done has its folder and its artifacts."""
    store = Store(home / "workbench.db")
    try:
        run = store.run("tiny")
        capsys.readouterr()
        assert main(["--home", str(home), "runs"]) == 0, where
        listed = capsys.readouterr().out
        if run is None:  # killed before the run was recorded
            assert "no runs yet" in listed, where
            return
        assert store.live_status(run) == "crashed", where
        line = next(line for line in listed.splitlines() if line.startswith("tiny "))
        assert line.split()[1] == "crashed" and ":running" not in line, (where, line)
        assert main(["--home", str(home), "show", "tiny"]) == 0, where
        shown = capsys.readouterr().out
        assert "status crashed" in shown and " running " not in shown, (where, shown)
        stored = {item.stage for item in store.artifacts("tiny")}
        for stage in store.stages("tiny"):
            assert stage.status in ("done", "crashed"), (where, stage)
            if stage.status == "done":
                assert (home / "tiny" / stage.name).is_dir() and stage.name in stored, (where, stage)
    finally:
        store.close()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("crash")
    data = folder / "qa.json"
    data.write_text(json.dumps(addition_rows(48)))
    return write_recipe(folder, tiny_model, data, train={"max_steps": 4, "checkpoint_every": 2})


@pytest.fixture(scope="module")
def baseline(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run: its results and its store writes, one line each (number, statement)."""
    home, tally = tmp_path_factory.mktemp("baseline"), recipe.parent / "writes.txt"
    done = start_run(home, recipe, WORKBENCH_STORE_WRITES=str(tally))
    assert done.returncode == 0, done.stderr[-3000:]
    writes = [line.split(" ", 2)[1:] for line in tally.read_text().splitlines()]
    assert [int(number) for number, _ in writes] == list(range(1, len(writes) + 1))  # one process wrote
    return {"results": results(home), "writes": [statement for _, statement in writes]}


def kill_points(count: int) -> list[int]:
    if os.environ.get("WORKBENCH_CRASH_ALL"):
        return list(range(1, count + 1))
    return sorted({count * index // SPREAD for index in range(1, SPREAD + 1)})


def test_a_run_killed_at_a_store_write_reads_crashed_and_finishes_the_same(
    recipe: Path, baseline: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected, writes = baseline["results"], baseline["writes"]
    assert expected["stages"] == {"data": "done", "train": "done", "merge": "done"} and expected["run"] == "done"
    points = kill_points(len(writes))
    began = time.monotonic()
    for k in points:
        home, where = tmp_path / f"kill-{k}", f"killed before write {k} of {len(writes)} ({writes[k - 1]})"
        killed = start_run(home, recipe, WORKBENCH_FAULT=f"store:{k}:kill")
        assert killed.returncode == -9, (where, killed.stderr[-3000:])
        assert_nothing_false(home, capsys, where)
        run_again(home, recipe)
        assert results(home) == expected, where
        assert leftovers(home / "tiny") == [], where
    with capsys.disabled():
        took = time.monotonic() - began
        print(f"\ncrash consistency: {len(points)} of {len(writes)} kill points tried in {took:.0f}s")


def test_a_full_disk_at_a_store_write_is_named_and_the_run_finishes_after(
    recipe: Path, baseline: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writes = baseline["writes"]
    training = [k for k, statement in enumerate(writes, 1) if statement.startswith("INSERT INTO stages")][1]
    home = tmp_path / "full"
    # from the train stage's first event on, every write fails as SQLite fails on a full disk
    failed = start_run(home, recipe, WORKBENCH_FAULT=f"store:{training + 1}:enospc")
    assert failed.returncode == 3, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    message = failed.stderr.strip().splitlines()[-1]
    assert message.startswith("error: cannot write the run store") and "no space left on device" in message
    assert_nothing_false(home, capsys, "disk full in training")
    store = Store(home / "workbench.db")
    assert {s.name: s.status for s in store.stages("tiny")} == {"data": "done", "train": "crashed"}
    assert (home / "tiny" / "data" / "train.jsonl").is_file()  # what was finished before stays
    store.close()

    run_again(home, recipe)  # space freed
    assert results(home) == baseline["results"]


@pytest.fixture
def exported(tmp_path: Path, tiny_llama_256: Path) -> tuple[Path, Path]:
    """A run of tiny_llama_256 through merge, with an export of the f16 GGUF still to do."""
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(24)))
    path = write_recipe(
        tmp_path,
        tiny_llama_256,
        data,
        data={"max_length": 128, "held_out": 4},
        train={"max_steps": 1},
        export={"gguf": ["f16"], "smoke_prompts": 1},
    )
    home = tmp_path / "runs"
    run_recipe(load_recipe(path), home, stages=["merge"])
    return path, home


def test_a_full_disk_or_a_memory_limit_in_export_names_the_cause_and_the_rerun_finishes(
    exported: tuple[Path, Path], fault: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, home = exported
    store = Store(home / "workbench.db")
    merged = home / "tiny" / "merge" / "model.safetensors"
    before = merged.read_bytes()

    def export_error() -> str:
        run_recipe(load_recipe(path), home, stages=["export"])
        (f16,) = [v for v in store.variants("tiny") if v.format == "gguf"]
        assert f16.status == "failed" and not Path(f16.path).exists()
        assert store.stage("tiny", "export").status == "partial" and store.run("tiny").status == "done"
        assert store.stage("tiny", "merge").status == "done" and merged.read_bytes() == before  # kept
        return f16.error or ""

    fault("write:F16:enospc")  # the converter writes its GGUF to a device whose every write fails: ENOSPC
    full = export_error()
    assert "conversion to GGUF failed: OSError: [Errno 28] No space left on device" in full

    monkeypatch.delenv("WORKBENCH_FAULT")
    monkeypatch.setenv("WORKBENCH_WORKER_MEMORY_MB", str(MEMORY_LIMIT_MB))
    over = export_error()
    assert f"conversion to GGUF failed: out of memory (limit {MEMORY_LIMIT_MB} MiB" in over

    monkeypatch.delenv("WORKBENCH_WORKER_MEMORY_MB")  # space freed, limit lifted
    run_recipe(load_recipe(path), home, stages=["export"])
    (f16,) = [v for v in store.variants("tiny") if v.format == "gguf"]
    assert f16.status == "done" and Path(f16.path).is_file() and store.stage("tiny", "export").status == "done"
    print(f"\nexport, disk full: {full}\nexport, memory limit: {over}")


def test_a_worker_over_its_memory_limit_fails_with_the_limit_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_WORKER_MEMORY_MB", "200")
    over = workers.run("workers.selftest", SelfTestJob(do="memory", megabytes=400), name="big")
    assert over.status == "failed"
    assert over.error == "big: self-test failed: out of memory (limit 200 MiB, WORKBENCH_WORKER_MEMORY_MB): MemoryError"
    within = workers.run("workers.selftest", SelfTestJob(do="memory", megabytes=50), name="small")
    assert within.ok  # the same worker under the limit
    monkeypatch.setenv("WORKBENCH_WORKER_MEMORY_MB", "0")  # 0: no limit
    assert workers.run("workers.selftest", SelfTestJob(do="memory", megabytes=400), name="big").ok
