"""Training on several processes and machines through `accelerate launch` (torchrun underneath): the
launcher's configuration written from the recipe (accelerate's YAML, DeepSpeed's JSON) and checked with
their own loaders, the process group started, followed, stopped and diagnosed, and what the ranks agree on
while they train (when to stop, that their replicas are the same)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.common import PYTHON, child_env, free_port
from workbench.core.devices import usable_cores
from workbench.core.recipe import DistributedSection, TrainSection


@dataclass(frozen=True)
class Layout:
    """Where this machine's processes sit in the job."""

    processes: int  # on each machine
    nodes: int
    node_rank: int
    master_addr: str
    port: int

    @property
    def world(self) -> int:
        return self.processes * self.nodes

    @property
    def first_rank(self) -> int:
        return self.node_rank * self.processes


def layout(section: DistributedSection, device: str, env: dict[str, str] | None = None) -> Layout:
    """The recipe's processes and nodes, with this machine's rank and the first machine's address from
    the environment (`workbench run --node-rank K --master-addr HOST`, or the launcher's own variables)."""
    env = dict(os.environ) if env is None else env
    processes = section.processes
    if processes == "auto":
        processes = _visible_gpus() if device == "cuda" else 1
    node_rank = int(env.get("NODE_RANK", "0") or 0)
    if not 0 <= node_rank < section.nodes:
        raise ValueError(f"node rank {node_rank} is not one of the recipe's nodes (0-{section.nodes - 1})")
    return Layout(
        processes=max(int(processes), 1),
        nodes=section.nodes,
        node_rank=node_rank,
        master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
        # one machine: a free port, so two runs side by side do not meet
        port=int(env.get("MASTER_PORT") or section.port or (29500 if section.nodes > 1 else free_port())),
    )


def _visible_gpus() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def per_process_batch(batch_size: int, world: int) -> int:
    """`train.batch_size` is one step's batch over every process; each process takes an equal share."""
    if batch_size % world:
        raise ValueError(f"train.batch_size {batch_size} does not split evenly over {world} processes")
    return batch_size // world


# ---- the launcher's configuration ------------------------------------------------------------------------


def accelerate_config(section: DistributedSection, where: Layout, bf16: bool, deepspeed_file: Path | None) -> dict:
    """accelerate's config file (what `accelerate config` writes) for the recipe's strategy. On a CPU, DDP
    runs as MULTI_GPU with the Trainer's `use_cpu` (gloo): accelerate's own CPU launch starts one process."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[section.strategy],
        "num_processes": where.world,  # over every machine
        "num_machines": where.nodes,
        "machine_rank": where.node_rank,
        "main_process_ip": where.master_addr,
        "main_process_port": where.port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": "bf16" if bf16 else "no",
        "use_cpu": False,
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if section.strategy == "fsdp":
        fsdp = section.fsdp
        wrap: dict[str, Any] = (
            {"fsdp_auto_wrap_policy": "SIZE_BASED_WRAP", "fsdp_min_num_params": fsdp.min_params}
            if fsdp.auto_wrap == "size"
            else {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
        )
        if fsdp.auto_wrap == "transformer" and fsdp.layer_class:
            wrap["fsdp_transformer_layer_cls_to_wrap"] = fsdp.layer_class
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": fsdp.reshard_after_forward,
            "fsdp_offload_params": fsdp.offload,
            "fsdp_state_dict_type": "FULL_STATE_DICT",  # rank 0 saves an ordinary adapter / model
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": False,  # the Trainer's gradient_checkpointing does it
            **wrap,
        }
    if section.strategy == "deepspeed":
        assert deepspeed_file is not None
        del config["mixed_precision"]  # DeepSpeed's file says it; accelerate refuses both
        config["deepspeed_config"] = {
            "deepspeed_config_file": str(deepspeed_file),
            "zero3_init_flag": section.deepspeed.stage == 3,
        }
    return config


def deepspeed_config(train: TrainSection, world: int, bf16: bool) -> dict:
    """DeepSpeed's JSON with the Trainer's own numbers written out (no "auto": the file says what ran)."""
    speed = train.distributed.deepspeed
    micro = per_process_batch(train.batch_size, world)
    zero: dict[str, Any] = {"stage": speed.stage, "overlap_comm": True, "contiguous_gradients": True}
    for part, device in (("optimizer", speed.offload_optimizer), ("param", speed.offload_params)):
        if device != "none":
            zero[f"offload_{part}"] = {"device": device, "pin_memory": True}
            if device == "nvme":
                zero[f"offload_{part}"]["nvme_path"] = speed.nvme_path
    if speed.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # rank 0 saves the whole model
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": micro * train.grad_accum * world,
        "gradient_clipping": 1.0,  # the Trainer's max_grad_norm
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the run store has the curves
    }
    if speed.offload_optimizer != "none":
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's own Adam; the Trainer's AdamW is refused
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": train.learning_rate, "weight_decay": train.weight_decay, "betas": [0.9, 0.999]},
        }
    return config


def check_accelerate_config(path: Path) -> dict[str, str]:
    """Load the file the way `accelerate launch` does (unknown or malformed keys are refused), build the
    environment it gives each process, and the FSDP / DeepSpeed plugin the Trainer's Accelerator builds from
    that environment. Returns the environment; raises ValueError naming the file."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as accelerate_launch

    try:
        args = launch_command_parser().parse_args(
            ["--config_file", str(path), "--module", "workbench.pipeline.stages.ranks"]
        )
        args, defaults, from_config = _validate_launch_command(args)
        if args.use_deepspeed:  # as accelerate's launch_command prepares it
            fields = list(defaults.deepspeed_config) if defaults else []
            args.deepspeed_fields_from_accelerate_config = ",".join(fields + ["mixed_precision"] * from_config)
            _, env = accelerate_launch.prepare_deepspeed_cmd_env(args)
        else:
            env = accelerate_launch.prepare_multi_gpu_env(args)
        with _environment(env):
            if args.use_fsdp:
                from accelerate.utils import FullyShardedDataParallelPlugin

                FullyShardedDataParallelPlugin()
            if args.use_deepspeed:
                from accelerate.utils import DeepSpeedPlugin

                DeepSpeedPlugin()
    except (ValueError, TypeError, KeyError, AssertionError, FileNotFoundError) as exc:
        raise ValueError(f"{path}: accelerate refuses this configuration: {exc}") from exc
    return env


