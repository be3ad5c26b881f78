"""What every training stage shares: the step count, the Trainer arguments common to TRL's configs, and
where an interrupted training resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from workbench.data.dataset import auto_epochs
from workbench.recipe import OptimizeSection


def training_steps(section: OptimizeSection, rows: int) -> tuple[float, int]:
    """(epochs, optimizer steps) the run will take."""
    epochs = auto_epochs(rows) if section.epochs == "auto" else float(section.epochs)
    per_step = section.batch_size * section.grad_accum
    steps = section.max_steps or math.ceil(epochs * math.ceil(rows / section.batch_size) / section.grad_accum)
    return (steps * per_step / rows if section.max_steps else epochs), max(steps, 1)


def trainer_arguments(
    checkpoints: Path, section: OptimizeSection, device: str, epochs: float, steps: int
) -> dict[str, Any]:
    """Arguments every TRL config takes. Each defaults to bf16 and gradient checkpointing, ~18x slower (or
    refused) on a CPU without bf16 instructions: both are set here, always."""
    import torch

    return {
        "output_dir": str(checkpoints),
        "max_steps": steps,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": section.batch_size,
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
        "report_to": "none",
        "use_cpu": device == "cpu",
        "bf16": device == "cuda" and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": section.gradient_checkpointing,
        "dataloader_num_workers": 0,
    }


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last, so a checkpoint a kill
    interrupted while it was being saved lacks it (or holds half of it) and is passed over."""
    numbered = (
        [p for p in folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit()] if folder.is_dir() else []
    )
    for path in sorted(numbered, key=lambda p: int(p.name.rsplit("-", 1)[-1]), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None
