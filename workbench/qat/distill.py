"""Distillation toward the 16-bit fine-tune while the rounded model trains (`train.qat.distill`).

Training on the task loss alone improves the rounded model's answers, not its closeness to the 16-bit model's
distribution (measured: the QAT file's KLD to its 16-bit model got worse). The teacher here is the run's own
supervised fine-tune: the adapter as it is when the rounding is switched on (after `start_after_steps` of
plain training), frozen, computed without the rounding. The student is the same model with the rounding on;
its loss is the task's plus weight × KL(teacher ‖ student) on the chosen tokens.

No second model is loaded: the teacher's forward pass swaps the adapter's tensors for the snapshot, turns the
rounding off and puts the frozen weights' unrounded values back, all by pointer (no copies), then restores
them. The snapshot is saved in the stage's work folder, so a run resumed after the switch keeps its teacher.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workbench.qat.modules import QATModel

FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids")  # what the teacher's forward pass takes


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trained tensors (a LoRA / QLoRA run's adapter), by name."""
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


@dataclass
class Teacher:
    """The 16-bit fine-tune inside the training model: `active()` computes with it."""

    model: torch.nn.Module
    qat: QATModel
    weights: dict[str, torch.Tensor]  # the adapter's tensors at the switch, by parameter name

    @contextmanager
    def active(self) -> Iterator[None]:
        params = adapter_parameters(self.model)
        missing = sorted(set(self.weights) - set(params))
        if missing:
            raise RuntimeError(f"the teacher's adapter has tensors the model lacks: {', '.join(missing[:3])}")
        swapped = [(params[name], params[name].data) for name in self.weights]
        frozen = [(param, param.data) for _, param, _ in self.qat.frozen]
        enabled = [quantizer.enabled for quantizer in self.qat.quantizers]
        training = self.model.training
        try:
            for (param, _), name in zip(swapped, self.weights, strict=True):
                param.data = self.weights[name]
            for (param, _), (name, _, _) in zip(frozen, self.qat.frozen, strict=True):
                param.data = self.qat.unrounded[name]
            for quantizer in self.qat.quantizers:
                quantizer.enabled = False
            self.model.eval()  # no adapter dropout in the teacher
            yield
        finally:
            for param, data in swapped + frozen:
                param.data = data
            for quantizer, was in zip(self.qat.quantizers, enabled, strict=True):
                quantizer.enabled = was
            self.model.train(training)

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        from workbench.core.fsutil import atomic_write_bytes

        atomic_write_bytes(path, save({name: value.contiguous() for name, value in self.weights.items()}))


def snapshot(model: torch.nn.Module, qat: QATModel) -> Teacher:
    """The adapter as it is now, as the teacher (the rounding must be on: the frozen weights' unrounded
    values are kept by `QATModel.switch_on`)."""
    return Teacher(model, qat, {name: p.detach().clone() for name, p in adapter_parameters(model).items()})


def load(path: Path, model: torch.nn.Module, qat: QATModel) -> Teacher:
    from safetensors.torch import load_file

    params = adapter_parameters(model)
    weights = {name: value.to(params[name].device, params[name].dtype) for name, value in load_file(str(path)).items()}
    return Teacher(model, qat, weights)


def positions(inputs: dict[str, Any], tokens: str) -> torch.Tensor:
    """Which logits the KL is taken on (position i predicts token i + 1): the answers (tokens with a label)
    or every real token."""
    labels = inputs["labels"][:, 1:]
    if tokens == "answers":
        return labels != -100
    if "attention_mask" in inputs:
        return inputs["attention_mask"][:, 1:].bool()
    return torch.ones_like(labels, dtype=torch.bool)


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Forward KL(teacher ‖ student) per chosen position, averaged, × T² (Hinton's scaling keeps the
    gradient's size as T changes). Only the chosen positions' logits are softmaxed."""
    chosen_student = student[mask].float() / temperature
    chosen_teacher = teacher[mask].float() / temperature
    if chosen_student.numel() == 0:
        return student.sum() * 0  # no answer token in this batch: zero, still on the graph
    log_student = F.log_softmax(chosen_student, dim=-1)
    log_teacher = F.log_softmax(chosen_teacher, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="sum") / chosen_student.shape[0]
    return kl * temperature**2


@dataclass
class Distillation:
    """What the trainer needs: the settings and, once the rounding is on, the teacher."""

    weight: float
    temperature: float
    tokens: str  # "answers" | "all"
    teacher: Teacher | None = None
    last_kl: float | None = None

    def loss(self, model: torch.nn.Module, inputs: dict[str, Any], student_logits: torch.Tensor) -> torch.Tensor:
        """weight × KL(teacher ‖ student) for this batch (the teacher's forward pass without gradient)."""
        assert self.teacher is not None
        forward = {key: inputs[key] for key in FORWARD_KEYS if key in inputs}
        with torch.no_grad(), self.teacher.active():
            teacher_logits = model(**forward).logits
        mask = positions(inputs, self.tokens)
        kl = kl_to_teacher(student_logits[:, :-1], teacher_logits[:, :-1], mask, self.temperature)
        self.last_kl = float(kl.detach())
        return self.weight * kl


def distilling(trainer_class: type, distillation: Distillation) -> type:
    """`trainer_class` (TRL's SFTTrainer) with the distillation term added to its loss once there is a
    teacher (before the switch: the task loss alone, as TRL computes it).

    After the switch the student's loss is transformers' own (`Trainer.compute_loss`: the model's cross
    entropy on the labelled tokens), because the KL needs the student's logits with their gradient: TRL's
    fused LM head does not build them, and asked for them it recomputes them without gradient."""
    from transformers import Trainer

    class DistillingTrainer(trainer_class):
        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if distillation.teacher is None or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False
            loss, outputs = Trainer.compute_loss(self, model, inputs, True, num_items_in_batch)
            loss = loss + distillation.loss(model, inputs, outputs.logits)
            self._count_tokens(inputs)
            return (loss, outputs) if return_outputs else loss

        def _count_tokens(self, inputs: dict[str, Any]) -> None:
            """TRL's token count and the KL in its logged metrics (its own compute_loss keeps them)."""
            metrics = getattr(self, "_metrics", None)
            if not isinstance(metrics, dict) or not hasattr(self, "_total_train_tokens"):
                return
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:  # padding-free: one packed row
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            counted = self.accelerator.gather_for_metrics(local).sum().item()
            self._total_train_tokens += counted // getattr(self, "_tp_size", 1)
            metrics["train"]["num_tokens"] = [self._total_train_tokens]
            if distillation.last_kl is not None:
                metrics["train"]["distill_kl"].append(distillation.last_kl)

    return DistillingTrainer
