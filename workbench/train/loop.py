"""What every training stage shares: the step count and the Trainer arguments common to TRL's configs
(resuming is `resume.py`, the trackers `tracking.py`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

from workbench.core.recipe import DistributedSection, OptimizeSection
from workbench.data.dataset import auto_epochs
from workbench.train.distributed import per_process_batch


def training_steps(section: OptimizeSection, rows: int) -> tuple[float, int]:
    """(epochs, optimizer steps) the run will take."""
    epochs = auto_epochs(rows) if section.epochs == "auto" else float(section.epochs)
    per_step = section.batch_size * section.grad_accum
    steps = section.max_steps or math.ceil(epochs * math.ceil(rows / section.batch_size) / section.grad_accum)
    return (steps * per_step / rows if section.max_steps else epochs), max(steps, 1)


def trainer_arguments(
    checkpoints: Path,
    section: OptimizeSection,
    device: str,
    epochs: float,
    steps: int,
    spread: DistributedSection | None = None,
    world: int = 1,
    report_to: list[str] | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Arguments every TRL config takes. Each defaults to bf16 and gradient checkpointing, ~18x slower (or
    refused) on a CPU without bf16 instructions: both are set here, always. With `world` processes
    (`spread` their section) each takes an equal share of `batch_size`. `report_to`: the Trainer's trackers
    (see `tracking.tracking_env`)."""
    import torch

    many = {}
    if spread is not None and world > 1:
        many = {
            "ddp_timeout": spread.timeout_s,
            "ddp_find_unused_parameters": False,  # every LoRA weight is used; True breaks gradient checkpointing
            "save_on_each_node": spread.nodes > 1,  # each machine resumes from its own copy of a checkpoint
        }
    return {
        **many,
        "output_dir": str(checkpoints),
        "max_steps": steps,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": per_process_batch(section.batch_size, world),
        "gradient_accumulation_steps": section.grad_accum,
        "learning_rate": section.learning_rate,
        "lr_scheduler_type": section.lr_scheduler,
        "warmup_steps": section.warmup_ratio,  # a float below 1 is a ratio
        "weight_decay": section.weight_decay,
        "seed": section.seed,
        "data_seed": section.seed,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": section.checkpoint_every,
        "save_total_limit": 2,
        "report_to": report_to or "none",
        "run_name": run_name,  # what the trackers call it
        "use_cpu": device == "cpu",
        "bf16": device == "cuda" and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": section.gradient_checkpointing,
        "dataloader_num_workers": 0,
    }


def continued(trainer_class: type, first: int, rate: float) -> type:
    """`trainer_class` with a learning-rate schedule in two parts: the first `first` steps exactly as a run of
    `first` steps would have them (its warm-up and decay), then the rest of the steps with a schedule of
    their own (the same kind, no warm-up) peaking at `rate`. The optimizer's state carries over."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import get_scheduler

    class ContinuedTrainer(trainer_class):
        lr_scheduler: Any

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is not None:
                return self.lr_scheduler
            optimizer = optimizer or self.optimizer
            kind, extra = self.args.lr_scheduler_type, self.args.lr_scheduler_kwargs
            warmup = self.args.get_warmup_steps(first)
            first_part = get_scheduler(kind, optimizer, warmup, first, scheduler_specific_kwargs=extra)
            if not isinstance(first_part, LambdaLR):
                raise ValueError(f"train.lr_scheduler: {kind} is not a schedule of steps that a second part can follow")
            before = first_part.lr_lambdas[0]
            rest = max(num_training_steps - first, 1)
            second_part = get_scheduler(kind, optimizer, 0, rest, scheduler_specific_kwargs=extra)
            after = cast(LambdaLR, second_part).lr_lambdas[0]
            scale = rate / self.args.learning_rate

            def factor(step: int) -> float:
                return before(step) if step < first else scale * after(step - first)

            for group in optimizer.param_groups:  # the helpers above each stepped it once
                group["lr"] = group["initial_lr"]
            self.lr_scheduler = LambdaLR(optimizer, factor)
            self._created_lr_scheduler = True
            return self.lr_scheduler

    return ContinuedTrainer