def check_deepspeed_config(config: dict, world: int) -> None:
    """DeepSpeed's own parser over the file's contents (batch arithmetic for `world` processes)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    micro, accum = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    if config["train_batch_size"] != micro * accum * world:
        raise ValueError(f"train_batch_size {config['train_batch_size']} is not {micro} x {accum} x {world}")
    one = {**config, "train_batch_size": micro * accum}  # parsed as one process's share: no process group here
    try:
        DeepSpeedConfig(one)
    except Exception as exc:  # DeepSpeed raises assertion, pydantic and value errors alike
        raise ValueError(f"DeepSpeed refuses this configuration: {exc}") from exc


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    before = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def launch_command(config_file: Path, where: Layout, device: str, job: Path) -> list[str]:
    """`accelerate launch` running every rank's entry (workbench.pipeline.stages.ranks) on the job file."""
    threads = max(usable_cores() // where.processes, 1) if device == "cpu" else 1
    return [
        *PYTHON,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_file),
        "--num_cpu_threads_per_process",
        str(threads),
        "--monitor_interval",
        "1",
        "--module",
        "workbench.pipeline.stages.ranks",
        str(job),
    ]


# ---- the process group, seen from the process that started it ---------------------------------------------


@dataclass(frozen=True)
class GroupEnd:
    returncode: int
    stop_requested: bool
    killed: bool  # did not stop within the grace time and was killed


def run_group(
    command: list[str],
    *,
    env: dict[str, str],
    log: Path,
    stop_file: Path,
    follow: Path,
    echo: Callable[[str], None],
    grace_s: float,
    pid_files: Callable[[], list[Path]],
) -> GroupEnd:
    """Run the launcher in its own session with its output in `log`, echo the first rank's log as it grows,
    and on Ctrl-C / SIGTERM ask every rank to checkpoint and stop (`stop_file`); a group that has not stopped
    `grace_s` later (or a second interrupt) is killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            start_new_session=True,
        )
    tail = _Tail(follow, echo)
    stop_requested = killed = False
    try:
        while process.poll() is None:
            tail.step()
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop_requested = True
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
        echo("stopping: every rank saves a checkpoint after this step (interrupt again to kill them)\n")
        deadline = time.monotonic() + grace_s
        try:
            while process.poll() is None and time.monotonic() < deadline:
                tail.step()
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        if process.poll() is None:
            killed = True
            kill_group(process, pid_files())
    finally:
        tail.step()
    return GroupEnd(process.wait(), stop_requested, killed)


def kill_group(process: subprocess.Popen, pid_files: list[Path]) -> None:
    """SIGTERM to the launcher (it stops its ranks), then SIGKILL to it and to any rank still alive."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=40)  # torch's agent gives its ranks 30 s after SIGTERM
    except subprocess.TimeoutExpired:
        process.kill()
    for path in pid_files:
        try:
            os.kill(int(json.loads(path.read_text())["pid"]), signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            continue


class _Tail:
    """What a growing file gained since the last look."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self.echo, self.offset = path, echo, 0

    def step(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        if data:
            self.offset += len(data)
            self.echo(data.decode("utf-8", "replace"))


def first_failure(launcher_log: str) -> tuple[int, str] | None:
    """(global rank, how it ended) of the rank whose failure took the group down, from torch's failure
    summary in the launcher's log. The agent ends the other ranks with SIGTERM and may list one of them as
    the "first observed failure" (its clock has one-second steps), so a rank that ended otherwise wins."""
    summary = launcher_log.rsplit("Failures:", 1)
    if len(summary) < 2:
        return None
    ended = {
        int(rank): int(code)
        for rank, code in re.findall(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)", summary[1])
    }
    if not ended:
        return None
    root = re.search(r"Root Cause[^\n]*\n(?:.*\n)*?\s*rank\s*:\s*(\d+)", summary[1])
    root_rank = int(root.group(1)) if root else min(ended)
    own = [rank for rank, code in ended.items() if code != -signal.SIGTERM]
    rank = root_rank if root_rank in own or not own else min(own)
    code = ended[rank]
    return rank, f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


# ---- inside the ranks -------------------------------------------------------------------------------------


def rank_info() -> tuple[int, int]:
    """(global rank, world size) of this process as the launcher set them."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _collective_device() -> Any:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (all ranks must take the same decision at a step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gathered(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def digest(tensors: dict[str, Any]) -> str:
    """A fingerprint of named tensors (as float32), equal exactly when every value is."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        sha.update(name.encode())
        sha.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def log_to(path: Path) -> None:
    """Send this process's stdout and stderr (native output too) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
