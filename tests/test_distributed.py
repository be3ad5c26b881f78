"""Training on several processes and machines: real `accelerate launch` process groups (gloo DDP on the CPU),
two machines simulated on 127.0.0.1, cancel / resume / a killed rank, and the FSDP2 and DeepSpeed
configurations checked by accelerate's and DeepSpeed's own loaders (run for real on GPUs only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import train_steps, write_recipe

from workbench.core.common import free_port
from workbench.core.recipe import RecipeError, load_recipe
from workbench.core.store import Store, is_alive
from workbench.train import distributed

CLI = [sys.executable, "-m", "workbench.cli"]


def recipe_for(tmp_path: Path, tiny_model: Path, qa_file: Path, **train: object) -> Path:
    spread = {"processes": 2, "port": free_port(), "timeout_s": 60, **train.pop("distributed", {})}  # type: ignore[dict-item]
    return write_recipe(tmp_path, tiny_model, qa_file, train={"distributed": spread, **train})


def summary(home: Path, run: str = "tiny") -> dict:
    return json.loads((home / run / "train" / "train_summary.json").read_text())


def stage_record(home: Path, stage: str = "train", run: str = "tiny") -> object:
    store = Store(home / "workbench.db")
    try:
        return store.stage(run, stage)
    finally:
        store.close()


def wait_for_step(home: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        if (home / "workbench.db").exists() and train_steps(home) and train_steps(home)[-1] >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def adapter_digest(folder: Path) -> str:
    from safetensors.torch import load_file

    return distributed.digest(load_file(folder / "adapter_model.safetensors"))


def test_two_processes_train_one_adapter_the_same_steps_as_one(
    tmp_path: Path, tiny_model: Path, qa_file: Path, capsys: pytest.CaptureFixture[str]
):
    from workbench.cli import main
    from workbench.pipeline.runner import run_recipe

    recipe = load_recipe(recipe_for(tmp_path, tiny_model, qa_file))
    home = tmp_path / "runs"
    run_recipe(recipe, home, stages=["train"])
    assert recipe.source is not None

    spread = summary(home)["distributed"]
    assert spread["world_size"] == 2  # what the trainer inside the job saw
    assert len(spread["replicas"]) == 2 and len(set(spread["replicas"])) == 1  # every rank's adapter, gathered
    assert spread["saved"] == spread["replicas"][0] == adapter_digest(home / "tiny" / "train")
    ranks = [json.loads((home / "tiny" / "logs" / "train" / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert train_steps(home) == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes the store: no step twice
    config = yaml.safe_load((home / "tiny" / "train" / "accelerate.yaml").read_text())
    assert config["num_processes"] == 2 and config["distributed_type"] == "MULTI_GPU"
    capsys.readouterr()
    assert main(["--home", str(home), "show", "tiny"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training:")]
    assert line.startswith("training: step 6/6") and line.endswith("on 2 processes (ddp)")

    # train.batch_size is the batch of a step over both processes: the first step is the single process's
    one = load_recipe(recipe.source, ["train.distributed.processes=1"])
    run_recipe(one, home, stages=["train"], run_id="one")
    assert summary(home, "one")["distributed"] is None
    first = [json.loads((home / run / "train" / "log_history.json").read_text())[0]["loss"] for run in ("tiny", "one")]
    assert first[0] == pytest.approx(first[1], abs=1e-3)


def test_two_machines_on_loopback_through_the_sbatch_script(tmp_path: Path, tiny_model: Path, qa_file: Path):
    path = recipe_for(tmp_path, tiny_model, qa_file, distributed={"processes": 1, "nodes": 2})
    home, script = tmp_path / "runs", tmp_path / "job.sbatch"
    subprocess.run(
        [*CLI, "--home", str(home), "launch", "--slurm", str(path), "--stages", "train", "--out", str(script)],
        check=True,
    )
    # SLURM's two commands the script uses, standing in for two machines on this one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\necho 127.0.0.2\n")
    (bin_dir / "srun").write_text(
        '#!/bin/bash\nshift\nSLURM_NODEID=0 "$@" & a=$!\nSLURM_NODEID=1 "$@" & b=$!\nwait $a && wait $b\n'
    )
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n[1-2]"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    spread = summary(home)["distributed"]
    assert spread["world_size"] == 2 and len(set(spread["replicas"])) == 1  # gathered over both machines
    assert spread["saved"] == adapter_digest(home / "tiny" / "train")
    other = home / "node1"  # the second machine's own home: its share of the training, no adapter
    record = stage_record(other)
    assert record is not None and record.status == "done"
    store = Store(other / "workbench.db")
    try:
        artifacts = store.artifacts("tiny")
    finally:
        store.close()
    assert [(a.kind, a.meta["node_rank"], a.meta["ranks"]) for a in artifacts if a.stage == "train"] == [
        ("ranks", 1, [1, 1])
    ]
    assert (other / "tiny" / "logs" / "train" / "rank1.log").exists()
    assert not (home / "tiny" / "logs" / "train" / "rank1.log").exists()  # each machine keeps its ranks' logs
    assert json.loads((other / "tiny" / "logs" / "train" / "rank1.json").read_text())["world_size"] == 2


def test_cancel_stops_both_ranks_at_one_checkpoint_and_the_run_resumes(tmp_path: Path, tiny_model: Path, qa_file: Path):
    path = recipe_for(tmp_path, tiny_model, qa_file, max_steps=400, checkpoint_every=1000)
    home = tmp_path / "runs"
    command = [*CLI, "--home", str(home), "run", str(path), "--stages", "train"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(home, 3, process)
    assert subprocess.run([*CLI, "--home", str(home), "cancel", "tiny"], check=True).returncode == 0
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    record = stage_record(home)
    assert record is not None and record.status == "interrupted"
    for rank in (0, 1):
        pid = json.loads((home / "tiny" / "logs" / "train" / f"rank{rank}.json").read_text())["pid"]
        assert not is_alive(pid, None)
    (work,) = (home / "tiny" / ".work").glob("train-*")
    (checkpoint,) = (work / "checkpoints").glob("checkpoint-*")  # one step, saved once for both ranks
    stopped = int(checkpoint.name.split("-")[1])
    assert 3 <= stopped < 400 and train_steps(home)[-1] == stopped

    resumed = subprocess.run(
        [*command, "--set", f"train.max_steps={stopped + 3}"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from checkpoint-{stopped}" in resumed.stdout
    assert train_steps(home)[-3:] == [stopped + 1, stopped + 2, stopped + 3]
    assert summary(home)["distributed"]["world_size"] == 2


def test_a_killed_rank_fails_the_stage_with_its_log(tmp_path: Path, tiny_model: Path, qa_file: Path):
    path = recipe_for(tmp_path, tiny_model, qa_file, max_steps=2000, checkpoint_every=1000)
    home = tmp_path / "runs"
    process = subprocess.Popen(
        [*CLI, "--home", str(home), "run", str(path), "--stages", "train"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_step(home, 2, process)
    ranks = [json.loads((home / "tiny" / "logs" / "train" / f"rank{k}.json").read_text())["pid"] for k in (0, 1)]
    os.kill(ranks[1], signal.SIGKILL)
    killed_at = time.monotonic()
    output, _ = process.communicate(timeout=120)
    assert time.monotonic() - killed_at < 90  # the stage's timeout is 60 s; the launcher notices sooner
    assert process.returncode == 1, output[-3000:]
    record = stage_record(home)
    assert record is not None and record.status == "failed"
    assert "rank 1 of 2 killed by SIGKILL" in record.error
    assert str(home / "tiny" / "logs" / "train" / "rank1.log") in record.error
    assert not is_alive(ranks[0], None)  # the other rank was stopped, not left waiting


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ((-15, -9), (1, "killed by SIGKILL")),
        ((1, -15), (0, "exited with status 1")),
        ((-15, -15), (0, "killed by SIGTERM")),
    ],
)
def test_the_rank_that_took_the_group_down_is_named(codes: tuple[int, int], expected: tuple[int, str]):
    """torch's own failure summary, where the agent's SIGTERM to a survivor can be listed as the root cause."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failures = {rank: ProcessFailure(rank, 100 + rank, code, "<N/A>") for rank, code in enumerate(codes)}
    for failure in failures.values():
        failure.timestamp = 1000  # one clock second: the first listed reads as the root cause
    log = (
        "W1130 agent: worker group failed\n"
        + ChildFailedError("workbench.pipeline.stages.ranks", failures).format_msg()
    )
    assert distributed.first_failure(log) == expected
    assert distributed.first_failure("no summary here") is None


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("fsdp", {"fsdp": {"offload": True, "auto_wrap": "size", "min_params": 1000}}),
        ("fsdp", {"fsdp": {"reshard_after_forward": False, "layer_class": "LlamaDecoderLayer"}}),
        ("deepspeed", {"deepspeed": {"stage": 2}}),
        ("deepspeed", {"deepspeed": {"stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"}}),
    ],
)
def test_fsdp_and_deepspeed_configurations_pass_their_own_loaders(
    tmp_path: Path, tiny_model: Path, qa_file: Path, strategy: str, options: dict
):
    spread = {"processes": 4, "nodes": 2, "strategy": strategy, **options}
    recipe = load_recipe(write_recipe(tmp_path, tiny_model, qa_file, train={"distributed": spread}))
    where = distributed.layout(recipe.train.distributed, "cuda", {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"})
    assert (where.world, where.first_rank, where.master_addr) == (8, 4, "10.0.0.1")
    speed_file = None
    if strategy == "deepspeed":
        speed = distributed.deepspeed_config(recipe.train, where.world, bf16=True)
        assert speed["train_micro_batch_size_per_gpu"] == 1 and speed["train_batch_size"] == 8
        distributed.check_deepspeed_config(speed, where.world)
        speed_file = tmp_path / "deepspeed.json"
        speed_file.write_text(json.dumps(speed))
        with pytest.raises(ValueError, match="DeepSpeed refuses"):
            distributed.check_deepspeed_config({**speed, "zero_optimization": {"stage": 7}}, where.world)
    config_file = tmp_path / "accelerate.yaml"
    config = distributed.accelerate_config(recipe.train.distributed, where, True, speed_file)
    config_file.write_text(yaml.safe_dump(config))
    env = distributed.check_accelerate_config(config_file)
    if strategy == "fsdp":
        fsdp = options["fsdp"]
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
        assert env["FSDP_OFFLOAD_PARAMS"] == str(fsdp.get("offload", False)).lower()
        assert env["FSDP_RESHARD_AFTER_FORWARD"] == str(fsdp.get("reshard_after_forward", True)).lower()
    else:
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == str(speed_file)
    config_file.write_text(yaml.safe_dump({**config, "fsdp_shards": 3}))  # not a key accelerate knows
    with pytest.raises(ValueError, match="accelerate refuses"):
        distributed.check_accelerate_config(config_file)


def test_distributed_recipes_that_cannot_work_are_refused(tmp_path: Path, tiny_model: Path, qa_file: Path):
    from workbench.train import sft

    def recipe(**spread: object) -> Path:
        return write_recipe(tmp_path, tiny_model, qa_file, train={"distributed": spread})

    with pytest.raises(RecipeError, match="does not split evenly over 3 processes"):
        load_recipe(recipe(processes=3))
    with pytest.raises(RecipeError, match="ZeRO offloads parameters at stage 3 only"):
        load_recipe(recipe(processes=2, strategy="deepspeed", deepspeed={"stage": 2, "offload_params": "cpu"}))
    fsdp = load_recipe(recipe(processes=2, strategy="fsdp"))
    with pytest.raises(RecipeError, match="fsdp shards over CUDA GPUs; on a CPU use ddp"):
        sft.check_supported(fsdp, "cpu")
    with pytest.raises(ValueError, match="node rank 2 is not one of the recipe's nodes"):
        distributed.layout(fsdp.train.distributed, "cpu", {"NODE_RANK": "2"})


def test_single_process_recipes_keep_their_cache_key(tmp_path: Path, tiny_model: Path, qa_file: Path):
    from workbench.pipeline.stages import train

    plain = load_recipe(write_recipe(tmp_path, tiny_model, qa_file))
    assert "distributed" not in train.key_inputs(plain) and "distributed" not in train.key_inputs(plain)["train"]
    two = load_recipe(recipe_for(tmp_path, tiny_model, qa_file))
    assert train.key_inputs(two)["distributed"]["processes"] == 2


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed"])
def test_two_gpus_train_with_each_strategy(tmp_path: Path, tiny_model: Path, qa_file: Path, strategy: str):
    if _gpus() < 2:
        pytest.skip("needs two CUDA GPUs")
    from workbench.pipeline.runner import run_recipe

    recipe = load_recipe(recipe_for(tmp_path, tiny_model, qa_file, distributed={"strategy": strategy}))
    home = tmp_path / "runs"
    run_recipe(recipe, home, stages=["train"])
    done = summary(home)
    assert done["device"] == "cuda" and done["distributed"]["world_size"] == 2
    assert (home / "tiny" / "train" / "adapter_model.safetensors").exists()
    assert train_steps(home) == [1, 2, 3, 4, 5, 6]


def test_a_tracker_that_is_not_installed_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    from workbench.core.errors import ResourceError
    from workbench.core.recipe import TrackingSection
    from workbench.train.tracking import tracking_env

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "wandb" else find(name, *rest))
    with pytest.raises(ResourceError, match=r"tracking.report_to: wandb is not installed \(pip install wandb\)"):
        tracking_env(TrackingSection(report_to=["tensorboard", "wandb"]), tmp_path, "train", "tiny")
    offline = tracking_env(TrackingSection(report_to=["tensorboard", "mlflow"]), tmp_path, "train", "tiny")
    assert offline["MLFLOW_TRACKING_URI"] == (tmp_path / "tracking" / "mlruns").resolve().as_uri()
    assert offline["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tracking" / "tensorboard" / "train")
    served = TrackingSection(report_to=["mlflow"], mlflow_uri="http://mlflow.internal:5000", experiment="team")
    assert tracking_env(served, tmp_path, "tune", "tiny")["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert tracking_env(served, tmp_path, "tune", "tiny")["MLFLOW_EXPERIMENT_NAME"] == "team"
